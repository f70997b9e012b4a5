"""The sampler: jit-compiled prefill plus a ``lax.while_loop`` decode over a preallocated KV cache.

Prompts are left-padded so every row's last prompt token sits in the same slot; each decode step feeds one
token per row at the next slot. Rows stop independently at EOS (later tokens are padding, excluded by the
returned mask) and the loop ends when all rows are done or ``max_new_tokens`` is reached.

Params are an argument of the jitted function, never captured: whatever weights the caller passes (e.g. the
policy just updated by PPO/GRPO) are the ones sampled from.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxpt.errors import UserError
from jaxpt.models.config import ModelConfig
from jaxpt.models.decoder import Decoder, init_cache, positions_from_mask

Array = jax.Array

# What each sampling field accepts (NaN fails every test, so it is refused too).
_SAMPLING_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "max_new_tokens": (lambda v: v >= 1, ">= 1"),
    "temperature": (lambda v: v >= 0, ">= 0 (0 is greedy)"),
    "top_k": (lambda v: v >= 0, ">= 0 (0 turns top-k off)"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1] (1 turns top-p off)"),
}


def check_sampling(values: Mapping[str, float], label: Callable[[str], str] = str) -> None:
    """A :class:`UserError` naming the first sampling field out of range and its value; ``label`` spells the
    field as the user wrote it (``--max-new-tokens``, ``rollout.top_p``), so callers check before any work."""
    for name, value in values.items():
        ok, expected = _SAMPLING_RANGES[name]
        if not ok(value):
            raise UserError(f"{label(name)}={value}: must be {expected}")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """``temperature == 0`` is greedy. ``top_k == 0`` and ``top_p == 1`` disable those filters."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0

    def __post_init__(self):
        check_sampling({name: getattr(self, name) for name in _SAMPLING_RANGES})


class Generation(NamedTuple):
    tokens: Array  # [B, N] generated tokens (pad after EOS)
    logprobs: Array  # [B, N] log p(token) under the temperature-scaled, unfiltered distribution
    lengths: Array  # [B] generated tokens per row, EOS included
    mask: Array  # [B, N] 1 on generated tokens, 0 after EOS
    finished: Array  # [B] bool: the row ended with an EOS token (was not cut at max_new_tokens)


def filter_logits(logits: Array, top_k: int = 0, top_p: float = 1.0) -> Array:
    """Top-k then top-p (nucleus) filtering; removed entries become -inf. At least one token always stays.

    Top-p keeps the smallest set of highest-probability tokens whose mass reaches ``top_p`` (ties at the
    threshold are kept), as in Holtzman et al. 2020 and transformers' TopPLogitsWarper.
    """
    neg_inf = jnp.finfo(logits.dtype).min
    if top_k:
        kth = lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
        logits = jnp.where(logits < kth, neg_inf, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_logits.astype(jnp.float32), axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep = jnp.maximum(jnp.sum(mass_before < top_p, axis=-1, keepdims=True), 1)
        threshold = jnp.take_along_axis(sorted_logits, keep - 1, axis=-1)
        logits = jnp.where(logits < threshold, neg_inf, logits)
    return logits


def sample_token(logits: Array, uniform: Array, sampling: SamplingConfig) -> tuple[Array, Array]:
    """One token per row and its log-prob under the temperature-scaled (unfiltered) distribution.

    Sampling inverts the CDF with one uniform in [0, 1) per row (``uniform`` [B]): exact, and much cheaper
    on CPU than Gumbel noise over the whole vocabulary.
    """
    logits = logits.astype(jnp.float32)
    rows = jnp.arange(logits.shape[0])
    if sampling.temperature == 0:
        token = jnp.argmax(logits, axis=-1)
        logp = logits[rows, token] - jax.nn.logsumexp(logits, axis=-1)
        return token, logp
    logits = logits / sampling.temperature
    # One exp pass serves both the sampling weights and the normaliser of the reported log-prob: the
    # filters only drop entries (never the maximum), so the kept weights are a subset of exp(logits - max).
    top = jnp.max(logits, axis=-1, keepdims=True)
    weights = jnp.exp(logits - top)
    log_z = top[:, 0] + jnp.log(jnp.sum(weights, axis=-1))
    if sampling.top_k or sampling.top_p < 1.0:
        kept = filter_logits(logits, sampling.top_k, sampling.top_p) > jnp.finfo(jnp.float32).min
        weights = jnp.where(kept, weights, 0.0)
    token = _invert_cdf(weights, uniform)
    logp = logits[rows, token] - log_z
    return token, logp


def _invert_cdf(weights: Array, uniform: Array, block: int = 128) -> Array:
    """Index ``i`` with ``cdf[i-1] <= u * total < cdf[i]`` per row, for unnormalised ``weights`` [B, V].

    Two levels (the block, then the token inside it): a cumulative sum over the whole vocabulary is a
    serial scan that cost ~0.25 ms per decode step on CPU; block sums and two short scans do not.
    """
    b, v = weights.shape
    nb = -(-v // block)
    blocks = jnp.pad(weights, ((0, 0), (0, nb * block - v))).reshape(b, nb, block)
    block_cdf = jnp.cumsum(jnp.sum(blocks, axis=-1), axis=-1)  # [B, nb]
    u = uniform * block_cdf[:, -1]
    j = jnp.minimum(jnp.sum(block_cdf <= u[:, None], axis=-1), nb - 1)
    rows = jnp.arange(b)
    before = jnp.where(j > 0, block_cdf[rows, jnp.maximum(j - 1, 0)], 0.0)
    inner_cdf = jnp.cumsum(blocks[rows, j], axis=-1)  # [B, block]
    i = jnp.minimum(jnp.sum(inner_cdf <= (u - before)[:, None], axis=-1), block - 1)
    return jnp.minimum(j * block + i, v - 1)


@functools.partial(jax.jit, static_argnames=("config", "sampling"))
def generate(
    config: ModelConfig,
    params: dict[str, Any],
    prompt_tokens: Array,
    prompt_mask: Array,
    rng: Array,
    sampling: SamplingConfig,
) -> Generation:
    """Samples up to ``sampling.max_new_tokens`` tokens for a left-padded prompt batch [B, P]."""
    model = Decoder(config)
    b, p = prompt_tokens.shape
    n = sampling.max_new_tokens
    prompt_mask = prompt_mask.astype(jnp.int32)
    positions = positions_from_mask(prompt_mask)
    cache = init_cache(config, b, p + n - 1)  # the last new token is never fed back
    logits, cache = model.apply(
        {"params": params}, prompt_tokens, positions, prompt_mask, cache=cache, cache_index=0, last_logits_only=True
    )
    eos = jnp.asarray(sampling.eos_token_ids or (-1,), jnp.int32)
    uniforms = jax.random.uniform(rng, (n, b))  # drawn up front: no PRNG work inside the decode loop

    def emit(step, logits, out, done, lengths):
        """Samples column ``step`` from ``logits``; rows already done emit padding."""
        token, logp = sample_token(logits, uniforms[step], sampling)
        token = jnp.where(done, sampling.pad_token_id, token).astype(jnp.int32)
        logp = jnp.where(done, 0.0, logp)
        tokens, logps = out
        out = (
            lax.dynamic_update_slice(tokens, token[:, None], (0, step)),
            lax.dynamic_update_slice(logps, logp[:, None], (0, step)),
        )
        return token, out, done | jnp.isin(token, eos), lengths + (~done).astype(jnp.int32)

    # The loop samples a token and feeds it back; the last token is sampled after it, with no forward pass
    # whose logits nobody would read.
    def cond(state):
        step, done = state[0], state[5]
        return (step < n - 1) & ~jnp.all(done)

    def body(state):
        step, last_logits, cache, pos, out, done, lengths = state
        segment = (~done).astype(jnp.int32)[:, None]
        token, out, done, lengths = emit(step, last_logits, out, done, lengths)
        logits, cache = model.apply(
            {"params": params}, token[:, None], pos[:, None], segment, cache=cache, cache_index=p + step
        )
        return step + 1, logits[:, -1], cache, pos + 1, out, done, lengths

    state = (
        jnp.int32(0),
        logits[:, -1],
        cache,
        positions[:, -1] + 1,
        (jnp.full((b, n), sampling.pad_token_id, jnp.int32), jnp.zeros((b, n), jnp.float32)),
        jnp.zeros((b,), bool),
        jnp.zeros((b,), jnp.int32),
    )
    step, last_logits, _, _, out, done, lengths = lax.while_loop(cond, body, state)
    _, (tokens, logprobs), done, lengths = emit(step, last_logits, out, done, lengths)
    mask = (jnp.arange(n)[None, :] < lengths[:, None]).astype(jnp.int32)
    return Generation(tokens, logprobs, lengths, mask, done)
