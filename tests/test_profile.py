"""Per-op profile (jaxpt.utils.profile): trace events are named by the source ops the module's text gives."""

import jax
import jax.numpy as jnp
from jax import lax

from jaxpt.utils.profile import profile_ops, source_names

HLO = """
%fused (p: f32[8]) -> f32[8] {
  ROOT %exp.1 = f32[8]{0} exponential(%p), metadata={op_name="jit(step)/Decoder/layers_3/mlp/exp" stack_frame_id=2}
}
ENTRY %main (a: f32[8,4]) -> f32[8] {
  %ynn_fusion.13 = f32[8]{0} fusion(%a), kind=kCustom, calls=%fused, metadata={op_name="jit(step)/while/body/\
Decoder/layers_12/mlp/down/dot_general" stack_frame_id=7}, backend_config={}
  %while.3 = (s32[], f32[8]{0}) while(%tuple), condition=%cond, body=%body, metadata={op_name="jit(step)/while"}
  %custom-call.1 = f32[8]{0} custom-call(%a), custom_call_target="x", metadata={op_name="jit(step)/ffi_call"}
  ROOT %wrapped_reduce-window.2 = f32[8]{0} fusion(%ynn_fusion.13), metadata={op_name="jit(step)/cumsum"}
}
"""


def test_source_names_drop_the_jit_prefix_and_fold_layers():
    names = source_names(HLO)
    assert names["ynn_fusion.13"] == "while/body/Decoder/layers_*/mlp/down/dot_general"
    assert names["wrapped_reduce-window.2"] == "cumsum"
    assert names["exp.1"] == "Decoder/layers_*/mlp/exp"
    assert "while.3" not in names  # a loop's event spans its body's: counting both would count twice
    assert names["custom-call.1"] == "ffi_call"
    assert source_names(HLO, fold_layers=False)["ynn_fusion.13"].endswith("layers_12/mlp/down/dot_general")


def test_profile_ops_counts_each_loop_iteration_once_per_run():
    @jax.jit
    def f(x, w):
        return lax.fori_loop(0, 7, lambda i, x: jnp.tanh(x @ w), x)

    args = jnp.ones((8, 128)), jnp.full((128, 128), 0.01)
    ops = profile_ops(f.lower(*args).compile(), *args, runs=2)
    dots = [o for o in ops if o.op.endswith("dot_general")]
    assert dots, [o.op for o in ops]
    assert sum(o.calls for o in dots) == 7  # per run, not per profiled run in total
    assert all("while/body" in o.op for o in dots)
    assert not [o.op for o in ops if o.op.split("/")[-1] == "while"]  # the loop itself is not an op
    assert all(o.seconds > 0 for o in ops)
    assert [o.seconds for o in ops] == sorted((o.seconds for o in ops), reverse=True)
