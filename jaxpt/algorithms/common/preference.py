"""Preference-pair plumbing the reward model and DPO share: the data tokenizer, tokenised pairs with per-row
float extras (a margin, cached reference log-probs), the validity mask of padding pairs and pair-mean metrics."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from jaxpt.data.preference import ROW_PREFIX, Pair, build_preference_dataset, build_shared_prompt_batch
from jaxpt.data.sft import load_records
from jaxpt.data.tokenizer import load_tokenizer
from jaxpt.errors import UserError
from jaxpt.models.config import ModelConfig


def preference_data_defaults() -> ConfigDict:
    """The ``data`` section of the pairwise algorithms (reward model, DPO)."""
    return ConfigDict(
        dict(
            train="",  # prompt / chosen / rejected records (JSONL, Parquet, a save_to_disk dir)
            eval="",  # '' = no eval
            eval_split="test",  # only used when eval is a save_to_disk DatasetDict
            seq_len=128,  # tokens of prompt + completion per row
            max_prompt_length=0,  # 0 = no separate limit
            max_completion_length=0,
            chat=False,  # True: string prompts go through the chat template as one user turn
        )
    )


def has_tokenizer(directory: str) -> bool:
    return bool(directory) and os.path.exists(os.path.join(directory, "tokenizer_config.json"))


def preference_tokenizer(config: ConfigDict, tokenizer: Any, model_config: ModelConfig) -> Any:
    """The tokenizer to encode data with: the model dir's own when ``tokenizer.path`` is unset and it has one.

    (The loop builds ``tokenizer.builtin`` otherwise; for the char tokenizer both are the same.)
    """
    if not config.tokenizer.path and has_tokenizer(config.model.path):
        tokenizer = load_tokenizer(config.model.path)
    if len(tokenizer) > model_config.vocab_size:
        raise UserError(
            f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {model_config.vocab_size}; "
            "set --config.tokenizer.path to the model's tokenizer"
        )
    return tokenizer


def load_pairs(
    source: str | Sequence[dict],
    tokenizer: Any,
    data: ConfigDict,
    extra_columns: Sequence[str] = (),
    split: str = "train",
) -> list[Pair]:
    """Tokenised pairs; each column of ``extra_columns`` present in the data becomes ``row_<column>``."""
    records = load_records(source, split) if isinstance(source, str | os.PathLike) else source
    rows = [dict(r) for r in records]
    if data.chat:  # plain-text prompts as one user turn, like SFT's ``chat=True``
        for r in rows:
            if isinstance(r.get("prompt"), str):
                r["prompt"] = [{"role": "user", "content": r["prompt"]}]
    seq_len = data.seq_len
    pairs = build_preference_dataset(
        rows,
        tokenizer,
        max_length=seq_len + 1,  # n tokens fill n - 1 slots of an already-shifted row
        max_prompt_length=data.max_prompt_length or None,
        max_completion_length=data.max_completion_length or None,
    )
    for column in extra_columns:
        if column and rows and column in rows[0]:
            for pair, r in zip(pairs, rows, strict=True):
                v = float(r[column])
                pair[ROW_PREFIX + column] = np.asarray([v, v], np.float32)
    return pairs


def pair_valid(batch: dict[str, jax.Array]) -> jax.Array:
    """``[B]`` float32: 1 for real pairs (both completions have loss tokens), 0 for padding pairs."""
    lengths = batch["completion_lengths"]
    b = lengths.shape[0] // 2
    return ((lengths[:b] > 0) & (lengths[b:] > 0)).astype(jnp.float32)


def masked_sums(values: dict[str, jax.Array], valid: jax.Array) -> dict[str, jax.Array]:
    """Sums over real pairs (``where``, not a product: a padding pair's value may be inf / nan)."""
    return {k: jnp.sum(jnp.where(valid > 0, v, 0.0)) for k, v in values.items()}


def masked_means(values: dict[str, jax.Array], valid: jax.Array) -> dict[str, jax.Array]:
    n = jnp.maximum(jnp.sum(valid), 1.0)
    return {k: v / n for k, v in masked_sums(values, valid).items()}


def summarize_pairs(totals: dict[str, float]) -> dict[str, float]:
    """Sums over pairs -> means (``pairs`` holds the count of real pairs)."""
    n = max(totals.get("pairs", 0.0), 1.0)
    return {k: v / n for k, v in totals.items() if k != "pairs"}


def check_batch_layout(config: ConfigDict) -> None:
    b, n = config.train.batch_size, config.train.grad_accum_steps
    if b % n:
        # Strided micro-batches keep pair i's chosen (row i) and rejected (row B + i) rows together only if
        # B is a multiple of the number of micro-batches.
        raise UserError(f"train.batch_size ({b} pairs) must be divisible by train.grad_accum_steps ({n})")


def planned_pair_batch(config: ConfigDict) -> tuple[dict[str, np.ndarray], str]:
    """A shared-prompt batch of ``train.batch_size`` empty pairs shaped from the config alone, and its layout in
    words (``jaxpt plan``). Training shapes its batches by the data's longest kept prompt and completion; with
    no data the plan takes ``data.max_prompt_length`` / ``data.max_completion_length`` when set, else half of
    ``data.seq_len`` each."""
    d, b = config.data, config.train.batch_size
    p_len = int(d.max_prompt_length) or d.seq_len // 2
    c_len = int(d.max_completion_length) or d.seq_len + 1 - p_len
    empty = {k: np.zeros(0, np.int32) for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
    batch = build_shared_prompt_batch([empty] * b, d.seq_len, (p_len, c_len))
    return batch, f"{b} pairs: prompt {p_len} + 2 x {c_len} completion tokens"
