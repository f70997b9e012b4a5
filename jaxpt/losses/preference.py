"""Preference losses: Bradley-Terry reward models and the DPO family (DPO/cDPO, rDPO, IPO, SLiC, SimPO, ORPO).

Inputs are per-sequence *summed* completion log-probs ``[B]`` (``jaxpt.models.logprobs.sequence_logprobs``) of the
policy and, for the reference-based losses, the frozen reference model. Length-normalised losses (SimPO, ORPO,
optionally IPO) also take the completion lengths ``|y|`` (number of loss tokens, ``loss_mask.sum(-1)``).
Everything is a batch mean; metrics are stop-gradient batch means.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

DPO_LOSS_TYPES = ("sigmoid", "robust", "ipo", "hinge", "simpo", "orpo")
_REFERENCE_FREE = ("simpo", "orpo")
_LENGTH_NORMALISED = ("simpo", "orpo")


def _reward_metrics(chosen_rewards: Array, rejected_rewards: Array) -> dict[str, Array]:
    chosen_rewards = jax.lax.stop_gradient(chosen_rewards)
    rejected_rewards = jax.lax.stop_gradient(rejected_rewards)
    return {
        "rewards/chosen": jnp.mean(chosen_rewards),
        "rewards/rejected": jnp.mean(rejected_rewards),
        "rewards/accuracy": jnp.mean((chosen_rewards > rejected_rewards).astype(jnp.float32)),
        "rewards/margin": jnp.mean(chosen_rewards - rejected_rewards),
    }


def bradley_terry_loss(
    chosen_rewards: Array,
    rejected_rewards: Array,
    margin: Array | None = None,
    center_coef: float = 0.0,
) -> tuple[Array, dict[str, Array]]:
    """Bradley-Terry reward-model loss, ``mean(-log sigmoid(r_c - r_r - margin)) + c * mean((r_c + r_r)^2)``.

    Pairwise ranking loss of InstructGPT (Ouyang et al. 2022, Eq. 1), with the optional per-pair ``margin`` of
    Llama 2 (Touvron et al. 2023, Eq. 2) and the reward-centering auxiliary term of Eisenstein et al. 2023
    ("Helping or Herding?"), as TRL's RewardTrainer ``center_rewards_coefficient``.
    Metrics: ``rewards/{chosen,rejected,accuracy,margin}`` (accuracy = fraction with ``r_c > r_r``).
    """
    chosen_rewards = chosen_rewards.astype(jnp.float32)
    rejected_rewards = rejected_rewards.astype(jnp.float32)
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin.astype(jnp.float32)
    loss = jnp.mean(-jax.nn.log_sigmoid(diff))
    if center_coef:
        loss = loss + center_coef * jnp.mean((chosen_rewards + rejected_rewards) ** 2)
    return loss, _reward_metrics(chosen_rewards, rejected_rewards)


def _log1mexp(x: Array) -> Array:
    """``log(1 - exp(x))`` for ``x <= 0``, stable at both ends (Maechler 2012); nan-free gradients."""
    near_zero = x > -jnp.log(2.0)
    a = jnp.where(near_zero, x, -1.0)
    b = jnp.where(near_zero, -1.0, x)
    return jnp.where(near_zero, jnp.log(-jnp.expm1(a)), jnp.log1p(-jnp.exp(b)))


def dpo_loss(
    policy_chosen_logps: Array,
    policy_rejected_logps: Array,
    ref_chosen_logps: Array | None = None,
    ref_rejected_logps: Array | None = None,
    *,
    loss_type: str,
    beta: float,
    label_smoothing: float = 0.0,
    chosen_lengths: Array | None = None,
    rejected_lengths: Array | None = None,
    simpo_gamma: float = 1.0,
    ipo_length_normalize: bool = False,
    orpo_include_nll: bool = True,
) -> tuple[Array, dict[str, Array]]:
    """The DPO family of pairwise preference losses; returns ``(mean loss, metrics)``.

    With ``h = (pi_c - ref_c) - (pi_r - ref_r)`` (summed log-probs) and ``ls = log sigmoid``:

    - ``sigmoid``: DPO (Rafailov et al. 2023, Eq. 7), ``-ls(beta h)``; with ``label_smoothing = eps`` the
      conservative cDPO (Mitchell 2023): ``-(1 - eps) ls(beta h) - eps ls(-beta h)``.
    - ``robust``: rDPO (Chowdhury et al. 2024, unbiased under label-flip rate ``eps < 1/2``):
      ``(-(1 - eps) ls(beta h) + eps ls(-beta h)) / (1 - 2 eps)``, as TRL's ``robust``.
    - ``ipo``: IPO (Azar et al. 2023, Eq. 17, ``tau = beta``): ``(h - 1 / (2 beta))^2`` with ``h`` from
      *summed* log-probs as in the paper. ``ipo_length_normalize=True`` divides every log-prob by its length
      first (what TRL does for IPO); it needs both lengths.
    - ``hinge``: SLiC-HF calibration loss (Zhao et al. 2023), ``relu(1 - beta h)``, i.e. margin
      ``delta = 1/beta`` (up to a 1/beta scale); ``h`` is reference-normalised as in RSO (Liu et al. 2023)
      and TRL.
    - ``simpo``: SimPO (Meng et al. 2024), reference-free:
      ``-ls(beta pi_c / |y_c| - beta pi_r / |y_r| - gamma)``; ``simpo_gamma`` is the paper's absolute margin
      ``gamma`` (TRL's ``gamma_beta_ratio`` is ``gamma / beta``).
    - ``orpo``: ORPO (Hong et al. 2024), reference-free, ``beta`` is the paper's ``lambda``. With
      length-averaged log-probs ``a = pi / |y|`` and ``log odds(y) = a - log(1 - exp(a))``:
      ``L = L_SFT + beta * -ls(log odds(y_c) - log odds(y_r))``. The SFT term ``L_SFT = -pi_c / |y_c|`` (the
      paper's length-averaged NLL of the chosen answer) IS INCLUDED unless ``orpo_include_nll=False`` (then
      the caller adds its own NLL term).

    SimPO and ORPO need ``chosen_lengths`` / ``rejected_lengths`` and ignore the reference log-probs (may be
    None); the others need the reference log-probs. ``label_smoothing`` is only valid for sigmoid / robust.

    Metrics (stop-gradient batch means): ``rewards/chosen = beta (pi_c - ref_c)``, ``rewards/rejected``,
    ``rewards/accuracy`` (fraction with chosen > rejected reward), ``rewards/margin``, ``logps/chosen``,
    ``logps/rejected`` (summed policy log-probs). For the reference-free losses the implicit reward is
    ``beta * pi / |y|`` (as in TRL); ORPO adds ``orpo/nll`` and ``orpo/log_odds_ratio``.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; valid: {', '.join(DPO_LOSS_TYPES)}")
    if label_smoothing and loss_type not in ("sigmoid", "robust"):
        raise ValueError(f"label_smoothing is only defined for sigmoid / robust, not {loss_type!r}")
    if loss_type == "robust" and not 0.0 <= label_smoothing < 0.5:
        raise ValueError("robust DPO needs 0 <= label_smoothing < 0.5")
    needs_lengths = loss_type in _LENGTH_NORMALISED or (loss_type == "ipo" and ipo_length_normalize)
    if needs_lengths and (chosen_lengths is None or rejected_lengths is None):
        raise ValueError(f"{loss_type!r} needs chosen_lengths and rejected_lengths")
    if loss_type not in _REFERENCE_FREE and (ref_chosen_logps is None or ref_rejected_logps is None):
        raise ValueError(f"{loss_type!r} needs ref_chosen_logps and ref_rejected_logps")

    f32 = jnp.float32
    pi_c = policy_chosen_logps.astype(f32)
    pi_r = policy_rejected_logps.astype(f32)
    metrics: dict[str, Array] = {}

    if loss_type in _REFERENCE_FREE:
        len_c = jnp.maximum(chosen_lengths.astype(f32), 1.0)
        len_r = jnp.maximum(rejected_lengths.astype(f32), 1.0)
        avg_c, avg_r = pi_c / len_c, pi_r / len_r
        chosen_rewards, rejected_rewards = beta * avg_c, beta * avg_r
        if loss_type == "simpo":
            losses = -jax.nn.log_sigmoid(beta * avg_c - beta * avg_r - simpo_gamma)
        else:  # orpo
            log_odds_ratio = (avg_c - _log1mexp(avg_c)) - (avg_r - _log1mexp(avg_r))
            nll = -avg_c
            losses = beta * -jax.nn.log_sigmoid(log_odds_ratio)
            if orpo_include_nll:
                losses = losses + nll
            metrics["orpo/nll"] = jax.lax.stop_gradient(jnp.mean(nll))
            metrics["orpo/log_odds_ratio"] = jax.lax.stop_gradient(jnp.mean(log_odds_ratio))
    else:
        ref_c = ref_chosen_logps.astype(f32)
        ref_r = ref_rejected_logps.astype(f32)
        chosen_rewards, rejected_rewards = beta * (pi_c - ref_c), beta * (pi_r - ref_r)
        if loss_type == "ipo" and ipo_length_normalize:
            len_c = jnp.maximum(chosen_lengths.astype(f32), 1.0)
            len_r = jnp.maximum(rejected_lengths.astype(f32), 1.0)
            h = (pi_c - ref_c) / len_c - (pi_r - ref_r) / len_r
        else:
            h = (pi_c - ref_c) - (pi_r - ref_r)
        eps = label_smoothing
        if loss_type == "sigmoid":
            losses = -(1.0 - eps) * jax.nn.log_sigmoid(beta * h) - eps * jax.nn.log_sigmoid(-beta * h)
        elif loss_type == "robust":
            losses = (-(1.0 - eps) * jax.nn.log_sigmoid(beta * h) + eps * jax.nn.log_sigmoid(-beta * h)) / (
                1.0 - 2.0 * eps
            )
        elif loss_type == "ipo":
            losses = (h - 1.0 / (2.0 * beta)) ** 2
        else:  # hinge
            losses = jax.nn.relu(1.0 - beta * h)

    metrics.update(_reward_metrics(chosen_rewards, rejected_rewards))
    metrics["logps/chosen"] = jax.lax.stop_gradient(jnp.mean(pi_c))
    metrics["logps/rejected"] = jax.lax.stop_gradient(jnp.mean(pi_r))
    return jnp.mean(losses), metrics
