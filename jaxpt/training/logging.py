"""Training metrics to three sinks: TensorBoard, ``metrics.jsonl`` and a console progress bar.

TensorBoard is for looking at curves, ``metrics.jsonl`` for scripts and tests (one JSON object per
``log`` call, no TensorBoard needed to read it), the progress bar for the human watching the run (rate, ETA
and the latest loss). Only process 0 should write: construct with ``enabled=jax.process_index() == 0``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from jaxpt.training.workdir import METRICS_FILENAME, TENSORBOARD_SUBDIR
from jaxpt.utils.tensorboard import SummaryWriter

__all__ = ["MetricsLogger", "rewind_metrics"]


def _scalar(value: Any) -> float | None:
    """A Python float for numeric scalars (python, numpy, jax), else None."""
    if isinstance(value, bool | int | float | np.number):
        return float(value)
    if hasattr(value, "shape") and hasattr(value, "dtype") and np.ndim(value) == 0:
        try:
            return float(np.asarray(value))
        except (TypeError, ValueError):
            return None
    return None


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def rewind_metrics(workdir: str | os.PathLike, step: int) -> int:
    """Drop the ``metrics.jsonl`` lines of steps after ``step``; returns how many were dropped.

    A resumed run re-runs the steps after its checkpoint and logs them again: without this they would appear
    twice. A torn last line (a crash mid-write) is dropped too; other lines are kept byte for byte. The file is
    rewritten atomically (temp file + ``os.replace``).
    """
    path = Path(workdir) / METRICS_FILENAME
    if not path.exists():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue  # torn by a crash mid-write
            kept.append(line)
            continue
        row_step = row.get("step") if isinstance(row, dict) else None
        if isinstance(row_step, int | float) and row_step > step:
            continue
        kept.append(line if line.endswith("\n") else line + "\n")
    dropped = len(lines) - len(kept)
    if kept != lines:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
    return dropped


class MetricsLogger:
    """Writes ``workdir/tensorboard/``, ``workdir/metrics.jsonl`` and drives a tqdm bar.

    ``log(step, {"loss": 1.2}, prefix="train")`` records ``train/loss`` at ``step``: the same
    ``prefix/name`` key is the TensorBoard tag and the ``metrics.jsonl`` key, so both sinks read alike.
    Each jsonl line is ``{"step": int, "time": unix_seconds, "<prefix>/<name>": value, ...}``; numeric
    scalars are floats (NaN/inf written as Python's json does, ``NaN``/``Infinity``), anything else
    JSON-able is kept as is (jsonl only, not TensorBoard), and the rest is stored as its ``repr`` — a
    strange metric never crashes a run. The file is appended to, so a resumed run continues it: with
    ``resume_from=N`` it is first cut back to step N (``rewind_metrics``) and TensorBoard is told to drop events
    after N, since those steps run again (-1: the run starts over).

    ``advance(n)`` moves the bar by n steps (call it per step; once with the restored step on resume).
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        total_steps: int,
        enabled: bool = True,
        *,
        progress_bar: bool = True,
        tb_flush_secs: int = 30,
        resume_from: int | None = None,
    ):
        self.workdir = Path(workdir)
        self.total_steps = int(total_steps)
        self.enabled = enabled
        self._closed = False
        self._postfix: dict[str, str] = {}
        self._writer: SummaryWriter | None = None
        self._jsonl = None
        if enabled:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(self.workdir / TENSORBOARD_SUBDIR, flush_secs=tb_flush_secs)
            if resume_from is not None:
                rewind_metrics(self.workdir, resume_from)
                self._writer.session_start(resume_from + 1)
            self._jsonl = open(self.workdir / METRICS_FILENAME, "a", encoding="utf-8")
        self._bar = tqdm(
            total=self.total_steps,
            disable=not (enabled and progress_bar),
            unit="step",
            dynamic_ncols=True,
            mininterval=1.0,
            smoothing=0.1,
        )

    @property
    def jsonl_path(self) -> Path:
        return self.workdir / METRICS_FILENAME

    @property
    def tensorboard_dir(self) -> Path:
        return self.workdir / TENSORBOARD_SUBDIR

    def log(self, step: int, metrics: Mapping[str, Any], prefix: str = "train") -> None:
        """Record ``metrics`` at ``step`` under ``prefix/`` in every sink (a no-op when disabled)."""
        if not self.enabled or self._closed:
            return
        step = int(step)
        record: dict[str, Any] = {"step": step, "time": time.time()}
        scalars: dict[str, float] = {}
        for name, value in metrics.items():
            key = f"{prefix}/{name}" if prefix else str(name)
            number = _scalar(value)
            if number is not None:
                scalars[key] = number
                record[key] = number
            else:
                record[key] = _jsonable(value)
        if scalars and self._writer is not None:
            self._writer.scalars(scalars, step)
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        self._update_postfix(prefix, scalars)

    def _update_postfix(self, prefix: str, scalars: Mapping[str, float]) -> None:
        loss = scalars.get(f"{prefix}/loss" if prefix else "loss")
        if loss is None:
            return
        label = "loss" if prefix in ("train", "") else f"{prefix}_loss"
        self._postfix[label] = f"{loss:.4g}" if math.isfinite(loss) else str(loss)
        self._bar.set_postfix(self._postfix, refresh=False)

    def advance(self, n: int = 1) -> None:
        """Move the progress bar ``n`` steps (rate and ETA come from these calls)."""
        if n and not self._closed:
            self._bar.update(n)

    def flush(self) -> None:
        if self._writer is not None and not self._closed:
            self._writer.flush()
        if self._jsonl is not None and not self._closed:
            self._jsonl.flush()

    def close(self) -> None:
        """Flush and close every sink (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._bar.close()
        if self._writer is not None:
            self._writer.close()
        if self._jsonl is not None:
            self._jsonl.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
