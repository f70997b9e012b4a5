"""Checks of a training run's inputs that take seconds, run by ``jaxpt train`` before it touches the workdir or
builds the model: a bad data path, an empty file, a missing column or a sequence longer than the model's positions
fails at once with a message naming the config field, instead of after minutes of set-up (and without leaving
behind a workdir that the corrected command would then refuse to overwrite).
"""

from __future__ import annotations

from ml_collections import ConfigDict

from jaxpt.algorithms.common.rollout import check_prompt_column, rollout_config
from jaxpt.data.preference import check_columns
from jaxpt.data.sft import detect_format, load_records
from jaxpt.errors import UserError
from jaxpt.models.config import ModelConfig

__all__ = ["check_data", "check_lengths"]

_PAIRWISE = ("rm", "dpo")
_ONLINE = ("ppo", "grpo")
_SOURCES = "a .jsonl/.json/.parquet/.csv file, a glob of them or a save_to_disk directory"


def check_data(config: ConfigDict) -> None:
    """``data.train`` (required) and ``data.eval`` (when set) exist, hold records and have the columns
    ``config.algorithm`` reads. ``config`` is resolved (read through its algorithm's defaults)."""
    d = config.data
    for field in ("train", "eval"):
        source = d.get(field, "")
        if not source:
            if field == "train":
                raise UserError(f"data.train is not set: pass --config.data.train=PATH ({_SOURCES})")
            continue
        split = d.eval_split if field == "eval" and "eval_split" in d else "train"  # as the algorithm loads it
        try:
            records = load_records(source, split)
        except UserError as e:
            raise type(e)(f"data.{field}: {e}") from None
        where = f"data.{field}={source!r}"
        if len(records) == 0:
            raise UserError(f"{where} holds no records")
        columns = list(records.column_names)
        if config.algorithm in _PAIRWISE:
            check_columns(columns, where)
        elif config.algorithm in _ONLINE:
            check_prompt_column(columns, d.prompt_key, where)
        else:
            detect_format(columns, where)


def check_lengths(config: ConfigDict, model_config: ModelConfig) -> None:
    """The sequences the run feeds the model fit its positions (:meth:`ModelConfig.check_positions`: an error
    for learned position embeddings, a warning for RoPE past what its scaling covers); an online run's
    ``rollout`` section is checked whole first (sampling fields in range)."""
    limit = model_config.position_limit
    seq_len = int(config.data.seq_len)
    if config.algorithm in _ONLINE:
        r = rollout_config(config)
        p, n = int(r.max_prompt_len), int(r.max_new_tokens)
        model_config.check_positions(  # the last sampled token is never fed back
            p + n - 1,
            f"rollout.max_prompt_len={p} + rollout.max_new_tokens={n}",
            f"lower them so that max_prompt_len + max_new_tokens <= {limit + 1}",
        )
        if not config.data.eval:
            return  # data.seq_len only sizes the eval rows
    model_config.check_positions(seq_len, f"data.seq_len={seq_len}", f"set --config.data.seq_len to at most {limit}")
