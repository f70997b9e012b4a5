"""jaxpt.models.matmul: the hand-written backward passes give autodiff's gradients (and keep dtypes)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpt.models.matmul import matmul, transposed_copy, vocab_logits


def _grads(f, *args):
    """Gradients of a fixed random projection of ``f(*args)`` (so every output element carries a weight)."""
    out_shape = jax.eval_shape(f, *args).shape
    w = jax.random.normal(jax.random.key(7), out_shape, jnp.float32)
    return jax.grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32) * w), argnums=tuple(range(len(args))))(*args)


@pytest.mark.parametrize(
    "x_shape, w_shape, in_dims",
    [((3, 5, 8), (8, 6), 1), ((2, 4, 3, 8), (3, 8, 16), 2), ((7, 8), (8, 2, 4), 1)],
)
def test_matmul_value_and_grads_equal_tensordot(x_shape, w_shape, in_dims):
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, x_shape, jnp.float32)
    w = jax.random.normal(kw, w_shape, jnp.float32)
    np.testing.assert_allclose(matmul(x, w, in_dims), jnp.tensordot(x, w, in_dims), rtol=1e-6, atol=1e-6)
    ours = _grads(lambda a, b: matmul(a, b, in_dims), x, w)
    ref = _grads(lambda a, b: jnp.tensordot(a, b, in_dims), x, w)
    for a, b in zip(ours, ref, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_vocab_logits_value_and_grads_equal_einsum():
    kh, kk = jax.random.split(jax.random.key(1))
    h = jax.random.normal(kh, (2, 9, 16), jnp.float32)
    kernel = jax.random.normal(kk, (16, 50), jnp.float32)
    logits = vocab_logits(h, kernel)
    assert logits.dtype == jnp.float32 and logits.shape == (2, 9, 50)
    np.testing.assert_allclose(logits, jnp.einsum("bte,ev->btv", h, kernel), rtol=1e-6, atol=1e-5)
    ours = _grads(vocab_logits, h, kernel)
    ref = _grads(lambda a, b: jnp.einsum("bte,ev->btv", a, b), h, kernel)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_mixed_precision_keeps_dtypes():
    """bf16 activations with f32 master weights: each gradient comes back in its operand's dtype."""
    h = jax.random.normal(jax.random.key(2), (4, 8), jnp.bfloat16)
    kernel = jax.random.normal(jax.random.key(3), (8, 12), jnp.float32)
    assert vocab_logits(h, kernel).dtype == jnp.float32
    dh, dk = _grads(vocab_logits, h, kernel)
    assert dh.dtype == jnp.bfloat16 and dk.dtype == jnp.float32
    ref_dk = _grads(lambda a, b: jnp.einsum("te,ev->tv", a.astype(jnp.float32), b), h, kernel)[1]
    np.testing.assert_allclose(dk, ref_dk, rtol=2e-2, atol=2e-2)
    dx, dw = _grads(lambda a, b: matmul(a, b.astype(jnp.bfloat16)), h, kernel)
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32


def test_transposed_copy_is_the_transpose_under_jit():
    x = jnp.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(jax.jit(transposed_copy)(x), x.T)
