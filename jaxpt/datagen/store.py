"""Data generation's files: atomic JSONL shards, ``progress.json``, the config fingerprint and the outputs.

Every batch of a stage is written to ``shards/<stage>-<k>.jsonl`` (atomically) before ``progress.json`` records
it, so a re-run continues after the last recorded batch and never loses or duplicates a row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from ml_collections import ConfigDict

from jaxpt.config import config_to_dict
from jaxpt.errors import UserError

log = logging.getLogger(__name__)

Row = dict[str, Any]


def write_jsonl(path: str, rows: Iterable[Row]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)  # a crash never leaves a half-written shard under the final name


def read_jsonl(path: str) -> list[Row]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, allow_nan=True)
        f.write("\n")
    os.replace(tmp, path)


def write_dataset(rows: list[Row], path_stem: str, fmt: str) -> str:
    """``rows`` as ``path_stem.jsonl`` (one JSON object per line, what ``datasets``' json builder reads) or
    ``path_stem.parquet`` (via ``datasets.Dataset.to_parquet``). Returns the path."""
    if fmt == "jsonl":
        path = path_stem + ".jsonl"
        write_jsonl(path, rows)
        return path
    if fmt == "parquet":
        import datasets

        path = path_stem + ".parquet"
        ds = datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict({})
        ds.to_parquet(path + ".tmp")
        os.replace(path + ".tmp", path)
        return path
    raise UserError(f"output.format must be 'jsonl' or 'parquet', got {fmt!r}")


class Interrupted(RuntimeError):
    """Raised by :func:`run` when ``stop_after_batches`` is reached (as a preemption would stop it)."""


class ResumeMismatch(UserError):
    """The output directory holds a run of a different config (resuming would mix two datasets)."""


class Progress:
    """``progress.json``: the config fingerprint and, per stage, how many batches are safely on disk."""

    def __init__(self, out_dir: str, fingerprint: str):
        self.path = os.path.join(out_dir, "progress.json")
        self.state: dict[str, Any] = {"fingerprint": fingerprint, "stages": {}}
        if os.path.exists(self.path):
            with open(self.path) as f:
                old = json.load(f)
            if old.get("fingerprint") != fingerprint:
                raise ResumeMismatch(
                    f"{out_dir} holds a data-generation run with a different config (fingerprint "
                    f"{old.get('fingerprint')} != {fingerprint}); use a new --output or --overwrite"
                )
            self.state = old

    def done(self, stage: str) -> int:
        return int(self.state["stages"].get(stage, {}).get("completed", 0))

    def record(self, stage: str, completed: int, total: int) -> None:
        self.state["stages"][stage] = {"completed": completed, "num_batches": total}
        write_json(self.path, self.state)


def fingerprint(config: ConfigDict) -> str:
    """Hash of everything that decides the generated rows (not ``output.*``), and of the seed file's bytes."""

    d = config_to_dict(config)
    d.pop("output", None)
    h = hashlib.sha256(json.dumps(d, sort_keys=True).encode())
    for path in (d.get("prompts", {}).get("seed_file"), d.get("prompts", {}).get("exclude_file")):
        if path and os.path.isfile(path):
            with open(path, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()[:16]


class StageRunner:
    """Runs batched stages with shards + progress; ``stop_after`` counts batches across stages."""

    def __init__(self, out_dir: str, progress: Progress, stop_after: int | None):
        self.out_dir, self.progress, self.stop_after = out_dir, progress, stop_after
        self.batches_run = 0
        os.makedirs(os.path.join(out_dir, "shards"), exist_ok=True)

    def shard(self, stage: str, k: int) -> str:
        return os.path.join(self.out_dir, "shards", f"{stage}-{k:05d}.jsonl")

    def stage(self, name: str, num_batches: int, fn: Callable[[int], list[Row]]) -> list[Row]:
        for k in range(self.progress.done(name), num_batches):
            if self.stop_after is not None and self.batches_run >= self.stop_after:
                raise Interrupted(f"stopped after {self.batches_run} batches (stage {name}, batch {k})")
            t0 = time.perf_counter()
            rows = fn(k)
            write_jsonl(self.shard(name, k), rows)
            self.progress.record(name, k + 1, num_batches)
            self.batches_run += 1
            log.info("%s batch %d/%d: %d rows in %.1fs", name, k + 1, num_batches, len(rows), time.perf_counter() - t0)
        out: list[Row] = []
        for k in range(num_batches):
            out += read_jsonl(self.shard(name, k))
        return out
