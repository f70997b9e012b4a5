"""SFT data: loading local datasets, format detection, masking, packing and a resumable batch iterator.

Everything here is host-side numpy. A tokenised example is ``{"tokens": int32[n], "loss_mask": float32[n]}``
where ``loss_mask[j]`` says whether token ``j`` is something the model must learn to produce. Batches follow
docs/architecture.md: for an example ``x`` with mask ``m`` a row holds ``inputs = x[:-1]``,
``targets = x[1:]``, ``loss_mask = m[1:]``, ``positions = 0..n-2`` and one segment id per example
(``1, 2, ...`` within a row); the rest of the row is padding (segment 0, loss mask 0).
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from transformers import PreTrainedTokenizerBase

from jaxpt.data.iterators import EpochIterator
from jaxpt.data.tokenizer import (
    Messages,
    encode_prompt_completion,
    has_generation_markers,
    is_messages,
    render_chat,
    special_prefix,
)
from jaxpt.errors import PathNotFound, UserError

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)

Format = Literal["prompt_completion", "messages", "text"]
Example = dict[str, np.ndarray]
Batch = dict[str, np.ndarray]


def batch_tokens(batch: Batch, padded: bool = False) -> int:
    """Tokens a batch runs through the model (for tokens/s): real tokens of flat rows (``segment_ids > 0``),
    or of shared-prompt rows, each shared prompt once (``prompt_mask`` + ``completion_segment_ids``).
    ``padded``: every slot, real or padding (what a step compiled for the batch's shapes computes)."""
    if "prompt_tokens" in batch:
        if padded:
            return int(np.size(batch["prompt_tokens"]) + np.size(batch["completion_tokens"]))
        return int(np.sum(batch["prompt_mask"]) + np.sum(batch["completion_segment_ids"]))
    if padded:
        return int(np.size(batch["inputs"]))
    return int(np.sum(batch["segment_ids"] > 0))


_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
_EXPECTED = "'messages' (chat), 'prompt' + 'completion', or 'text'"


# ----------------------------------------------------------------------------------------------------------
# Loading and format detection.


def load_records(source: str, split: str = "train", cache_dir: str | None = None) -> datasets.Dataset:
    """Loads a local dataset as a ``datasets.Dataset`` (never from the hub).

    ``source`` is a JSON/JSONL/Parquet/CSV file or a glob of them (loaded with ``datasets.load_dataset``),
    or a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (``split`` picks the
    split of a ``DatasetDict``). A missing, empty or unreadable source is a :class:`UserError` naming the file
    (``datasets`` itself ends an empty file in a bare ``StopIteration``).
    """
    import datasets

    source = os.fspath(source)
    if os.path.isdir(source):
        if not any(os.path.exists(os.path.join(source, f)) for f in ("state.json", "dataset_dict.json")):
            raise UserError(
                f"{source!r} is a directory but not one written by save_to_disk (no state.json or "
                "dataset_dict.json); pass a data file or a glob such as 'dir/*.jsonl' instead"
            )
        loaded = datasets.load_from_disk(source)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise UserError(f"split {split!r} not in {source!r}; available: {sorted(loaded)}")
            loaded = loaded[split]
        return loaded
    files = sorted(glob.glob(source)) if glob.has_magic(source) else ([source] if os.path.isfile(source) else [])
    if not files:
        raise PathNotFound(
            f"no dataset found at {source!r} (expected a local .jsonl/.json/.parquet/.csv file, a glob of them "
            "or a save_to_disk directory)"
        )
    exts = {os.path.splitext(f)[1].lower() for f in files}
    unknown = exts - set(_BUILDERS)
    if unknown or len({_BUILDERS[e] for e in exts}) != 1:
        raise UserError(
            f"cannot load {source!r}: files must share one format among {sorted(_BUILDERS)}, found {sorted(exts)}"
        )
    builder = _BUILDERS[exts.pop()]
    for f in files:
        if builder != "parquet" and _is_blank(f):
            raise UserError(f"data file {f!r} is empty; it needs at least one record")
    try:
        return datasets.load_dataset(builder, data_files={split: files}, split=split, cache_dir=cache_dir)
    except datasets.exceptions.DatasetGenerationError as e:
        reason = " ".join(str(e.__cause__ or e).split())
        raise UserError(f"cannot read {source!r} as {builder}: {reason}") from e


def _is_blank(path: str, chunk: int = 1 << 16) -> bool:
    """Whether a text file holds nothing but whitespace (reads only up to its first other byte)."""
    with open(path, "rb") as f:
        while block := f.read(chunk):
            if block.strip():
                return False
    return True


def detect_format(columns: Sequence[str], where: str = "") -> Format:
    """Which SFT format a dataset's columns hold; 'messages' wins over 'prompt'/'completion' over 'text'.
    ``where`` (e.g. the file) starts the error message, so it says which data lacks the columns."""
    cols = set(columns)
    if "messages" in cols:
        return "messages"
    if {"prompt", "completion"} <= cols:
        return "prompt_completion"
    if "text" in cols:
        return "text"
    hint = ""
    if {"chosen", "rejected"} & cols:
        hint = " (this looks like preference data: use jaxpt.data.preference)"
    elif "prompt" in cols or "completion" in cols:
        hint = " ('prompt' and 'completion' must both be present)"
    prefix = f"{where}: " if where else ""
    raise UserError(f"{prefix}unrecognised SFT data: found columns {sorted(cols)}, expected {_EXPECTED}{hint}")


# ----------------------------------------------------------------------------------------------------------
# Tokenisation and masks.


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _eos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no eos token; SFT sequences need one to learn where to stop")
    return int(tokenizer.eos_token_id)


def _end_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    specials = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    specials.update(t for t in (tokenizer.eos_token,) if t)
    return sorted(specials, key=len, reverse=True)


def _search_span(text: str, content: str, cursor: int, tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """Fallback for templates whose prefixes don't render consistently: find the content in the text, plus
    the special end-of-turn token right after it (``<|eot_id|>``, ``<|im_end|>``, EOS) if there is one."""
    for needle in (content, content.strip()):
        start = text.find(needle, cursor)
        if start >= 0:
            end = start + len(needle)
            for tok in _end_tokens(tokenizer):
                if text.startswith(tok, end):
                    end += len(tok)
                    break
            return start, end
    raise ValueError(f"cannot locate assistant content {content[:40]!r} in the rendered chat")


def assistant_char_spans(
    tokenizer: PreTrainedTokenizerBase, messages: Messages, text: str, first: int = 0
) -> list[tuple[int, int]]:
    """Character spans of assistant turns (index >= ``first``) in ``text`` (the rendered conversation).

    A turn's span runs from the end of ``render(messages[:i], add_generation_prompt=True)`` to the end of
    ``render(messages[:i+1])``: the reply plus whatever the template closes it with, i.e. what the model must
    generate after the generation prompt. Works with any template, with or without ``{% generation %}``.
    Where a template renders prefixes inconsistently, the turn's content is searched for instead, after the
    previous messages' contents (see :func:`_search_span`).
    """
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        content = str(message["content"])
        if message["role"] != "assistant" or i < first:
            found = text.find(content, cursor) if content else -1
            cursor = found + len(content) if found >= 0 else cursor
            continue
        span = None
        if i > 0:
            start_text = render_chat(tokenizer, messages[:i], add_generation_prompt=True)
            end_text = render_chat(tokenizer, messages[: i + 1])
            if text.startswith(end_text) and end_text.startswith(start_text) and len(start_text) >= cursor:
                span = (len(start_text), len(end_text))
        if span is None:
            span = _search_span(text, content, cursor, tokenizer)
        if span[1] > span[0]:
            spans.append(span)
        cursor = span[1]
    return spans


def _tokenize_messages(
    tokenizer: PreTrainedTokenizerBase, messages: Messages, first: int = 0
) -> tuple[list[int], list[float]]:
    if first == 0 and getattr(tokenizer, "is_fast", False) and has_generation_markers(tokenizer):
        out = tokenizer.apply_chat_template(
            list(messages), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids, mask = list(out["input_ids"]), [float(v) for v in out["assistant_masks"]]
        if any(mask) or not any(m["role"] == "assistant" for m in messages):
            return ids, mask
    text = render_chat(tokenizer, messages)
    spans = assistant_char_spans(tokenizer, messages, text, first)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        mask = [0.0] * len(ids)
        k = 0
        for j, (start, end) in enumerate(enc["offset_mapping"]):
            while k < len(spans) and start >= spans[k][1]:
                k += 1
            if k == len(spans):
                break
            if end > spans[k][0] and end > start:  # token overlaps the span
                mask[j] = 1.0
        return ids, mask
    # Slow tokenizers have no offsets: tokenise piece by piece at span boundaries.
    ids, mask, pos = [], [], 0
    for start, end in spans:
        for piece, value in ((text[pos:start], 0.0), (text[start:end], 1.0)):
            piece_ids = _ids(tokenizer, piece) if piece else []
            ids += piece_ids
            mask += [value] * len(piece_ids)
        pos = end
    tail = _ids(tokenizer, text[pos:]) if pos < len(text) else []
    return ids + tail, mask + [0.0] * len(tail)


def tokenize_example(
    example: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    fmt: Format,
    max_length: int,
    completion_only: bool = True,
    chat: bool = False,
) -> Example:
    """One record -> ``{"tokens": int32[n], "loss_mask": float32[n]}`` with ``n <= max_length``.

    * ``prompt_completion``: ``prefix + prompt + completion + eos`` where ``prefix`` is the tokenizer's own
      special prefix (BOS for Llama and the char tokenizer). The mask is 1 on completion + EOS only
      (``completion_only``), else on everything. With ``chat=True`` (or a prompt given as messages) the pair
      goes through the chat template instead, ending with the template's end-of-turn tokens.
    * ``messages``: the chat template; mask 1 on assistant turns only (their content and closing tokens).
    * ``text``: ``prefix + text + eos``, mask 1 everywhere.

    Too-long sequences are truncated from the right (keeping the prompt and the start of the answer).
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (one input and one target), got {max_length}")
    if fmt == "prompt_completion":
        prompt, completion = example["prompt"], example["completion"]
        prompt_ids, completion_ids = encode_prompt_completion(tokenizer, prompt, completion, chat)
        ids = prompt_ids + completion_ids
        prompt_value = 0.0 if completion_only else 1.0
        mask = [prompt_value] * len(prompt_ids) + [1.0] * len(completion_ids)
    elif fmt == "messages":
        messages = example["messages"]
        if not is_messages(messages):
            raise ValueError(f"'messages' must be a non-empty list of {{role, content}} dicts, got {messages!r}")
        ids, mask = _tokenize_messages(tokenizer, list(messages))
    elif fmt == "text":
        ids = special_prefix(tokenizer) + _ids(tokenizer, example["text"]) + [_eos_id(tokenizer)]
        mask = [1.0] * len(ids)
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of prompt_completion, messages, text")
    return {
        "tokens": np.asarray(ids[:max_length], dtype=np.int32),
        "loss_mask": np.asarray(mask[:max_length], dtype=np.float32),
    }


def build_sft_dataset(
    source: str | Sequence[dict[str, Any]] | Any,
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
    max_length: int | None = None,
    split: str = "train",
    fmt: Format | None = None,
    completion_only: bool = True,
    chat: bool = False,
    cache_dir: str | None = None,
) -> list[Example]:
    """Loads (path, list of dicts or ``datasets.Dataset``) and tokenises a dataset for SFT.

    ``max_length`` defaults to ``seq_len + 1`` tokens (a sequence of n tokens fills n - 1 batch slots).
    Examples with nothing in the loss after truncation are dropped (they would only cost compute).
    """
    records = load_records(source, split, cache_dir) if isinstance(source, str | os.PathLike) else source
    columns = records.column_names if hasattr(records, "column_names") else (list(records[0]) if records else [])
    where = repr(os.fspath(source)) if isinstance(source, str | os.PathLike) else "<in memory>"
    if len(records) == 0:
        raise UserError(f"dataset {where} is empty")
    fmt = fmt or detect_format(columns, where)
    max_length = max_length or seq_len + 1
    examples, dropped = [], 0
    for record in records:
        ex = tokenize_example(record, tokenizer, fmt, max_length, completion_only=completion_only, chat=chat)
        if ex["loss_mask"][1:].sum() > 0:
            examples.append(ex)
        else:
            dropped += 1
    if dropped:
        log.warning("dropped %d of %d examples with no loss tokens after truncation", dropped, len(records))
    if not examples:
        raise UserError(
            f"no usable examples in {where}: every example has an empty loss mask after truncation to "
            f"{max_length} tokens (raise data.seq_len)"
        )
    return examples


# ----------------------------------------------------------------------------------------------------------
# Packing and batching.


def _n_pairs(example: Example, seq_len: int) -> int:
    return min(len(example["tokens"]) - 1, seq_len)


def pack_examples(examples: Sequence[Example], seq_len: int, window: int = 64) -> list[list[int]]:
    """Packs examples (in the given order) into rows of ``seq_len`` slots; returns example indices per row.

    An example of n tokens takes n - 1 slots (longer ones are truncated from the right to fill a row).
    First-fit over the last ``window`` open rows: each example goes into the oldest open row with room,
    else opens a new row. Rows come out in opening order, so packing preserves the (shuffled) order closely
    and costs O(n * window). Examples with fewer than 2 tokens are skipped.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    rows: list[list[int]] = []
    space: list[int] = []
    open_rows: list[int] = []
    for i, ex in enumerate(examples):
        n = _n_pairs(ex, seq_len)
        if n < 1:
            continue
        for r in open_rows:
            if space[r] >= n:
                rows[r].append(i)
                space[r] -= n
                if space[r] == 0:
                    open_rows.remove(r)
                break
        else:
            rows.append([i])
            space.append(seq_len - n)
            if space[-1] > 0:
                open_rows.append(len(rows) - 1)
                if len(open_rows) > window:
                    open_rows.pop(0)
    return rows


def unpacked_rows(examples: Sequence[Example]) -> list[list[int]]:
    """One example per row (right-padded); examples with fewer than 2 tokens are skipped."""
    return [[i] for i, ex in enumerate(examples) if len(ex["tokens"]) >= 2]


def make_batch(examples: Sequence[Example], rows: Sequence[Sequence[int]], seq_len: int, pad_id: int = 0) -> Batch:
    """Lays out rows (lists of example indices) as a batch dict of ``[len(rows), seq_len]`` arrays."""
    b = len(rows)
    batch = {
        "inputs": np.full((b, seq_len), pad_id, np.int32),
        "targets": np.full((b, seq_len), pad_id, np.int32),
        "loss_mask": np.zeros((b, seq_len), np.float32),
        "positions": np.zeros((b, seq_len), np.int32),
        "segment_ids": np.zeros((b, seq_len), np.int32),
    }
    for r, row in enumerate(rows):
        offset = 0
        for seg, i in enumerate(row, start=1):
            tokens, mask = examples[i]["tokens"], examples[i]["loss_mask"]
            n = _n_pairs(examples[i], seq_len)
            if offset + n > seq_len:
                raise ValueError(f"row {r} overflows seq_len={seq_len}")
            sl = slice(offset, offset + n)
            batch["inputs"][r, sl] = tokens[:n]
            batch["targets"][r, sl] = tokens[1 : n + 1]
            batch["loss_mask"][r, sl] = mask[1 : n + 1]
            batch["positions"][r, sl] = np.arange(n)
            batch["segment_ids"][r, sl] = seg
            offset += n
    return batch


# ----------------------------------------------------------------------------------------------------------
# The resumable SFT iterator (jaxpt.data.iterators.EpochIterator over packed or single-example rows).


class SFTDataIterator(EpochIterator):
    """Infinite SFT batches ``dict[str, np.ndarray]`` of shape ``[batch_size, seq_len]``.

    Each epoch shuffles the examples (seeded per epoch), then packs them (:func:`pack_examples`) or lays out
    one per row (``packing=False``); batches take consecutive rows.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        packing: bool = True,
        shuffle: bool = True,
        pad_id: int = 0,
    ):
        super().__init__(len(examples), batch_size, seed, shuffle)
        self.examples, self.seq_len, self.packing, self.pad_id = list(examples), seq_len, packing, pad_id

    def _layout(self, epoch: int) -> list[list[int]]:
        order = self._order(epoch)
        ordered = [self.examples[i] for i in order]
        rows = pack_examples(ordered, self.seq_len) if self.packing else unpacked_rows(ordered)
        return [[int(order[j]) for j in row] for row in rows]

    def __next__(self) -> Batch:
        return make_batch(self.examples, self._take(), self.seq_len, self.pad_id)


def fixed_batches(examples, batch_size: int, seq_len: int, packing: bool, pad_id: int) -> list[dict]:
    """One pass over ``examples`` in order (for eval); the last batch is filled with empty rows."""
    rows = pack_examples(examples, seq_len) if packing else unpacked_rows(examples)
    rows += [[] for _ in range(-len(rows) % batch_size)]
    return [make_batch(examples, rows[i : i + batch_size], seq_len, pad_id) for i in range(0, len(rows), batch_size)]
