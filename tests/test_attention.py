"""Attention backends: the XLA path's causal query blocks give the unblocked result; the Pallas splash kernel
(interpret mode on CPU) equals the XLA path in values and gradients on packed and left-padded rows, with GQA, a
sliding window and under a mesh; unsupported requests are named errors."""

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpt.models import attention as attention_module
from jaxpt.models.attention import (
    AttentionError,
    _causal_blocks,
    dot_product_attention,
    interpret_kernels,
    resolve_backend,
    splash_attention,
)
from jaxpt.models.decoder import Decoder, init_params
from jaxpt.sharding import DEFAULT_RULES, make_mesh
from tests.tiny_models import tiny_llama_config


def test_causal_block_counts():
    assert [_causal_blocks(t) for t in (1, 64, 127, 128, 192, 256, 512, 4096)] == [1, 1, 1, 2, 3, 4, 8, 8]


@pytest.mark.parametrize(
    "t, s, keys_transposed, remat",
    [(256, 256, False, False), (128, 256, False, False), (128, 256, True, False), (256, 256, False, True)],
)
def test_causal_blocks_equal_full_attention(t, s, keys_transposed, remat, monkeypatch):
    """Queries in the last ``t`` of ``s`` slots, a causal mask with left padding and two packed segments;
    ``remat``: the long-sequence path (``REMAT_BLOCKS_FROM``), whose backward pass is written by hand."""
    monkeypatch.setattr(attention_module, "REMAT_BLOCKS_FROM", 128 if remat else 10**9)
    monkeypatch.setattr(attention_module, "REMAT_BLOCK", 64)
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


def test_rematerialised_blocks_keep_one_blocks_scores_alive(monkeypatch):
    """The gradient of a long causal row: on the recomputing path XLA's temporaries shrink (one block's float32
    scores and probabilities at a time instead of all eight blocks')."""
    b, t, h, d = 1, 1024, 8, 16
    q = jax.ShapeDtypeStruct((b, t, h, d), jnp.float32)
    k = jax.ShapeDtypeStruct((b, h, t, d), jnp.float32)
    mask = jax.ShapeDtypeStruct((b, t, t), jnp.bool_)

    def temp_bytes(threshold):
        monkeypatch.setattr(attention_module, "REMAT_BLOCKS_FROM", threshold)
        monkeypatch.setattr(attention_module, "REMAT_BLOCK", 128)
        loss = lambda q, k, v, m: jnp.sum(dot_product_attention(q, k, v, m, d**-0.5, causal=True))  # noqa: E731
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, k, mask).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    kept, remat = temp_bytes(10**9), temp_bytes(128)
    scores = b * h * t * t * 4  # one full float32 score matrix
    assert remat < kept / 2 and remat < scores, (kept, remat)


def _packed_rows(b: int, t: int) -> np.ndarray:
    """Segment ids: row 0 holds two packed documents and right padding, row 1 is left-padded, others full."""
    seg = np.ones((b, t), np.int32)
    seg[0, : t // 3], seg[0, t // 3 : t - 20], seg[0, t - 20 :] = 1, 2, 0
    seg[1, :37] = 0
    return seg


def _xla_mask(seg: np.ndarray, window: int | None) -> jnp.ndarray:
    idx = np.arange(seg.shape[1])
    causal = idx[None, :] <= idx[:, None]
    if window:
        causal &= idx[:, None] - idx[None, :] < window
    return jnp.asarray((seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0) & causal[None])


@pytest.mark.parametrize("window", [None, 48])
@pytest.mark.parametrize("mesh_shape", [None, (2, 2, 2)])
def test_splash_equals_xla_on_packed_left_padded_gqa_rows(window, mesh_shape):
    b, t, h, kv, d = 4, 384, 4, 2, 32  # 3 kernel blocks of 128; 2 query heads per KV head
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((b, t, h, d), (b, kv, t, d), (b, kv, t, d)))
    seg = _packed_rows(b, t)
    real = jnp.asarray(seg > 0)[:, :, None, None]  # padding queries: no loss reads them, no real query sees them
    w = jnp.asarray(rng.normal(size=(b, t, h, d)), jnp.float32) * real

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * w)

    ref_fn = lambda q, k, v: dot_product_attention(q, k, v, _xla_mask(seg, window), d**-0.5)  # noqa: E731
    splash_fn = lambda q, k, v: splash_attention(q, k, v, jnp.asarray(seg), d**-0.5, window)  # noqa: E731
    want, want_grads = ref_fn(q, k, v), jax.grad(loss(ref_fn), argnums=(0, 1, 2))(q, k, v)
    mesh = make_mesh(*mesh_shape) if mesh_shape else None
    with interpret_kernels(), jax.set_mesh(mesh) if mesh else contextlib.nullcontext():
        got = jax.jit(splash_fn)(q, k, v)
        grads = jax.jit(jax.grad(loss(splash_fn), argnums=(0, 1, 2)))(q, k, v)
    np.testing.assert_allclose(np.where(real, got, 0), np.where(real, want, 0), atol=2e-6)
    for g, r in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(g, r, atol=1e-5)


def test_decoder_with_splash_equals_xla_logits_and_gradients():
    """The whole decoder, packed rows: logits at real positions and every parameter's gradient."""
    xla = tiny_llama_config()
    params = init_params(xla, jax.random.key(0))
    b, t = 2, 128
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(0, xla.vocab_size, (b, t)), jnp.int32)
    seg = _packed_rows(b, t)
    positions = jnp.asarray(np.concatenate([np.arange(t // 3), np.arange(t - t // 3)])[None].repeat(b, 0), jnp.int32)
    real = jnp.asarray(seg > 0)[..., None]
    w = jnp.asarray(rng.normal(size=(b, t, xla.vocab_size)), jnp.float32) * real

    def run(config):
        def f(p):
            logits, _ = Decoder(config).apply({"params": p}, tokens, positions, jnp.asarray(seg))
            return jnp.sum(logits * w), logits

        with interpret_kernels(), jax.set_mesh(make_mesh(-1, 1, 1)), nn.logical_axis_rules(DEFAULT_RULES):
            return jax.jit(jax.value_and_grad(f, has_aux=True))(params)

    (_, want), want_grads = run(xla)
    (_, got), grads = run(xla.replace(attention="splash"))
    np.testing.assert_allclose(np.where(real, got, 0), np.where(real, want, 0), atol=1e-5)
    jax.tree.map(lambda g, r: np.testing.assert_allclose(g, r, rtol=2e-4, atol=1e-4), grads, want_grads)


def test_backend_choice_and_named_errors():
    assert resolve_backend("auto") == "xla"  # CPU: the XLA path stays the default
    with pytest.raises(AttentionError, match="TPU kernel"):
        resolve_backend("splash")  # outside interpret mode on CPU
    with pytest.raises(AttentionError, match="expected one of"):
        resolve_backend("flash")
    with pytest.raises(ValueError, match="attention='flash'"):
        tiny_llama_config(attention="flash")
    q = jnp.zeros((1, 100, 4, 32))
    kv = jnp.zeros((1, 2, 100, 32))
    with interpret_kernels(), pytest.raises(AttentionError, match="multiple of 128, got 100"):
        splash_attention(q, kv, kv, jnp.ones((1, 100), jnp.int32), 1.0)
    config = tiny_llama_config(attention="auto")  # auto on rows the kernel cannot take: the XLA path
    params = init_params(config, jax.random.key(0))
    out, _ = Decoder(config).apply({"params": params}, jnp.zeros((1, 100), jnp.int32))
    assert out.shape == (1, 100, config.vocab_size)
