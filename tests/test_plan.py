"""``jaxpt plan``: every algorithm's programs (the train step; the RL sampler and scoring pass) compiled ahead of
time for a device list, XLA's memory estimates read back and checked against the train state's, frozen inputs'
and KV cache's bytes counted from their shapes (8 CPU devices, conftest.py)."""

import dataclasses
import math

import jax
import numpy as np
import pytest

from jaxpt.cli import main
from jaxpt.config import load_config
from jaxpt.data.tokenizer import build_char_tokenizer
from jaxpt.models.decoder import abstract_params
from jaxpt.models.factory import model_config_from
from jaxpt.sharding import unbox
from jaxpt.training import plan as plan_module
from jaxpt.training.plan import DoesNotFit, StepPlan, format_plan, plan_sft_step, plan_steps, topology_devices
from jaxpt.utils.flops import train_flops_per_token

CONFIG = "configs/sft/quickstart.py"


def _config(data: int, fsdp: int):
    config = load_config(CONFIG)
    config.mesh.data, config.mesh.fsdp = data, fsdp
    config.train.batch_size = 8
    return config


@pytest.fixture(scope="module")
def plans():
    tokenizer = build_char_tokenizer()
    config = _config(8, 1)
    model_config = model_config_from(config.model, tokenizer)
    params = unbox(abstract_params(model_config))
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    n_layers = sum(math.prod(x.shape) for k, v in params.items() if k.startswith("layers_") for x in jax.tree.leaves(v))
    frozen = _config(8, 1)
    frozen.train.trainable = ("layers_.*",)  # the embeddings and the final norm stay as they are
    mu16 = _config(8, 1)
    mu16.optimizer.mu_dtype = "bfloat16"
    return {
        "mu16": plan_sft_step(mu16, tokenizer=tokenizer),
        "data": plan_sft_step(_config(8, 1), tokenizer=tokenizer),
        "fsdp": plan_sft_step(_config(1, 8), tokenizer=tokenizer),
        "frozen": plan_sft_step(frozen, tokenizer=tokenizer),
        "n_params": n_params,
        "n_layers": n_layers,
        "flops": train_flops_per_token(model_config, config.data.seq_len) * 8 * config.data.seq_len / 8,
    }


def test_fsdp_shards_the_state_that_data_parallelism_replicates(plans):
    data, fsdp, n = plans["data"], plans["fsdp"], plans["n_params"]
    state = 3 * 4 * n  # float32 params and AdamW's two moments
    assert data.num_devices == fsdp.num_devices == 8
    assert data.mesh == {"data": 8, "fsdp": 1, "tensor": 1} and fsdp.mesh == {"data": 1, "fsdp": 8, "tensor": 1}
    assert state <= data.argument_bytes < 1.1 * state + 2**20  # the whole state on every device, + the batch
    assert fsdp.argument_bytes < data.argument_bytes / 6  # an eighth of it (a few small leaves stay whole)
    # the state is donated: its outputs are written into the arguments' buffers
    assert data.alias_bytes >= state and fsdp.alias_bytes >= state / 8
    assert data.temp_bytes > 0 and data.peak_bytes > data.argument_bytes
    assert data.model_flops == pytest.approx(plans["flops"])  # the MFU count, split over the 8 devices


def test_a_masked_plan_keeps_optimizer_state_for_the_trained_parameters_only(plans):
    data, frozen, n, n_layers = plans["data"], plans["frozen"], plans["n_params"], plans["n_layers"]
    assert data.trainable_params == n and frozen.trainable_params == n_layers < n
    scalars = data.optimizer_bytes - 2 * 4 * n  # AdamW's two float32 moments per parameter, plus step counts
    assert 0 < scalars < 64 and frozen.optimizer_bytes == 2 * 4 * n_layers + scalars
    assert frozen.argument_bytes == data.argument_bytes - 2 * 4 * (n - n_layers)
    assert plans["fsdp"].optimizer_bytes < data.optimizer_bytes / 6
    assert f"{n / 1e6:,.1f} M parameters, {n_layers / 1e6:,.1f} M of them trained" in format_plan(frozen)
    assert "trained" not in format_plan(data)


def test_a_bf16_first_moment_saves_two_bytes_a_parameter(plans):
    data, mu16, n = plans["data"], plans["mu16"], plans["n_params"]
    assert data.optimizer_bytes - mu16.optimizer_bytes == 2 * n
    assert data.argument_bytes - mu16.argument_bytes == 2 * n


def _plan(peak_bytes: int, device_kind: str = "TPU v5 lite") -> StepPlan:
    """A plan of ``peak_bytes`` per device: 1 GiB of arguments (all donated), the rest temporaries."""
    return StepPlan(
        name="train step: 16 x 8192 tokens",
        device_kind=device_kind,
        num_devices=16,
        mesh={"data": 1, "fsdp": 16, "tensor": 1},
        num_params=10**9,
        trainable_params=10**9,
        argument_bytes=2**30,
        optimizer_bytes=2**29,
        frozen_bytes=0,
        output_bytes=2**30,
        alias_bytes=2**30,
        temp_bytes=peak_bytes - 2**30,
        model_flops=2e12,
    )


def test_roofline_from_published_chip_peaks():
    plan = _plan(9 * 2**30)  # v5e: 197 TFLOP/s bf16, 819 GB/s; 2e12 FLOPs, 2 GiB of state in and out
    compute, memory, ceiling = plan.roofline()
    assert compute == pytest.approx(2e12 / 197e12) and memory == pytest.approx(2 * 2**30 / 819e9)
    assert ceiling == 1.0 and "a step takes at least 10.2 ms" in format_plan(plan)  # compute-bound
    light = dataclasses.replace(plan, model_flops=2e11)  # memory-bound: the state's traffic caps MFU
    assert light.roofline()[2] == pytest.approx((2e11 / 197e12) / (2 * 2**30 / 819e9))
    assert "at least 2.6 ms" in format_plan(light) and "MFU at most 39%" in format_plan(light)
    assert _plan(9 * 2**30, device_kind="cpu").roofline() is None


def test_format_plan_reports_fit_against_known_hbm():
    text = format_plan(_plan(9 * 2**30))
    assert "16 x TPU v5 lite" in text and "peak per device: 9.00 GiB of 16.00 GiB HBM: fits" in text
    assert "optimizer state 512.0 MiB" in text
    assert "does NOT fit" in format_plan(_plan(21 * 2**30))
    assert "HBM" not in format_plan(_plan(2**31, device_kind="cpu"))


def test_bad_inputs_are_named(capsys):
    with pytest.raises(ValueError, match="sizes multiply to 6 but there are 8 devices"):
        plan_sft_step(_config(3, 2), tokenizer=build_char_tokenizer())
    with pytest.raises(ValueError, match="v9z:1x1"):  # no libtpu here, or an unknown name: either way, named
        topology_devices("v9z:1x1")
    assert main(["plan", f"--config={CONFIG}", "--topology=v9z:1x1"]) == 2
    assert capsys.readouterr().err.startswith("jaxpt plan: cannot describe TPU topology 'v9z:1x1'")


def test_cli_prints_the_plan(capsys):
    assert main(["plan", f"--config={CONFIG}", "--config.mesh.data=1", "--config.mesh.fsdp=8", "--json"]) == 0
    out = capsys.readouterr().out
    assert "8 x cpu; mesh data=1, fsdp=8, tensor=1" in out and '"num_devices": 8' in out


def test_a_step_xla_finds_too_big_is_reported_not_raised(monkeypatch, capsys):
    """XLA:TPU refuses to compile a program larger than HBM (RESOURCE_EXHAUSTED); the plan says so."""

    class Lowered:
        def compile(self):
            raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM (21.59G > 15.75G)")

    class Jitted:
        def lower(self, *args):
            return Lowered()

    monkeypatch.setattr(plan_module, "jit_train_step", lambda *args, **kwargs: Jitted())
    with pytest.raises(DoesNotFit, match=r"does not fit on cpu with mesh data=8, fsdp=1, tensor=1: RESOURCE_EXH"):
        plan_sft_step(_config(8, 1), tokenizer=build_char_tokenizer())
    assert main(["plan", f"--config={CONFIG}", "--config.mesh.data=8"]) == 2
    assert "does NOT fit" in capsys.readouterr().out


def test_a_held_libtpu_lock_is_its_own_error(monkeypatch):
    from jax.experimental import topologies

    def busy(*a, **k):
        raise RuntimeError('ABORTED: Internal error when accessing libtpu multi-process lockfile. Run "$ rm ..."')

    monkeypatch.setattr(topologies, "get_topology_desc", busy)
    with pytest.raises(plan_module.TPUBusy, match="in use by another process"):
        topology_devices("v5e:2x2")


def test_splash_attention_plans_through_the_sharded_sft_step():
    """The splash kernel (interpret mode: this host has no TPU) inside the whole fsdp-sharded SFT step."""
    from jaxpt.models.attention import AttentionError, interpret_kernels

    config = _config(1, 8)
    config.model.attention = "splash"
    with pytest.raises(AttentionError, match="TPU kernel"):  # on CPU outside interpret mode: a named error
        plan_sft_step(config, tokenizer=build_char_tokenizer())
    with interpret_kernels():
        plan = plan_sft_step(config, tokenizer=build_char_tokenizer())
    assert plan.num_devices == 8 and plan.peak_bytes > 0


def _fsdp8(path: str, **overrides: object):
    config = load_config(path)
    config.mesh.data, config.mesh.fsdp = 1, 8
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config


def _param_bytes(model_config) -> int:
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(unbox(abstract_params(model_config))))


@pytest.fixture(scope="module")
def step_kinds():
    """Each algorithm's tiny preset (char tokenizer, scratch model), fsdp over 8 devices."""
    tokenizer = build_char_tokenizer()
    configs = {
        "dpo": _fsdp8("configs/dpo/quickstart.py:tiny"),
        "dpo_precomputed": _fsdp8("configs/dpo/quickstart.py:tiny", **{"dpo.precompute_reference": True}),
        "rm": _fsdp8("configs/rm/quickstart.py:tiny"),
        "grpo": _fsdp8("configs/grpo/arithmetic.py:tiny"),
        "ppo": _fsdp8("configs/ppo/arithmetic.py:tiny"),
    }
    out = {name: plan_steps(c, tokenizer=tokenizer) for name, c in configs.items()}
    out["model_config"] = model_config_from(configs["grpo"].model, tokenizer)
    out["configs"] = configs
    return out


def test_dpo_plans_its_reference_forward_unless_precomputed(step_kinds):
    (step,), (precomputed,) = step_kinds["dpo"], step_kinds["dpo_precomputed"]
    assert step.name == "train step: 8 pairs: prompt 8 + 2 x 9 completion tokens"  # seq_len 16: P 8, C 16+1-8
    # the reference's f32 params, sharded like the policy's: about an eighth of them on each device
    ref = _param_bytes(model_config_from(step_kinds["configs"]["dpo"].model, build_char_tokenizer()))
    assert ref / 8 <= step.frozen_bytes < ref / 4 and precomputed.frozen_bytes == 0
    assert step.argument_bytes - precomputed.argument_bytes == pytest.approx(step.frozen_bytes, abs=1024)
    # the reference forward is a third of the step's (forward + backward) work on top
    assert step.model_flops == pytest.approx(precomputed.model_flops * 4 / 3, rel=0.01)
    assert "frozen inputs" in format_plan(step) and "frozen inputs" not in format_plan(precomputed)


def test_reward_model_plans_its_pair_step(step_kinds):
    (step,) = step_kinds["rm"]
    assert step.name.startswith("train step: 8 pairs") and step.frozen_bytes == 0 and step.model_flops > 0


@pytest.mark.parametrize("kind", ["grpo", "ppo"])
def test_rl_plans_the_sampler_and_scoring_pass_beside_the_update(step_kinds, kind):
    update, sampler, scoring = step_kinds[kind]
    rows = {"grpo": 8 * 4, "ppo": 16 * 1}[kind]  # prompts per step x samples per prompt
    assert update.name.startswith(f"train step: {rows // 2} of the rollout's {rows} rows")
    assert sampler.name == f"sampler: prefill + decode of {rows} rows, 12 prompt + 4 new tokens"
    assert scoring.name.startswith("scoring pass: reference log-probs") and f"of {rows} rows" in scoring.name
    # every program holds the whole train state and the frozen reference: they stay in HBM meanwhile
    assert update.frozen_bytes > 0 and sampler.argument_bytes > update.optimizer_bytes + update.frozen_bytes
    assert update.model_flops > 0 and sampler.model_flops == scoring.model_flops == 0
    # the KV cache: keys and values, per layer, of every row's prompt + new tokens (the last one never cached)
    mc = step_kinds["model_config"]
    cache = 2 * mc.num_layers * rows * mc.num_kv_heads * mc.head_dim * (12 + 4 - 1) * np.dtype(mc.dtype).itemsize
    assert f"KV cache: {cache / 2**30:.2f} GiB in all ({rows} rows x 15 slots)" in format_plan(sampler)
    if kind == "ppo":  # policy + value model (a scalar head on its own decoder): about twice GRPO's policy
        assert update.num_params > 1.5 * step_kinds["grpo"][0].num_params


def test_cli_plans_every_program(capsys):
    assert (
        main(["plan", "--config=configs/grpo/arithmetic.py:tiny", "--config.mesh.data=1", "--config.mesh.fsdp=8"]) == 0
    )
    out = capsys.readouterr().out
    assert out.index("[train step:") < out.index("[sampler:") < out.index("[scoring pass:") and "KV cache" in out
