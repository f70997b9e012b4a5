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
