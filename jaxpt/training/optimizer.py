"""Optimizer from config: optax AdamW with warmup + cosine/linear/constant decay and global-norm clipping, masked
to the trainable parameters (``train.trainable`` / ``train.frozen``, ``jaxpt/training/trainable.py``)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict


def make_schedule(cfg: ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup to ``cfg.lr`` then ``cfg.schedule`` decay to ``cfg.lr * cfg.end_lr_factor``."""
    warmup = min(int(cfg.warmup_steps), max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    end = cfg.lr * cfg.end_lr_factor
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.end_lr_factor)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(cfg.lr, end, decay_steps)
    elif cfg.schedule == "constant":
        decay = optax.constant_schedule(cfg.lr)
    else:
        raise ValueError(f"optimizer.schedule={cfg.schedule!r}; expected cosine, linear or constant")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), decay], [warmup])


def _decay_mask(params: Any) -> Any:
    """Weight decay on weight matrices and embeddings only (never norms or biases), as is standard for LMs.

    Decided by name, not rank, so it also holds for layer-stacked (scanned) params.
    """

    def decays(path, _):
        names = [k.key for k in path if hasattr(k, "key")]  # skips the ``value`` attr of logical boxes
        return bool(names) and names[-1] in ("kernel", "embedding")

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(
    cfg: ConfigDict, total_steps: int, trainable: Any = None
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer and its schedule. ``trainable`` (a mask from ``jaxpt.training.trainable``; None: all train)
    wraps it in ``optax.masked``: no state (no Adam moments) for frozen leaves, gradient clipping by the norm of
    the trainable gradients only. The train step (``make_train_step``, same mask) passes no frozen gradients."""
    schedule = make_schedule(cfg, total_steps)
    parts = []
    if cfg.grad_clip_norm:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    # mu_dtype: the first moment may be stored in bfloat16 (2 bytes a parameter less, as MaxText's ``mu_dtype``);
    # the second is not offered: bf16's 8-bit mantissa cannot hold b2 = 0.95-0.999 decays (nu * b2 rounds to nu).
    if cfg.mu_dtype not in ("", "float32", "bfloat16"):
        raise ValueError(
            f"optimizer.mu_dtype={cfg.mu_dtype!r}; expected '' (the parameters' dtype), float32 or bfloat16"
        )
    mu_dtype = jnp.dtype(cfg.mu_dtype) if cfg.mu_dtype else None
    parts.append(
        optax.adamw(
            schedule,
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=_decay_mask,
            mu_dtype=mu_dtype,
        )
    )
    tx = optax.chain(*parts)
    return (tx if trainable is None else optax.masked(tx, trainable)), schedule


def optimizer_config(**overrides: Any) -> ConfigDict:
    """Defaults shared by every algorithm's config."""
    cfg = ConfigDict(
        dict(
            lr=3e-4,
            schedule="cosine",
            warmup_steps=10,
            end_lr_factor=0.1,
            b1=0.9,
            b2=0.95,
            eps=1e-8,
            weight_decay=0.0,
            grad_clip_norm=1.0,
            mu_dtype="",  # Adam's first moment: "" = the parameters' dtype, or "bfloat16" (memory policy)
        )
    )
    cfg.update(overrides)
    return cfg
