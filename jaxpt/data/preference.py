"""Preference data (``{prompt, chosen, rejected}``) for reward models and DPO.

``prompt`` is a string or a list of chat messages; ``chosen`` / ``rejected`` are strings or lists of
assistant messages. The shared prompt is tokenised once: with the chat template and its generation prompt when
the prompt is a conversation (completions then end with the template's end-of-turn tokens), otherwise as plain
text after the tokenizer's special prefix (completions then end with EOS).

Truncation, in order: the prompt keeps its last ``max_prompt_length`` tokens (the end is what the answer
follows), completions keep their first ``max_completion_length`` tokens, and if prompt + completion still
exceeds ``max_length`` the completion is cut from the right to fit.

Batches stack chosen rows first, then rejected rows: ``[2B, seq_len]``, right-padded, one segment per row,
``loss_mask`` on completion targets only, plus ``completion_lengths`` [2B] (completion tokens in the loss).

DPO and reward models use the *shared-prompt* layout instead (``build_shared_prompt_batch``): each pair's
prompt once, left-padded ``prompt_tokens`` [B, P], and its completions as ``completion_tokens`` [2B, C]
(chosen rows first), with ``completion_mask`` on completion targets and the same ``completion_lengths``;
``P`` and ``C`` are the longest kept prompt and completion of the whole dataset (one static shape). The rows
keep exactly the tokens the flat layout keeps.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from jaxpt.data.iterators import EpochIterator
from jaxpt.data.sft import Batch, load_records
from jaxpt.data.tokenizer import encode_prompt_completion, is_messages
from jaxpt.errors import UserError

Pair = dict[str, np.ndarray]  # prompt_ids, chosen_ids, rejected_ids (int32)

REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")


def check_columns(columns: Sequence[str], where: str = "") -> None:
    """Fails with the found and expected columns unless all of prompt/chosen/rejected are present (``where``,
    e.g. the file, starts the message)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        prefix = f"{where}: " if where else ""
        raise UserError(
            f"{prefix}preference data needs columns {list(REQUIRED_COLUMNS)}; missing {missing}, "
            f"found {sorted(columns)}"
        )


def _is_empty(completion: Any) -> bool:
    if isinstance(completion, str):
        return not completion.strip()
    if isinstance(completion, list | tuple):
        return not completion or all(not str(m.get("content", "")).strip() for m in completion)
    return completion is None


def encode_scored(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | list[dict[str, Any]],
    completion: str,
    max_length: int,
    finished: bool = True,
    chat: bool = False,
) -> list[int]:
    """``prompt + completion`` token ids as a reward model reads them: written as :func:`tokenize_pair` writes
    the pairs it learns on, cut differently when too long.

    A conversation (or, with ``chat=True``, a string prompt wrapped as one user message) goes through the chat
    template and the completion ends with the template's end-of-turn tokens; a plain-text prompt follows the
    tokenizer's special prefix and the completion ends with EOS. A completion that did not finish (cut at
    ``max_new_tokens``) gets neither: it is scored as the unfinished text it is. Over ``max_length`` tokens the
    *beginning* is dropped (training pairs keep the prompt's end and cut the completion's), because the score is
    read at the last token, which must be the completion's end. Every scorer (RL rewards, ``jaxpt eval``, data
    generation) tokenises through here, so one text gets one score.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    prompt_ids, completion_ids = encode_prompt_completion(tokenizer, prompt, completion, chat, finished)
    return (list(prompt_ids) + list(completion_ids))[-max_length:]


def tokenize_pair(
    example: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
    index: int | None = None,
) -> Pair:
    """One ``{prompt, chosen, rejected}`` record -> int32 ``prompt_ids``, ``chosen_ids``, ``rejected_ids``."""
    where = f"row {index}" if index is not None else "example"
    check_columns(list(example))
    if max_prompt_length is not None and max_prompt_length >= max_length:
        raise UserError(f"max_prompt_length ({max_prompt_length}) must be < max_length ({max_length})")
    prompt = example["prompt"]
    completions = {}
    for key in ("chosen", "rejected"):
        if _is_empty(example[key]):
            raise UserError(f"{where}: empty '{key}' completion")
    if not (is_messages(prompt) or isinstance(prompt, str)):
        raise UserError(f"{where}: 'prompt' must be a string or a list of messages, got {type(prompt).__name__}")
    for key in ("chosen", "rejected"):
        prompt_ids, completions[key] = encode_prompt_completion(tokenizer, prompt, example[key])

    if max_prompt_length is not None:
        prompt_ids = prompt_ids[len(prompt_ids) - min(len(prompt_ids), max_prompt_length) :]
    prompt_ids = prompt_ids[max(0, len(prompt_ids) - (max_length - 1)) :]  # leave room for one completion token
    budget = max_length - len(prompt_ids)
    if max_completion_length is not None:
        budget = min(budget, max_completion_length)
    return {
        "prompt_ids": np.asarray(prompt_ids, np.int32),
        "chosen_ids": np.asarray(completions["chosen"][:budget], np.int32),
        "rejected_ids": np.asarray(completions["rejected"][:budget], np.int32),
    }


def build_preference_dataset(
    source: str | Sequence[dict[str, Any]] | Any,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
    split: str = "train",
    cache_dir: str | None = None,
) -> list[Pair]:
    """Loads (path, list of dicts or ``datasets.Dataset``) and tokenises preference pairs."""
    records = load_records(source, split, cache_dir) if isinstance(source, str | os.PathLike) else source
    where = repr(os.fspath(source)) if isinstance(source, str | os.PathLike) else "<in memory>"
    if len(records) == 0:
        raise UserError(f"preference dataset {where} is empty")
    check_columns(records.column_names if hasattr(records, "column_names") else list(records[0]), where)
    return [
        tokenize_pair(r, tokenizer, max_length, max_prompt_length, max_completion_length, index=i)
        for i, r in enumerate(records)
    ]


ROW_PREFIX = "row_"  # pair[f"row_{name}"] = [chosen value, rejected value] -> batch[name] [2B] float32


def build_preference_batch(pairs: Sequence[Pair], seq_len: int, pad_id: int = 0) -> Batch:
    """``[2B, seq_len]`` batch: chosen rows (prompt + chosen) then rejected rows, right-padded.

    Sequences longer than ``seq_len + 1`` tokens are cut from the right (size ``max_length <= seq_len + 1``
    to avoid it). ``completion_lengths`` counts completion targets kept in the loss per row (int32). Per-pair
    values stored as ``pair["row_<name>"] = [chosen, rejected]`` (margins, cached reference log-probs) become
    ``batch["<name>"]``, ``[2B]`` float32 in the same row order.
    """
    seqs = [(p["prompt_ids"], p["chosen_ids"]) for p in pairs] + [(p["prompt_ids"], p["rejected_ids"]) for p in pairs]
    n_rows = len(seqs)
    batch = {
        "inputs": np.full((n_rows, seq_len), pad_id, np.int32),
        "targets": np.full((n_rows, seq_len), pad_id, np.int32),
        "loss_mask": np.zeros((n_rows, seq_len), np.float32),
        "positions": np.zeros((n_rows, seq_len), np.int32),
        "segment_ids": np.zeros((n_rows, seq_len), np.int32),
    }
    for r, (prompt, completion) in enumerate(seqs):
        tokens = np.concatenate([prompt, completion])[: seq_len + 1]
        mask = np.concatenate([np.zeros(len(prompt), np.float32), np.ones(len(completion), np.float32)])
        n = len(tokens) - 1
        if n < 1:
            continue
        batch["inputs"][r, :n] = tokens[:-1]
        batch["targets"][r, :n] = tokens[1:]
        batch["loss_mask"][r, :n] = mask[1 : n + 1]
        batch["positions"][r, :n] = np.arange(n)
        batch["segment_ids"][r, :n] = 1
    batch["completion_lengths"] = batch["loss_mask"].sum(axis=1).astype(np.int32)
    _add_row_values(batch, pairs)
    return batch


def _add_row_values(batch: Batch, pairs: Sequence[Pair]) -> None:
    for key in pairs[0]:
        if key.startswith(ROW_PREFIX):
            values = np.stack([p[key] for p in pairs]).astype(np.float32)  # [B, 2]
            batch[key[len(ROW_PREFIX) :]] = np.concatenate([values[:, 0], values[:, 1]])


def _kept(pair: Pair, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prompt, chosen, rejected as the flat layout keeps them: ``prompt + completion`` cut to ``seq_len + 1``."""
    prompt = pair["prompt_ids"][: seq_len + 1]
    room = seq_len + 1 - len(prompt)
    return prompt, pair["chosen_ids"][:room], pair["rejected_ids"][:room]


def shared_prompt_shape(pairs: Sequence[Pair], seq_len: int) -> tuple[int, int]:
    """``(P, C)``: the longest kept prompt and completion of ``pairs`` (each at least 1)."""
    kept = [_kept(p, seq_len) for p in pairs]
    return max([1, *(len(k[0]) for k in kept)]), max([1, *(max(len(k[1]), len(k[2])) for k in kept)])


def build_shared_prompt_batch(pairs: Sequence[Pair], seq_len: int, shape: tuple[int, int], pad_id: int = 0) -> Batch:
    """Shared-prompt layout (module docstring) for ``shape = (P, C)`` from ``shared_prompt_shape``.

    ``prompt_tokens`` / ``prompt_mask`` [B, P] left-padded; ``completion_tokens`` /
    ``completion_segment_ids`` (1 on kept tokens) / ``completion_mask`` [2B, C] right-padded (the mask is on
    completion tokens that are predicted, i.e. all of them unless the prompt is empty, when nothing predicts
    the first); ``completion_lengths`` [2B] and per-pair row values as in
    ``build_preference_batch``. The last prompt position predicts each completion's first token.
    """
    p_len, c_len = shape
    b = len(pairs)
    batch = {
        "prompt_tokens": np.full((b, p_len), pad_id, np.int32),
        "prompt_mask": np.zeros((b, p_len), np.int32),
        "completion_tokens": np.full((2 * b, c_len), pad_id, np.int32),
        "completion_mask": np.zeros((2 * b, c_len), np.float32),
        "completion_segment_ids": np.zeros((2 * b, c_len), np.int32),
    }
    for i, pair in enumerate(pairs):
        prompt, chosen, rejected = _kept(pair, seq_len)
        if len(prompt) > p_len or max(len(chosen), len(rejected)) > c_len:
            raise ValueError(f"pair {i} does not fit the shared-prompt shape {shape}")
        if len(prompt):
            batch["prompt_tokens"][i, p_len - len(prompt) :] = prompt
            batch["prompt_mask"][i, p_len - len(prompt) :] = 1
        for r, completion in ((i, chosen), (b + i, rejected)):
            batch["completion_tokens"][r, : len(completion)] = completion
            batch["completion_mask"][r, : len(completion)] = 1
            batch["completion_segment_ids"][r, : len(completion)] = 1
            if not len(prompt):
                batch["completion_mask"][r, :1] = 0
    batch["completion_lengths"] = batch["completion_mask"].sum(axis=1).astype(np.int32)
    _add_row_values(batch, pairs)
    return batch


def empty_pair(like: Pair) -> Pair:
    """A padding pair: all-padding rows (``completion_lengths`` 0, so losses can mask it out)."""
    out = {k: np.zeros(0, np.int32) for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
    out.update({k: np.zeros(2, np.float32) for k in like if k.startswith(ROW_PREFIX)})
    return out


def fixed_preference_batches(
    pairs: Sequence[Pair], batch_size: int, seq_len: int, pad_id: int, shared_prompt: bool = False
) -> list[Batch]:
    """One in-order pass (eval, precomputation); the last batch is filled with padding pairs.
    ``shared_prompt``: the shared-prompt layout, one shape for all of ``pairs``."""
    pairs = list(pairs)
    shape = shared_prompt_shape(pairs, seq_len) if shared_prompt else None
    pairs += [empty_pair(pairs[0]) for _ in range(-len(pairs) % batch_size)]
    chunks = [pairs[i : i + batch_size] for i in range(0, len(pairs), batch_size)]
    if shared_prompt:
        return [build_shared_prompt_batch(c, seq_len, shape, pad_id) for c in chunks]
    return [build_preference_batch(c, seq_len, pad_id) for c in chunks]


class PreferenceDataIterator(EpochIterator):
    """Infinite ``[2 * batch_size, seq_len]`` preference batches; same shuffle/state contract as SFT.
    ``shared_prompt``: the shared-prompt layout instead, shaped once for the whole dataset."""

    def __init__(
        self,
        pairs: Sequence[Pair],
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        shuffle: bool = True,
        pad_id: int = 0,
        shared_prompt: bool = False,
    ):
        super().__init__(len(pairs), batch_size, seed, shuffle)
        self.pairs, self.seq_len, self.pad_id = list(pairs), seq_len, pad_id
        self.shape = shared_prompt_shape(self.pairs, seq_len) if shared_prompt else None

    def _layout(self, epoch: int) -> list[int]:
        return [int(i) for i in self._order(epoch)]

    def __next__(self) -> Batch:
        pairs = [self.pairs[i] for i in self._take()]
        if self.shape:
            return build_shared_prompt_batch(pairs, self.seq_len, self.shape, self.pad_id)
        return build_preference_batch(pairs, self.seq_len, self.pad_id)
