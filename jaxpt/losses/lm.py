"""Language-model losses: token log-probs, entropy, masked means and (chunked) cross-entropy.

All reductions happen in float32 whatever the dtype of the logits / hidden states. Targets are already shifted
(``targets[b, t]`` is the token that follows ``inputs[b, t]``), see docs/architecture.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxpt.models.matmul import softcap, transposed_copy

Array = jax.Array


def token_logprobs(logits: Array, targets: Array) -> Array:
    """``log p(targets)`` per position, ``[B, T, V], [B, T] -> [B, T]`` in float32.

    ``log softmax(z)_y = z_y - logsumexp(z)``, with ``z_y`` gathered (no one-hot over the vocabulary).
    """
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - lse


def top1_correct(logits: Array, targets: Array) -> Array:
    """1.0 where the target's logit is strictly the highest, else 0.0: ``[..., V], [...] -> [...]`` float32.

    ``argmax == target`` but for ties (wrong here; argmax picks the first index), computed as a gather and a
    plain max reduction: argmax is a (value, index) reduction that XLA:CPU does not vectorise, ~6% of the
    bench-small SFT step (``docs/benchmarks.md``). All-equal logits, e.g. from a zero-initialised head, score 0.
    """
    targets = targets[..., None].astype(jnp.int32)
    picked = jnp.take_along_axis(logits, targets, axis=-1)[..., 0]
    vocab = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    others = jnp.max(jnp.where(vocab == targets, -jnp.inf, logits), axis=-1)
    return (picked > others).astype(jnp.float32)


def token_entropy(logits: Array) -> Array:
    """Entropy of the next-token distribution, ``H = logsumexp(z) - sum_v softmax(z)_v z_v``; ``[B, T]``."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    probs = jax.nn.softmax(logits, axis=-1)
    return lse - jnp.sum(probs * logits, axis=-1)


def masked_sum(x: Array, mask: Array, axis: int | tuple[int, ...] | None = None) -> Array:
    """``sum(x * mask)``; positions where ``mask == 0`` never contribute (even if ``x`` is inf/nan there)."""
    mask = jnp.asarray(mask, jnp.float32)
    return jnp.sum(jnp.where(mask != 0, x, 0.0) * mask, axis=axis)


def masked_mean(x: Array, mask: Array, axis: int | tuple[int, ...] | None = None) -> Array:
    """``sum(x * mask) / sum(mask)`` over ``axis``; 0 (not nan) where the mask sums to 0."""
    mask = jnp.asarray(mask, jnp.float32)
    num = masked_sum(x, mask, axis)
    den = jnp.sum(mask, axis=axis)
    return jnp.where(den != 0, num / jnp.where(den != 0, den, 1.0), 0.0)


def cross_entropy_loss(logits: Array, targets: Array, loss_mask: Array) -> tuple[Array, dict[str, Array]]:
    """Token-mean negative log-likelihood: ``sum(nll * m) / max(sum(m), 1)``.

    Returns ``(loss, aux)``; ``aux`` holds ``nll_sum``, ``num_tokens`` (``sum(m)``) and ``correct`` (masked
    count of tokens whose target has the highest logit, ``top1_correct``), so gradient-accumulation code can
    re-normalise over micro-batches (``nll_sum`` is differentiable).
    """
    mask = loss_mask.astype(jnp.float32)
    nll = -token_logprobs(logits, targets)
    nll_sum = masked_sum(nll, mask)
    num_tokens = jnp.sum(mask)
    correct = jnp.sum(top1_correct(logits, targets) * mask)
    loss = nll_sum / jnp.maximum(num_tokens, 1.0)
    aux = {"nll_sum": nll_sum, "num_tokens": num_tokens, "correct": correct}
    return loss, aux


def chunked_cross_entropy(
    hidden: Array,
    head_kernel: Array,
    targets: Array,
    loss_mask: Array,
    chunk_size: int,
    head_bias: Array | None = None,
    logit_softcap: float | None = None,
) -> tuple[Array, dict[str, Array]]:
    """``cross_entropy_loss(hidden @ head_kernel (+ bias), ...)`` without materialising ``[B*T, V]`` logits.

    ``hidden [B, T, E]``, ``head_kernel [E, V]`` (for tied embeddings pass ``embedding.T``). Tokens are
    flattened, right-padded (mask 0) to a multiple of ``chunk_size`` and mapped over with ``lax.map``; each
    chunk is ``jax.checkpoint``-ed, so both the forward and the backward pass hold only one ``[chunk, V]``
    block of logits (the backward recomputes it). Logits are accumulated in float32. ``logit_softcap`` applies
    ``softcap`` (``c * tanh(z / c)``, Gemma style) before the softmax. Same ``(loss, aux)`` as
    ``cross_entropy_loss``.
    """
    emb = hidden.shape[-1]
    h = hidden.reshape(-1, emb)
    t = targets.reshape(-1).astype(jnp.int32)
    m = loss_mask.reshape(-1).astype(jnp.float32)
    n = h.shape[0]
    n_chunks = -(-n // chunk_size)
    pad = n_chunks * chunk_size - n
    if pad:
        h = jnp.pad(h, ((0, pad), (0, 0)))
        t = jnp.pad(t, (0, pad))
        m = jnp.pad(m, (0, pad))
    h = h.reshape(n_chunks, chunk_size, emb)
    t = t.reshape(n_chunks, chunk_size)
    m = m.reshape(n_chunks, chunk_size)

    @jax.checkpoint
    def chunk_stats(kernel: Array, bias: Array | None, hc: Array, tc: Array, mc: Array) -> tuple[Array, Array]:
        logits = jnp.dot(hc, kernel, preferred_element_type=jnp.float32)
        if bias is not None:
            logits = logits + bias.astype(jnp.float32)
        logits = softcap(logits, logit_softcap)
        nll = -token_logprobs(logits, tc)
        return masked_sum(nll, mc), jnp.sum(top1_correct(logits, tc) * mc)

    nll_sums, corrects = jax.lax.map(lambda xs: chunk_stats(head_kernel, head_bias, *xs), (h, t, m))
    nll_sum = jnp.sum(nll_sums)
    num_tokens = jnp.sum(m)
    loss = nll_sum / jnp.maximum(num_tokens, 1.0)
    aux = {"nll_sum": nll_sum, "num_tokens": num_tokens, "correct": jnp.sum(corrects)}
    return loss, aux


def fused_cross_entropy(
    hidden: Array,
    head_kernel: Array,
    targets: Array,
    loss_mask: Array,
    chunk_size: int,
    logit_softcap: float | None = None,
) -> tuple[Array, dict[str, Array]]:
    """``cross_entropy_loss(hidden @ head_kernel, ...)`` with its gradient computed in the forward pass.

    The loss is a masked *sum*, so ``d nll_sum / d logits = mask * (softmax - onehot)`` is known without the
    cotangent. Each ``[chunk, V]`` block of logits is made, reduced to its loss and turned into its share of
    ``d hidden`` and ``d kernel`` at once (the "fused linear cross-entropy" of Liger-Kernel / Apple's
    cut-cross-entropy, in plain JAX): three matmuls like the unfused loss, but no ``[B*T, V]`` logits, softmax
    or transposed gradient buffer ever exists, and on CPU the block stays in cache. The backward pass only
    scales the saved gradients. Same ``(loss, aux)`` as ``cross_entropy_loss``; the gradient flows to
    ``hidden`` and ``head_kernel`` (not through ``aux["correct"]``). ``logit_softcap`` soft-caps the logits
    (``softcap``) and multiplies their gradient by the cap's derivative, ``1 - tanh^2 = 1 - (capped / c)^2``.
    """
    emb = hidden.shape[-1]
    h = hidden.reshape(-1, emb)
    t = targets.reshape(-1).astype(jnp.int32)
    m = loss_mask.reshape(-1).astype(jnp.float32)
    n = h.shape[0]
    chunk = max(1, min(chunk_size, n))
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n
    if pad:
        h, t, m = jnp.pad(h, ((0, pad), (0, 0))), jnp.pad(t, (0, pad)), jnp.pad(m, (0, pad))

    def forward(h: Array, kernel: Array, t: Array, m: Array):
        vocab = kernel.shape[-1]

        def block(d_kernel, xs):
            hc, tc, mc = xs
            logits = softcap(jnp.dot(hc, kernel, preferred_element_type=jnp.float32), logit_softcap)
            # one exp pass serves the log-sum-exp and the softmax in the gradient (~2% of the SFT step)
            top = jnp.max(logits, axis=-1)
            weights = jnp.exp(logits - top[:, None])
            total = jnp.sum(weights, axis=-1)
            picked = jnp.take_along_axis(logits, tc[:, None], axis=-1)[:, 0]
            nll = jnp.sum((top + jnp.log(total) - picked) * mc)
            correct = jnp.sum(top1_correct(logits, tc) * mc)
            d_logits = weights * (mc / total)[:, None]
            d_logits = d_logits - jax.nn.one_hot(tc, vocab, dtype=jnp.float32) * mc[:, None]
            if logit_softcap:  # through the cap: d capped / d z = 1 - tanh(z / c)^2
                d_logits = d_logits * (1.0 - jnp.square(logits / logit_softcap))
            d_h = jnp.dot(d_logits.astype(hc.dtype), kernel.T, preferred_element_type=jnp.float32)
            d_kernel = d_kernel + jnp.dot(
                transposed_copy(hc), d_logits.astype(hc.dtype), preferred_element_type=jnp.float32
            )
            return d_kernel, (nll, correct, d_h.astype(hc.dtype))

        # Strided chunks (token i goes to chunk i % n_chunks): each chunk spans every row of the batch, so
        # it stays split over the batch's data shards.
        def strided(x):
            return x.reshape(chunk, n_chunks, *x.shape[1:]).swapaxes(0, 1)

        xs = (strided(h), strided(t), strided(m))
        d_kernel, (nll, correct, d_h) = jax.lax.scan(block, jnp.zeros(kernel.shape, jnp.float32), xs)
        d_h = d_h.swapaxes(0, 1).reshape(h.shape)
        return (jnp.sum(nll), jnp.sum(correct)), (d_h, d_kernel.astype(kernel.dtype))

    @jax.custom_vjp
    def nll_and_correct(h, kernel, t, m):
        return forward(h, kernel, t, m)[0]

    def fwd(h, kernel, t, m):
        out, grads = forward(h, kernel, t, m)
        return out, (grads, t, m)

    def bwd(res, cotangents):
        (d_h, d_kernel), t, m = res
        g = cotangents[0]
        float0 = np.zeros(t.shape, dtype=jax.dtypes.float0)
        return (g * d_h).astype(d_h.dtype), (g * d_kernel).astype(d_kernel.dtype), float0, jnp.zeros_like(m)

    nll_and_correct.defvjp(fwd, bwd)
    nll_sum, correct = nll_and_correct(h, head_kernel, t, m)
    num_tokens = jnp.sum(m)
    loss = nll_sum / jnp.maximum(num_tokens, 1.0)
    return loss, {"nll_sum": nll_sum, "num_tokens": num_tokens, "correct": jax.lax.stop_gradient(correct)}
