"""dot_product_attention: causal query blocks give the unblocked result (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpt.models.decoder import _causal_blocks, dot_product_attention


def test_causal_block_counts():
    assert [_causal_blocks(t) for t in (1, 64, 127, 128, 192, 256, 512, 4096)] == [1, 1, 1, 2, 3, 4, 8, 8]


@pytest.mark.parametrize("t, s, keys_transposed", [(256, 256, False), (128, 256, False), (128, 256, True)])
def test_causal_blocks_equal_full_attention(t, s, keys_transposed):
    """Queries in the last ``t`` of ``s`` slots, a causal mask with left padding and two packed segments."""
    b, h, kv, d = 2, 4, 2, 16
    kq, kk, kv_, kw = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(kq, (b, t, h, d))
    k = jax.random.normal(kk, (b, kv, s, d))
    v = jax.random.normal(kv_, (b, kv, s, d))
    seg = np.ones((b, s), np.int32)
    seg[0, :10] = 0  # left padding
    seg[1, s // 2 :] = 2  # a second packed document
    q_slots = np.arange(s - t, s)
    causal = np.arange(s)[None, :] <= q_slots[:, None]
    mask = jnp.asarray((seg[:, q_slots, None] == seg[:, None, :]) & (seg[:, None, :] != 0) & causal[None])
    rows = jnp.asarray(seg[:, q_slots] != 0)[:, :, None, None]  # padding queries are never read
    w = jax.random.normal(kw, (b, t, h, d)) * rows
    keys = jnp.swapaxes(k, 2, 3) if keys_transposed else k

    def loss(q, k, v, causal):
        return jnp.sum(dot_product_attention(q, k, v, mask, d**-0.5, keys_transposed, causal=causal) * w)

    full = dot_product_attention(q, keys, v, mask, d**-0.5, keys_transposed)
    blocked = dot_product_attention(q, keys, v, mask, d**-0.5, keys_transposed, causal=True)
    np.testing.assert_allclose(blocked * rows, full * rows, rtol=1e-5, atol=1e-5)
    g_full = jax.grad(loss, argnums=(0, 1, 2))(q, keys, v, False)
    g_blocked = jax.grad(loss, argnums=(0, 1, 2))(q, keys, v, True)
    for a, c in zip(g_blocked, g_full, strict=True):
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-5)
