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
With a completion window ``W`` (DPO asks for one: ``completion_window``), ``completion_index`` [2B, W] also
holds each row's completion target slots, so the loss can send only those through the LM head.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from jaxpt.data.sft import Batch, EpochIterator, load_records
from jaxpt.data.tokenizer import as_assistant_messages, encode_chat_completion, encode_prompt, is_messages

Pair = dict[str, np.ndarray]  # prompt_ids, chosen_ids, rejected_ids (int32)

REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")


def check_columns(columns: Sequence[str]) -> None:
    """Fails with the found and expected columns unless all of prompt/chosen/rejected are present."""
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(
            f"preference data needs columns {list(REQUIRED_COLUMNS)}; missing {missing}, "
            f"found {sorted(columns)}"
        )


def _is_empty(completion: Any) -> bool:
    if isinstance(completion, str):
        return not completion.strip()
    if isinstance(completion, list | tuple):
        return not completion or all(not str(m.get("content", "")).strip() for m in completion)
    return completion is None


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
        raise ValueError(f"max_prompt_length ({max_prompt_length}) must be < max_length ({max_length})")
    prompt = example["prompt"]
    completions = {}
    for key in ("chosen", "rejected"):
        if _is_empty(example[key]):
            raise ValueError(f"{where}: empty '{key}' completion")
    if is_messages(prompt):
        prompt_ids = None
        for key in ("chosen", "rejected"):
            prompt_ids, completions[key] = encode_chat_completion(tokenizer, list(prompt), example[key])
    elif isinstance(prompt, str):
        if tokenizer.eos_token_id is None:
            raise ValueError("tokenizer has no eos token; completions need one to learn where to stop")
        prompt_ids = encode_prompt(tokenizer, prompt, chat=False)
        for key in ("chosen", "rejected"):
            text = "".join(m["content"] for m in as_assistant_messages(example[key]))
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            completions[key] = list(ids) + [int(tokenizer.eos_token_id)]
    else:
        raise ValueError(
            f"{where}: 'prompt' must be a string or a list of messages, got {type(prompt).__name__}"
        )

    if max_prompt_length is not None:
        prompt_ids = prompt_ids[len(prompt_ids) - min(len(prompt_ids), max_prompt_length) :]
    prompt_ids = prompt_ids[
        max(0, len(prompt_ids) - (max_length - 1)) :
    ]  # leave room for one completion token
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
    if len(records) == 0:
        raise ValueError("preference dataset is empty")
    check_columns(records.column_names if hasattr(records, "column_names") else list(records[0]))
    return [
        tokenize_pair(r, tokenizer, max_length, max_prompt_length, max_completion_length, index=i)
        for i, r in enumerate(records)
    ]


ROW_PREFIX = "row_"  # pair[f"row_{name}"] = [chosen value, rejected value] -> batch[name] [2B] float32


def completion_window(pairs: Sequence[Pair], seq_len: int) -> int:
    """The most completion targets any row of ``pairs`` keeps in a ``seq_len`` batch (a static bound).

    A row of prompt ``p`` and completion ``c`` tokens keeps ``min(p + c, seq_len + 1)`` tokens, whose targets
    from slot ``max(p, 1) - 1`` on are completion tokens.
    """
    def kept(prompt: np.ndarray, completion: np.ndarray) -> int:
        return max(0, min(len(prompt) + len(completion), seq_len + 1) - max(len(prompt), 1))

    return max((kept(p["prompt_ids"], p[k]) for p in pairs for k in ("chosen_ids", "rejected_ids")), default=0)


def build_preference_batch(pairs: Sequence[Pair], seq_len: int, pad_id: int = 0, window: int = 0) -> Batch:
    """``[2B, seq_len]`` batch: chosen rows (prompt + chosen) then rejected rows, right-padded.

    Sequences longer than ``seq_len + 1`` tokens are cut from the right (size ``max_length <= seq_len + 1``
    to avoid it). ``completion_lengths`` counts completion targets kept in the loss per row (int32). Per-pair
    values stored as ``pair["row_<name>"] = [chosen, rejected]`` (margins, cached reference log-probs) become
    ``batch["<name>"]``, ``[2B]`` float32 in the same row order. ``window > 0`` (at least
    ``completion_window(pairs, seq_len)``) adds ``completion_index`` ``[2B, window]``: the slot of each row's
    ``j``-th completion target (valid for ``j < completion_lengths``; later entries repeat a valid slot).
    """
    seqs = [(p["prompt_ids"], p["chosen_ids"]) for p in pairs] + [
        (p["prompt_ids"], p["rejected_ids"]) for p in pairs
    ]
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
    if window:
        if batch["completion_lengths"].max(initial=0) > window:
            raise ValueError(f"completion window {window} < {batch['completion_lengths'].max()} completion targets")
        start = np.asarray([max(len(prompt), 1) - 1 for prompt, _ in seqs])[:, None]
        batch["completion_index"] = np.minimum(start + np.arange(window), seq_len - 1).astype(np.int32)
    for key in pairs[0]:
        if key.startswith(ROW_PREFIX):
            values = np.stack([p[key] for p in pairs]).astype(np.float32)  # [B, 2]
            batch[key[len(ROW_PREFIX) :]] = np.concatenate([values[:, 0], values[:, 1]])
    return batch


def empty_pair(like: Pair) -> Pair:
    """A padding pair: all-padding rows (``completion_lengths`` 0, so losses can mask it out)."""
    out = {k: np.zeros(0, np.int32) for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
    out.update({k: np.zeros(2, np.float32) for k in like if k.startswith(ROW_PREFIX)})
    return out


def useful_window(pairs: Sequence[Pair], seq_len: int) -> int:
    """``completion_window`` when it is shorter than ``seq_len`` (else 0: no window, every slot counts)."""
    window = completion_window(pairs, seq_len)
    return window if 0 < window < seq_len else 0


def fixed_preference_batches(
    pairs: Sequence[Pair], batch_size: int, seq_len: int, pad_id: int, completion_index: bool = False
) -> list[Batch]:
    """One in-order pass (eval, precomputation); the last batch is filled with padding pairs.
    ``completion_index``: add the completion window of all ``pairs`` (one shape for every batch)."""
    pairs = list(pairs)
    window = useful_window(pairs, seq_len) if completion_index else 0
    pairs += [empty_pair(pairs[0]) for _ in range(-len(pairs) % batch_size)]
    return [
        build_preference_batch(pairs[i : i + batch_size], seq_len, pad_id, window)
        for i in range(0, len(pairs), batch_size)
    ]


class PreferenceDataIterator(EpochIterator):
    """Infinite ``[2 * batch_size, seq_len]`` preference batches; same shuffle/state contract as SFT.
    ``completion_index``: batches carry the completion window of the whole dataset (one static shape)."""

    def __init__(
        self,
        pairs: Sequence[Pair],
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        shuffle: bool = True,
        pad_id: int = 0,
        completion_index: bool = False,
    ):
        super().__init__(len(pairs), batch_size, seed, shuffle)
        self.pairs, self.seq_len, self.pad_id = list(pairs), seq_len, pad_id
        self.window = useful_window(self.pairs, seq_len) if completion_index else 0

    def _layout(self, epoch: int) -> list[int]:
        return [int(i) for i in self._order(epoch)]

    def __next__(self) -> Batch:
        return build_preference_batch([self.pairs[i] for i in self._take()], self.seq_len, self.pad_id, self.window)
