"""Running the model for training and scoring: one module that every algorithm calls.

It owns three things that would otherwise be repeated per algorithm:

* **the batch layouts** (docs/architecture.md): flat rows (``inputs`` / ``targets`` / ``positions`` /
  ``segment_ids`` with a ``loss_mask``; RL rows ``[prompt | completion]`` with a ``response_mask`` and the
  prompt length) and the shared-prompt layout (``prompt_tokens`` / ``prompt_mask`` once per prompt,
  ``completion_tokens`` / ``completion_segment_ids`` run on the prompt's KV cache). ``hidden_states`` turns
  either into the final hidden states of the scored positions, their targets and mask;
* **auxiliary losses** that layers ``sow`` into the ``"aux_loss"`` collection (e.g. a future MoE
  load-balancing loss): ``decoder_forward`` is the one decoder apply of training and scoring, and it sums
  what was sown (zero for today's dense models);
* **the vocabulary projection's memory**: ``head_logprobs`` runs it over blocks of ``chunk_size`` tokens,
  each rematerialised in the backward pass, so no ``[N, T, V]`` float32 logits exist once a batch is bigger
  than one block; a batch of one block gets plain logits (no recomputation: the fast path of small batches).

On top: SFT's NLL (``lm_loss``; its training path keeps ``fused_cross_entropy``, whose gradient is made in the
forward pass), summed completion log-probs (``sequence_logprobs``, DPO), per-token log-probs with entropy
(``batch_logprobs``, RL) and a reward model's pooled states (``last_token_states``). Logit soft-capping
(``ModelConfig.final_logit_softcapping``) is applied by ``jaxpt.models.matmul.softcap`` everywhere logits are made.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxpt.losses.lm import (
    chunked_cross_entropy,
    cross_entropy_loss,
    fused_cross_entropy,
    masked_sum,
    token_entropy,
    token_logprobs,
)
from jaxpt.models.config import ModelConfig
from jaxpt.models.decoder import Cache, Decoder, head_kernel, init_cache, positions_from_mask
from jaxpt.models.matmul import softcap, vocab_logits
from jaxpt.models.reward import last_token_value

Array = jax.Array
Batch = dict[str, Array]

AUX_LOSS = "aux_loss"  # the collection layers sow auxiliary losses into


class Hidden(NamedTuple):
    """A batch's scored positions: ``states [N, T, E]`` (the final hidden state that predicts each target),
    ``targets [N, T]``, ``mask [N, T]`` (1 where the target is scored) and ``aux_loss`` (a scalar)."""

    states: Array
    targets: Array
    mask: Array
    aux_loss: Array


class HeadLogprobs(NamedTuple):
    """Per-token results of the vocabulary projection: ``logprobs [N, T]`` of the targets, float32; with
    ``entropy`` the next-token distribution's entropy ``[N, T]``; with ``top_k`` the ``k`` most likely tokens'
    log-probs and ids ``[N, T, k]`` (a teacher's, for logit distillation). Fields not asked for are None."""

    logprobs: Array
    entropy: Array | None = None
    top_logprobs: Array | None = None
    top_ids: Array | None = None


# ------------------------------------------------------------------------------------------ the forward
def decoder_forward(
    config: ModelConfig,
    params: Any,
    tokens: Array,
    positions: Array,
    segment_ids: Array,
    cache: Cache | None = None,
    cache_index: Array | int | None = None,
) -> tuple[Array, Cache | None, Array]:
    """``(final hidden states [B, T, E], updated cache, aux_loss)``: the decoder applied with the
    ``"aux_loss"`` collection mutable, so whatever its layers sow there is collected and summed here."""
    (hidden, new_cache), sown = Decoder(config).apply(
        {"params": params},
        tokens,
        positions,
        segment_ids,
        cache=cache,
        cache_index=cache_index,
        return_hidden=True,
        mutable=[AUX_LOSS],
    )
    aux = sum((jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(sown.get(AUX_LOSS, {}))), jnp.float32(0))
    return hidden, new_cache, aux


def shared_prompt_forward(config: ModelConfig, params: Any, batch: Batch) -> tuple[Array, Array, Array]:
    """``(prompt states [Np, P, E], completion states [R, C, E], aux_loss)`` for completions sharing prompts.

    ``batch["prompt_tokens"]`` / ``["prompt_mask"]`` ``[Np, P]`` left-padded; completion row ``r`` of
    ``["completion_tokens"]`` (``[R, C]``, right-padded, ``["completion_segment_ids"]`` 1 on its tokens)
    continues prompt ``r % Np`` (rows hold ``R / Np`` copies of the prompt list, one after the other: a layout
    that strided micro-batches keep, as they take prompts and rows ``m, m + n, ...``). Each prompt runs once:
    its forward fills a KV cache, whose rows are gathered for the completions, which run on top of it (the
    generation code path; gradients flow through the cached keys and values into the prompt). Equal to one
    forward over each ``prompt + completion`` row, at a fraction of the tokens (DPO and reward models: 2
    completions per prompt, GRPO: G).
    """
    prompt_tokens, prompt_mask = batch["prompt_tokens"], batch["prompt_mask"]
    completion_tokens, completion_segment_ids = batch["completion_tokens"], batch["completion_segment_ids"]
    p, c = prompt_tokens.shape[1], completion_tokens.shape[1]
    prompts, rows = prompt_tokens.shape[0], completion_tokens.shape[0]
    if rows % prompts:
        raise ValueError(f"{rows} completion rows are not a whole number of copies of {prompts} prompts")
    prompt_index = jnp.tile(jnp.arange(prompts), rows // prompts)
    cache = init_cache(config, prompts, p + c)
    prompt_hidden, cache, prompt_aux = decoder_forward(
        config, params, prompt_tokens, positions_from_mask(prompt_mask), prompt_mask, cache, 0
    )
    # the batch axis: first of segment ids [B, S], 4th from the end of keys / values [(L,) B, K, D|S, S|D]
    cache = jax.tree.map(lambda x: jnp.take(x, prompt_index, axis=x.ndim - 4 if x.ndim >= 4 else 0), cache)
    prompt_lengths = jnp.sum(prompt_mask, axis=1)[prompt_index][:, None]
    positions = (prompt_lengths + jnp.arange(c)[None, :]) * completion_segment_ids
    hidden, _, aux = decoder_forward(config, params, completion_tokens, positions, completion_segment_ids, cache, p)
    return prompt_hidden, hidden, prompt_aux + aux


def full_sequences(batch: Batch) -> tuple[Array, Array, Array]:
    """A flat batch's unshifted rows ``[N, T + 1]`` (tokens, positions, segment ids): ``inputs[:, :1]``
    followed by ``targets``, i.e. the whole prompt + completion."""
    tokens = jnp.concatenate([batch["inputs"][:, :1], batch["targets"]], axis=1)
    positions = jnp.concatenate([batch["positions"][:, :1], batch["positions"] + 1], axis=1)
    segments = jnp.concatenate([batch["segment_ids"][:, :1], batch["segment_ids"]], axis=1)
    return tokens, positions, segments


def hidden_states(config: ModelConfig, params: Any, batch: Batch, prompt_len: int | None = None) -> Hidden:
    """The states that predict a batch's scored targets, in any layout.

    - shared-prompt batches (``"prompt_tokens"`` in the batch): the completion tokens, each predicted by the
      state at the token before it (the prompt's last one for the first); mask ``completion_mask``
      (preference batches) or ``response_mask`` (RL rows);
    - flat batches with ``prompt_len`` (RL rows ``[prompt | completion]``): the completion positions
      ``prompt_len - 1 ...``, mask ``response_mask``;
    - other flat batches: every position, mask ``loss_mask`` on real (segment > 0) tokens.
    """
    if "prompt_tokens" in batch:
        prompt_hidden, hidden, aux = shared_prompt_forward(config, params, batch)
        last = jnp.tile(prompt_hidden[:, -1:], (hidden.shape[0] // prompt_hidden.shape[0], 1, 1))
        states = jnp.concatenate([last, hidden[:, :-1]], axis=1)
        mask = batch["completion_mask"] if "completion_mask" in batch else batch["response_mask"]
        return Hidden(states, batch["completion_tokens"], mask, aux)
    states, _, aux = decoder_forward(config, params, batch["inputs"], batch["positions"], batch["segment_ids"])
    if prompt_len is None:
        return Hidden(states, batch["targets"], batch["loss_mask"] * (batch["segment_ids"] > 0), aux)
    start = prompt_len - 1
    return Hidden(states[:, start:], batch["targets"][:, start:], batch["response_mask"], aux)


def last_token_states(config: ModelConfig, params: Any, batch: Batch) -> tuple[Array, Array]:
    """``(states [N, E], aux_loss)``: the final hidden state at each row's last real token of prompt +
    completion, where a reward model reads its score (HF's sequence-classification pooling). Flat batches run
    their whole rows (``full_sequences``), shared-prompt batches their completions on the prompt's cache."""
    if "prompt_tokens" in batch:
        _, states, aux = shared_prompt_forward(config, params, batch)
        segments = batch["completion_segment_ids"]
    else:
        tokens, positions, segments = full_sequences(batch)
        states, _, aux = decoder_forward(config, params, tokens, positions, segments)
    return last_token_value(states, segments), aux


# ------------------------------------------------------------------------------------ the vocabulary head
def head_logprobs(
    hidden: Array,
    kernel: Array,
    targets: Array,
    chunk_size: int = 0,
    *,
    temperature: float = 1.0,
    cap: float | None = None,
    entropy: bool = False,
    top_k: int = 0,
) -> HeadLogprobs:
    """Log-probs of ``targets [N, T]`` under ``softcap(hidden [N, T, E] @ kernel [E, V], cap) / temperature``.

    With ``0 < chunk_size < N * T`` the projection runs ``chunk_size`` tokens at a time (``lax.map`` over
    ``jax.checkpoint``-ed blocks, the last one padded): forward and backward hold one ``[chunk, V]`` block of
    logits, and entropy / top-k are reduced inside the block. Otherwise one block of plain logits.
    ``temperature`` is a Python float (the sampler's: RL log-probs are of its distribution).
    """

    def block(kernel: Array, h: Array, y: Array) -> HeadLogprobs:
        logits = softcap(vocab_logits(h, kernel), cap)
        if temperature != 1.0:
            logits = logits / temperature
        out = HeadLogprobs(token_logprobs(logits, y), token_entropy(logits) if entropy else None)
        if top_k:
            values, ids = jax.lax.top_k(logits, top_k)
            top = values - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
            out = out._replace(top_logprobs=top, top_ids=ids.astype(jnp.int32))
        return out

    shape, total = targets.shape, targets.size
    if not chunk_size or chunk_size >= total:
        return block(kernel, hidden, targets)
    n_blocks = -(-total // chunk_size)
    pad = n_blocks * chunk_size - total
    h = jnp.pad(hidden.reshape(total, hidden.shape[-1]), ((0, pad), (0, 0))).reshape(n_blocks, chunk_size, -1)
    y = jnp.pad(targets.reshape(total), (0, pad)).reshape(n_blocks, chunk_size)
    out = jax.lax.map(lambda xs: jax.checkpoint(block)(kernel, *xs), (h, y))
    return jax.tree.map(lambda x: x.reshape(total + pad, *x.shape[2:])[:total].reshape(*shape, *x.shape[2:]), out)


# ------------------------------------------------------------------------------------------- consumers
def batch_logprobs(
    config: ModelConfig,
    params: Any,
    batch: Batch,
    chunk_size: int = 0,
    *,
    prompt_len: int | None = None,
    temperature: float = 1.0,
    entropy: bool = False,
    top_k: int = 0,
) -> tuple[HeadLogprobs, Hidden]:
    """Per-token log-probs (and entropy / top-k when asked) of a batch's scored targets (``hidden_states``'s
    layouts), with the scored positions themselves (their ``mask`` and ``aux_loss``)."""
    h = hidden_states(config, params, batch, prompt_len)
    kernel = head_kernel(config, params)
    out = head_logprobs(
        h.states,
        kernel,
        h.targets,
        chunk_size,
        temperature=temperature,
        cap=config.final_logit_softcapping,
        entropy=entropy,
        top_k=top_k,
    )
    return out, h


def sequence_logprobs(config: ModelConfig, params: Any, batch: Batch, chunk_size: int = 0) -> Array:
    """``[N]`` float32 summed log-probs of each row's scored targets (a completion's ``log p(y | x)``, DPO)."""
    out, h = batch_logprobs(config, params, batch, chunk_size)
    return masked_sum(out.logprobs, h.mask, axis=-1)


def lm_loss(
    config: ModelConfig, params: Any, batch: Batch, chunk_size: int, train: bool = True
) -> tuple[Array, Array, Array]:
    """``(nll_sum, num_tokens, correct)`` of a flat batch's masked targets (SFT, and every likelihood eval).

    ``chunk_size`` below the batch's token count splits the vocabulary projection into blocks of that many
    tokens: for training, ``fused_cross_entropy`` (gradients made in the forward pass, no ``[B*T, V]``
    logits); for evaluation (``train=False``), ``chunked_cross_entropy`` (no gradient work). 0 or a block as
    big as the batch: plain logits, no recomputation in the backward pass.
    """
    h = hidden_states(config, params, batch)
    kernel = head_kernel(config, params)
    cap = config.final_logit_softcapping
    if not chunk_size or chunk_size >= h.mask.size:
        loss, aux = cross_entropy_loss(softcap(vocab_logits(h.states, kernel), cap), h.targets, h.mask)
    elif train:
        loss, aux = fused_cross_entropy(h.states, kernel, h.targets, h.mask, chunk_size, logit_softcap=cap)
    else:
        loss, aux = chunked_cross_entropy(h.states, kernel, h.targets, h.mask, chunk_size, logit_softcap=cap)
    num_tokens = aux["num_tokens"]
    return loss * jnp.maximum(num_tokens, 1.0), num_tokens, aux["correct"]
