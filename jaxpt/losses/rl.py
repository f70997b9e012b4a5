"""RL losses for RLHF: whitening, GAE, PPO policy / value losses, KL-shaped rewards, adaptive KL, GRPO.

The interchangeable parts are small registries (name -> function), as the config names them:
``KL_ESTIMATORS`` (``k1``, ``k3``), ``ADVANTAGE_ESTIMATORS`` (group-relative: ``grpo``, ``dr_grpo``, ``rloo``)
and ``LOSS_AGGREGATIONS`` (how GRPO-style token losses become one number: ``grpo``, ``dapo``, ``dr_grpo``);
``register_advantage_estimator`` adds one without touching the algorithms.

Token tensors are ``[B, T]`` over the completion (response) positions, with a float ``mask`` that is 1 on
response tokens and 0 on padding (responses are right-padded; leading zeros, e.g. prompt slots, are fine too).
Log-probs are of the sampled tokens (``jaxpt.losses.lm.token_logprobs``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxpt.losses.lm import masked_mean, masked_sum

Array = jax.Array

# KL(pi || ref) per token from log_ratio = log pi - log ref: k1 (the log-ratio itself, as the RLHF papers) or
# k3 (exp(-log_ratio) + log_ratio - 1, Schulman 2020: unbiased and always >= 0).
KL_ESTIMATORS: dict[str, Callable[[Array], Array]] = {
    "k1": lambda log_ratio: log_ratio,
    "k3": lambda log_ratio: jnp.expm1(-log_ratio) + log_ratio,
}


def kl_estimate(log_ratio: Array, estimator: str) -> Array:
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown kl_estimator {estimator!r}; valid: {', '.join(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[estimator](log_ratio)


def whiten(x: Array, mask: Array, shift_mean: bool = True, eps: float = 1e-8) -> Array:
    """Masked whitening ``(x - mean) / sqrt(var + eps)`` over all masked entries (TRL ``masked_whiten``).

    As in Huang et al. 2022 ("The N implementation details of RLHF with PPO"): the variance is the unbiased
    (Bessel-corrected) masked variance; ``shift_mean=False`` adds the mean back (used for rewards, so only
    their scale changes). Entries where ``mask == 0`` are returned as 0.
    """
    x = x.astype(jnp.float32)
    mean = masked_mean(x, mask)
    n = jnp.sum(mask.astype(jnp.float32))
    var = masked_mean((x - mean) ** 2, mask) * n / jnp.maximum(n - 1.0, 1.0)
    out = (x - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return jnp.where(mask != 0, out, 0.0)


def gae(rewards: Array, values: Array, mask: Array, gamma: float, lam: float) -> tuple[Array, Array]:
    """Generalised advantage estimation (Schulman et al. 2016), ``[B, T] -> (advantages, returns)``.

    ``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = delta_t + gamma lam A_{t+1}``, with ``V`` and ``A`` past
    the last response token taken as 0 (the episode ends there); computed by a reverse ``lax.scan``. Returns
    ``A`` and ``R = A + V``, both zeroed where ``mask == 0``. Advantages are not whitened (see ``whiten``).
    """
    f32 = jnp.float32
    mask = mask.astype(f32)
    rewards = rewards.astype(f32) * mask
    values = values.astype(f32) * mask
    # Value / continuation flag of the next position (0 beyond the end of the row).
    next_values = jnp.concatenate([values[:, 1:], jnp.zeros_like(values[:, :1])], axis=1)
    next_mask = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1)
    deltas = rewards + gamma * next_values - values

    def step(next_adv: Array, xs: tuple[Array, Array]) -> tuple[Array, Array]:
        delta, cont = xs
        adv = delta + gamma * lam * cont * next_adv
        return adv, adv

    _, adv = jax.lax.scan(step, jnp.zeros_like(deltas[:, 0]), (deltas.T, next_mask.T), reverse=True)
    advantages = adv.T * mask
    returns = (advantages + values) * mask
    return advantages, returns


def ppo_policy_loss(
    logprobs: Array, old_logprobs: Array, advantages: Array, mask: Array, clip_eps: float
) -> tuple[Array, dict[str, Array]]:
    """PPO clipped surrogate (Schulman et al. 2017, Eq. 7), as a loss to minimise (token-level masked mean).

    ``L = mean_t max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps))``, ``rho_t = exp(logp_t - old_t)``.
    Metrics: ``clipfrac`` (fraction of tokens where the clipped term is active) and
    ``approx_kl = 0.5 mean((logp - old)^2)`` (the k2 estimator of KL(old || new), as TRL's PPO trainer).
    """
    log_ratio = logprobs.astype(jnp.float32) - old_logprobs.astype(jnp.float32)
    ratio = jnp.exp(log_ratio)
    pg1 = -advantages * ratio
    pg2 = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(jnp.maximum(pg1, pg2), mask)
    metrics = {
        "clipfrac": masked_mean((pg2 > pg1).astype(jnp.float32), mask),
        "approx_kl": masked_mean(0.5 * log_ratio**2, mask),
    }
    return loss, jax.lax.stop_gradient(metrics)


def ppo_value_loss(
    values: Array, old_values: Array, returns: Array, mask: Array, clip_range: float
) -> tuple[Array, dict[str, Array]]:
    """Clipped value loss (Huang et al. 2022; OpenAI baselines): ``0.5 mean max((v - R)^2, (v_clip - R)^2)``.

    ``v_clip = clip(v, v_old - c, v_old + c)``. Metric ``vf_clipfrac``: fraction of tokens where the clipped
    term is the larger one.
    """
    values = values.astype(jnp.float32)
    v_clipped = jnp.clip(values, old_values - clip_range, old_values + clip_range)
    loss1 = (values - returns) ** 2
    loss2 = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(jnp.maximum(loss1, loss2), mask)
    metrics = {"vf_clipfrac": masked_mean((loss2 > loss1).astype(jnp.float32), mask)}
    return loss, jax.lax.stop_gradient(metrics)


def last_token_index(mask: Array) -> Array:
    """Index of the last position with ``mask != 0`` in each row, ``[B, T] -> [B]`` (0 for an empty row)."""
    t = mask.shape[-1]
    idx = jnp.arange(t)
    return jnp.max(jnp.where(mask != 0, idx, 0), axis=-1)


def kl_penalty_rewards(
    score: Array,
    logprobs: Array,
    ref_logprobs: Array,
    mask: Array,
    kl_coef: float | Array,
    kl_estimator: str = "k1",
) -> tuple[Array, Array]:
    """KL-shaped token rewards of RLHF (Ziegler et al. 2019; Ouyang et al. 2022): ``r_t = -kl_coef * kl_t``
    plus the sequence ``score [B]`` at the last response token of each row.

    ``kl_t`` is ``logp - ref_logp`` (``k1``, the default, as in the papers) or
    ``exp(ref_logp - logp) - (ref_logp - logp) - 1`` (``k3``, Schulman 2020, always >= 0).
    Returns ``(rewards, kl)``, both ``[B, T]``, zero where ``mask == 0`` (rows with no tokens get no score).
    """
    kl = kl_estimate(logprobs.astype(jnp.float32) - ref_logprobs.astype(jnp.float32), kl_estimator)
    mask = mask.astype(jnp.float32)
    kl = jnp.where(mask != 0, kl, 0.0)
    rewards = -kl_coef * kl
    has_tokens = jnp.any(mask != 0, axis=-1)
    last = jax.nn.one_hot(last_token_index(mask), mask.shape[-1], dtype=jnp.float32)
    rewards = rewards + last * jnp.where(has_tokens, score.astype(jnp.float32), 0.0)[:, None]
    return rewards, kl


def update_kl_coef(
    coef: float | Array, current_kl: float | Array, n_steps: int | Array, target: float, horizon: float
) -> Array:
    """Adaptive KL coefficient (Ziegler et al. 2019): ``e = clip(KL / target - 1, -0.2, 0.2)``,
    ``beta <- beta (1 + K_beta e)`` with ``K_beta = n_steps / horizon`` (TRL's ``AdaptiveKLController``)."""
    error = jnp.clip(jnp.asarray(current_kl, jnp.float32) / target - 1.0, -0.2, 0.2)
    return jnp.asarray(coef, jnp.float32) * (1.0 + error * n_steps / horizon)


def grpo_advantages(rewards: Array, group_size: int, scale_rewards: bool = True, eps: float = 1e-4) -> Array:
    """Group-relative advantages (GRPO, Shao et al. 2024): ``(r - mean_g) / (std_g + eps)`` per group.

    ``rewards`` is ``[B * G]`` (groups contiguous) or ``[B, G]``; the output has the same shape. ``std_g`` is
    the unbiased sample std (as TRL). ``scale_rewards=False`` is Dr. GRPO (Liu et al. 2025): ``r - mean_g``
    only.
    """
    r = rewards.astype(jnp.float32).reshape(-1, group_size)
    adv = r - jnp.mean(r, axis=1, keepdims=True)
    if scale_rewards:
        adv = adv / (jnp.std(r, axis=1, keepdims=True, ddof=1) + eps)
    return adv.reshape(rewards.shape)


def rloo_advantages(rewards: Array, group_size: int) -> Array:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024): ``r_i - mean_{j != i} r_j`` per
    group, i.e. ``G / (G - 1) * (r_i - mean_g)``; same shapes as :func:`grpo_advantages`."""
    r = rewards.astype(jnp.float32).reshape(-1, group_size)
    baseline = (jnp.sum(r, axis=1, keepdims=True) - r) / (group_size - 1)
    return (r - baseline).reshape(rewards.shape)


# Group-relative advantage estimators: (rewards [R] with groups contiguous, group size) -> advantages [R].
ADVANTAGE_ESTIMATORS: dict[str, Callable[[Array, int], Array]] = {
    "grpo": functools.partial(grpo_advantages, scale_rewards=True),
    "dr_grpo": functools.partial(grpo_advantages, scale_rewards=False),
    "rloo": rloo_advantages,
}


def register_advantage_estimator(name: str):
    """Decorator: ``@register_advantage_estimator("mine") def fn(rewards, group_size) -> advantages``."""

    def wrap(fn: Callable[[Array, int], Array]) -> Callable[[Array, int], Array]:
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return wrap


def _sequence_mean(per_token: Array, mask: Array, max_len: int) -> Array:
    seq = masked_sum(per_token, mask, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
    return jnp.mean(seq)


def _token_mean(per_token: Array, mask: Array, max_len: int) -> Array:
    return masked_sum(per_token, mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _constant_normaliser(per_token: Array, mask: Array, max_len: int) -> Array:
    return masked_sum(per_token, mask) / (mask.shape[0] * max_len)


# How a [B, T] token loss becomes the loss: (per_token, mask, max_completion_length) -> scalar.
LOSS_AGGREGATIONS: dict[str, Callable[[Array, Array, int], Array]] = {
    "grpo": _sequence_mean,  # mean over each sequence's tokens, then over sequences (Shao et al. 2024)
    "dapo": _token_mean,  # over all tokens (Yu et al. 2025)
    "dr_grpo": _constant_normaliser,  # sum / (B * max_completion_length) (Liu et al. 2025)
}
GRPO_LOSS_TYPES = tuple(LOSS_AGGREGATIONS)


def grpo_loss(
    logprobs: Array,
    old_logprobs: Array | None,
    ref_logprobs: Array | None,
    advantages: Array,
    mask: Array,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    beta: float = 0.0,
    loss_type: str = "grpo",
    max_completion_length: int | None = None,
) -> tuple[Array, dict[str, Array]]:
    """GRPO policy loss (Shao et al. 2024) with its aggregation variants; returns ``(loss, metrics)``.

    Per token, ``rho = exp(logp - old)`` and
    ``l_t = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) + beta * kl_t`` with the k3 estimator
    ``kl_t = exp(ref - logp) - (ref - logp) - 1`` (skipped when ``beta == 0``; ``ref_logprobs`` may then be
    None). ``old_logprobs=None`` means on-policy (``old = stop_gradient(logp)``). ``advantages`` is ``[B]``.
    Decoupled ``eps_low``/``eps_high`` ("clip-higher") is from DAPO (Yu et al. 2025). Aggregation:

    - ``grpo``: mean over each sequence's tokens, then mean over sequences (Shao et al. 2024).
    - ``dapo``: token-level, sum over all tokens / number of tokens (Yu et al. 2025).
    - ``dr_grpo``: sum over all tokens / (B * max_completion_length) (Liu et al. 2025); the length defaults
      to the mask width ``T``.

    Metrics: ``clip_ratio/low`` (rho < 1 - eps_low with A < 0), ``clip_ratio/high`` (rho > 1 + eps_high with
    A > 0), ``clip_ratio`` (either), token means; ``kl`` (token-mean k3 KL, 0 when ``beta == 0``).
    """
    if loss_type not in LOSS_AGGREGATIONS:
        raise ValueError(f"unknown loss_type {loss_type!r}; valid: {', '.join(LOSS_AGGREGATIONS)}")
    f32 = jnp.float32
    mask = mask.astype(f32)
    logprobs = logprobs.astype(f32)
    old = jax.lax.stop_gradient(logprobs) if old_logprobs is None else old_logprobs.astype(f32)
    adv = advantages.astype(f32)[:, None]
    ratio = jnp.exp(logprobs - old)
    clipped = jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    per_token = -jnp.minimum(ratio * adv, clipped * adv)
    kl = jnp.zeros_like(per_token)
    if beta != 0.0:
        if ref_logprobs is None:
            raise ValueError("grpo_loss with beta != 0 needs ref_logprobs")
        kl = KL_ESTIMATORS["k3"](logprobs - ref_logprobs.astype(f32))
        per_token = per_token + beta * kl
    length = mask.shape[-1] if max_completion_length is None else max_completion_length
    loss = LOSS_AGGREGATIONS[loss_type](per_token, mask, length)

    low = ((ratio < 1.0 - epsilon_low) & (adv < 0)).astype(f32)
    high = ((ratio > 1.0 + epsilon_high) & (adv > 0)).astype(f32)
    metrics = {
        "clip_ratio/low": masked_mean(low, mask),
        "clip_ratio/high": masked_mean(high, mask),
        "clip_ratio": masked_mean(jnp.maximum(low, high), mask),
        "kl": masked_mean(kl, mask),
    }
    return loss, jax.lax.stop_gradient(metrics)
