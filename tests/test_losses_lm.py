"""LM losses vs independent numpy transcriptions; chunked CE vs the unchunked one (value + grads)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpt.losses.lm import (
    chunked_cross_entropy,
    cross_entropy_loss,
    fused_cross_entropy,
    masked_mean,
    token_entropy,
    token_logprobs,
    top1_correct,
)

# ---- numpy references (written from the formulas, not from the code under test) ----


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def np_token_logprobs(logits, targets):
    lp = np_log_softmax(logits)
    b, t = targets.shape
    out = np.zeros((b, t))
    for i in range(b):
        for j in range(t):
            out[i, j] = lp[i, j, targets[i, j]]
    return out


def np_entropy(logits):
    lp = np_log_softmax(logits)
    return -(np.exp(lp) * lp).sum(-1)


def np_cross_entropy(logits, targets, mask):
    nll = -np_token_logprobs(logits, targets)
    loss = (nll * mask).sum() / max(mask.sum(), 1.0)
    correct = ((np.asarray(logits).argmax(-1) == targets) * mask).sum()
    return loss, mask.sum(), correct


def _data(seed=0, b=3, t=7, v=11):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, t, v)).astype(np.float32) * 3
    targets = rng.integers(0, v, size=(b, t)).astype(np.int32)
    mask = (rng.random((b, t)) < 0.7).astype(np.float32)
    return logits, targets, mask


def test_token_logprobs_and_entropy():
    logits, targets, _ = _data()
    np.testing.assert_allclose(token_logprobs(logits, targets), np_token_logprobs(logits, targets), atol=1e-5)
    np.testing.assert_allclose(token_entropy(logits), np_entropy(logits), atol=1e-5)
    # bf16 logits are promoted to float32.
    assert token_logprobs(jnp.asarray(logits, jnp.bfloat16), targets).dtype == jnp.float32
    assert token_entropy(jnp.asarray(logits, jnp.bfloat16)).dtype == jnp.float32


def test_token_logprobs_large_logits_stable():
    logits = np.array([[[1000.0, 0.0, -1000.0]]], np.float32)
    out = np.asarray(token_logprobs(logits, np.array([[0]])))
    assert np.isfinite(out).all() and abs(out[0, 0]) < 1e-6


def test_masked_mean():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 5)).astype(np.float32)
    m = (rng.random((4, 5)) < 0.5).astype(np.float32)
    m[2] = 0.0
    np.testing.assert_allclose(masked_mean(x, m), (x * m).sum() / m.sum(), rtol=1e-6)
    per_row = np.asarray(masked_mean(x, m, axis=-1))
    for i in range(4):
        want = 0.0 if m[i].sum() == 0 else (x[i] * m[i]).sum() / m[i].sum()
        np.testing.assert_allclose(per_row[i], want, rtol=1e-6, atol=1e-7)
    assert float(masked_mean(x, np.zeros_like(m))) == 0.0
    g = jax.grad(lambda x: masked_mean(x, jnp.zeros_like(x)))(jnp.asarray(x))
    assert np.isfinite(np.asarray(g)).all()
    # Garbage (inf / nan) under the mask never leaks out.
    x2 = x.copy()
    x2[m == 0] = np.inf
    np.testing.assert_allclose(masked_mean(x2, m), (x * m).sum() / m.sum(), rtol=1e-6)


def test_cross_entropy_loss():
    logits, targets, mask = _data(2)
    loss, aux = cross_entropy_loss(logits, targets, mask)
    want_loss, want_n, want_correct = np_cross_entropy(logits, targets, mask)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    assert float(aux["num_tokens"]) == want_n and float(aux["correct"]) == want_correct
    # All-masked batch: loss 0, not nan.
    loss0, aux0 = cross_entropy_loss(logits, targets, np.zeros_like(mask))
    assert float(loss0) == 0.0 and float(aux0["num_tokens"]) == 0.0
    # d loss / d target logit < 0 on a masked-in token (raising the target's logit lowers the NLL).
    g = np.asarray(jax.grad(lambda z: cross_entropy_loss(z, targets, mask)[0])(jnp.asarray(logits)))
    i, j = np.argwhere(mask > 0)[0]
    assert g[i, j, targets[i, j]] < 0
    assert np.all(g[mask == 0] == 0)


def _head_data(seed, b, t, e, v):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.normal(size=(b, t, e)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(e, v)) / np.sqrt(e), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(v,)) * 0.1, jnp.float32)
    targets = jnp.asarray(rng.integers(0, v, size=(b, t)), jnp.int32)
    mask = jnp.asarray(rng.random((b, t)) < 0.8, jnp.float32)
    return hidden, kernel, bias, targets, mask


@pytest.mark.parametrize("chunk_size,use_bias,softcap", [(8, False, None), (5, True, None), (64, True, 3.0)])
def test_chunked_cross_entropy_matches_unchunked(chunk_size, use_bias, softcap):
    b, t, e, v = 2, 13, 16, 37  # B*T = 26: not a multiple of 8 or 5 -> exercises the padding.
    hidden, kernel, bias, targets, mask = _head_data(3, b, t, e, v)
    bias = bias if use_bias else None

    def full(p):
        logits = p["h"] @ p["w"] + (0.0 if bias is None else p["b"])
        if softcap is not None:
            logits = softcap * jnp.tanh(logits / softcap)
        return cross_entropy_loss(logits, targets, mask)

    def chunked(p):
        return chunked_cross_entropy(
            p["h"], p["w"], targets, mask, chunk_size, head_bias=p.get("b"), logit_softcap=softcap
        )

    params = {"h": hidden, "w": kernel} | ({} if bias is None else {"b": bias})
    (l1, a1), g1 = jax.value_and_grad(full, has_aux=True)(params)
    (l2, a2), g2 = jax.jit(jax.value_and_grad(chunked, has_aux=True))(params)
    np.testing.assert_allclose(l2, l1, rtol=1e-5)
    for k in ("num_tokens", "correct", "nll_sum"):
        np.testing.assert_allclose(a2[k], a1[k], rtol=1e-5)
    for k in params:
        np.testing.assert_allclose(g2[k], g1[k], rtol=1e-4, atol=1e-6)


def _all_avals(jaxpr):
    """Every intermediate shape in a jaxpr, recursing into sub-jaxprs (scan, remat, pjit, cond...)."""
    out = []

    def walk(j):
        for eqn in j.eqns:
            out.extend(v.aval for v in eqn.outvars)
            for p in eqn.params.values():
                for sub in p if isinstance(p, (list, tuple)) else [p]:
                    if hasattr(sub, "eqns"):
                        walk(sub)
                    elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                        walk(sub.jaxpr)

    walk(jaxpr.jaxpr)
    return out


def test_chunked_cross_entropy_never_materialises_full_logits():
    b, t, e, v, chunk = 4, 16, 8, 256, 4  # N*V = 16384 vs E*V = 2048 (the kernel) and chunk*V = 1024.
    hidden, kernel, _, targets, mask = _head_data(4, b, t, e, v)
    f = lambda h, w: chunked_cross_entropy(h, w, targets, mask, chunk)[0]
    jaxpr = jax.make_jaxpr(jax.value_and_grad(f, argnums=(0, 1)))(hidden, kernel)
    avals = [a for a in _all_avals(jaxpr) if hasattr(a, "shape")]
    assert any(tuple(a.shape) == (chunk, v) for a in avals)  # the walk does see the per-chunk logits...
    assert max(int(np.prod(a.shape)) for a in avals) <= e * v  # ...and nothing bigger than the kernel.
    # ...while the unchunked loss does build [B, T, V].
    g = lambda h, w: cross_entropy_loss(h @ w, targets, mask)[0]
    jaxpr_full = jax.make_jaxpr(jax.value_and_grad(g, argnums=(0, 1)))(hidden, kernel)
    assert max(int(np.prod(a.shape)) for a in _all_avals(jaxpr_full) if hasattr(a, "shape")) >= b * t * v


def test_chunked_cross_entropy_bf16_inputs():
    hidden, kernel, _, targets, mask = _head_data(5, 2, 6, 8, 19)
    l1, _ = cross_entropy_loss(hidden @ kernel, targets, mask)
    l2, _ = chunked_cross_entropy(hidden.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), targets, mask, 4)
    assert l2.dtype == jnp.float32
    np.testing.assert_allclose(l2, l1, rtol=3e-2)


@pytest.mark.parametrize("chunk_size", [5, 8, 26, 100])
def test_fused_cross_entropy_matches_unfused_value_and_grads(chunk_size):
    b, t, e, v = 2, 13, 16, 37  # B*T = 26: 5 and 8 exercise the padding, 100 is one clipped chunk.
    hidden, kernel, _, targets, mask = _head_data(6, b, t, e, v)
    full = lambda h, w: cross_entropy_loss(h @ w, targets, mask)
    fused = lambda h, w: fused_cross_entropy(h, w, targets, mask, chunk_size)
    for scale in (1.0, -2.5):  # the backward must scale the saved gradients by the incoming cotangent
        (l1, a1), g1 = jax.value_and_grad(lambda h, w, s=scale: (s * full(h, w)[0], full(h, w)[1]), (0, 1), True)(
            hidden, kernel
        )
        (l2, a2), g2 = jax.jit(
            jax.value_and_grad(lambda h, w, s=scale: (s * fused(h, w)[0], fused(h, w)[1]), (0, 1), True)
        )(hidden, kernel)
        np.testing.assert_allclose(l2, l1, rtol=1e-5)
        for k in ("num_tokens", "correct", "nll_sum"):
            np.testing.assert_allclose(a2[k], a1[k], rtol=1e-5)
        for x, y in zip(g2, g1, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_fused_cross_entropy_never_materialises_full_logits_and_takes_bf16():
    b, t, e, v, chunk = 4, 16, 8, 256, 4
    hidden, kernel, _, targets, mask = _head_data(7, b, t, e, v)
    f = lambda h, w: fused_cross_entropy(h, w, targets, mask, chunk)[0]
    jaxpr = jax.make_jaxpr(jax.value_and_grad(f, argnums=(0, 1)))(hidden, kernel)
    avals = [a for a in _all_avals(jaxpr) if hasattr(a, "shape")]
    assert any(tuple(a.shape) == (chunk, v) for a in avals)
    assert max(int(np.prod(a.shape)) for a in avals) <= e * v
    l1, _ = cross_entropy_loss(hidden @ kernel, targets, mask)
    l2, _ = fused_cross_entropy(hidden.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), targets, mask, 8)
    assert l2.dtype == jnp.float32
    np.testing.assert_allclose(l2, l1, rtol=3e-2)


def test_top1_correct_is_argmax_but_ties_count_wrong():
    logits, targets, _ = _data(5)
    np.testing.assert_array_equal(top1_correct(logits, targets), np.asarray(logits).argmax(-1) == targets)
    tied = np.array([[0.0, 2.0, 2.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 3.0, 2.0, 1.0]], np.float32)
    # argmax would count row 0 right (first of the tie) and row 1 right for target 0; neither is the unique top
    np.testing.assert_array_equal(top1_correct(tied, np.array([1, 0, 1])), [0.0, 0.0, 1.0])
