"""Memory policies are config and never change the numbers: host-offload remat equals full remat."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpt.models.decoder import Decoder, init_params
from jaxpt.sharding import DEFAULT_RULES, make_mesh
from tests.tiny_models import tiny_llama_config


def test_offload_remat_gives_the_gradients_of_full_remat():
    """``remat=offload`` saves the layer input and q/k/v/out projections to host memory instead of recomputing
    them (MaxText's recipe); the gradients are those of ``remat=full`` and of no remat at all."""
    base = tiny_llama_config(scan_layers=True)
    params = init_params(base, jax.random.key(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, base.vocab_size, (2, 64)), jnp.int32)

    def grads(remat):
        config = base.replace(remat=remat)
        f = lambda p: jnp.mean(Decoder(config).apply({"params": p}, tokens)[0] ** 2)  # noqa: E731
        with jax.set_mesh(make_mesh(-1, 1, 1)), nn.logical_axis_rules(DEFAULT_RULES):
            return jax.jit(jax.grad(f))(params)

    plain, full, offload = grads("none"), grads("full"), grads("offload")
    for other in (full, offload):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), plain, other)


def test_bf16_first_moment_stores_mu_in_bfloat16_and_updates_like_f32():
    """``optimizer.mu_dtype=bfloat16`` (MaxText's ``mu_dtype``) keeps Adam's first moment in bf16, the second in
    f32; updates equal the f32 optimizer's to bf16 precision."""
    import optax
    import pytest

    from jaxpt.training.optimizer import make_optimizer, optimizer_config

    params = {"w": {"kernel": jnp.linspace(-1.0, 1.0, 64, dtype=jnp.float32).reshape(8, 8)}}
    grads = jax.tree.map(lambda p: jnp.sin(7.0 * p) + 0.1, params)

    def run(mu_dtype):
        tx, _ = make_optimizer(optimizer_config(mu_dtype=mu_dtype, warmup_steps=0), 10)
        state = tx.init(params)
        updates = []
        for _ in range(3):
            u, state = tx.update(grads, state, params)
            updates.append(u["w"]["kernel"])
        return state, updates

    state32, u32 = run("")
    state16, u16 = run("bfloat16")
    adam16 = next(
        s
        for s in jax.tree.leaves(state16, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
        if isinstance(s, optax.ScaleByAdamState)
    )
    assert adam16.mu["w"]["kernel"].dtype == jnp.bfloat16 and adam16.nu["w"]["kernel"].dtype == jnp.float32
    for a, b in zip(u32, u16, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-2, atol=1e-6)
    with pytest.raises(ValueError, match="optimizer.mu_dtype='bf16'"):
        make_optimizer(optimizer_config(mu_dtype="bf16"), 10)
