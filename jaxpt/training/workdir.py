"""The run directory: ``config.json``, ``checkpoints/``, ``metrics.jsonl``, ``tensorboard/``.

``prepare_workdir`` is the guard against the two classic accidents: silently overwriting a finished run by
reusing its workdir, and "resuming" a run with a different config (a changed learning rate or dataset
would make the resumed run something no config describes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from jaxpt.config import CONFIG_FILENAME, config_to_dict, flatten_dict, save_config
from jaxpt.errors import UserError

__all__ = [
    "CHECKPOINT_SUBDIR",
    "METRICS_FILENAME",
    "RESUME_ALLOWED_FIELDS",
    "TENSORBOARD_SUBDIR",
    "WorkdirError",
    "checkpoint_dir",
    "has_run",
    "prepare_workdir",
]

CHECKPOINT_SUBDIR = "checkpoints"
TENSORBOARD_SUBDIR = "tensorboard"
METRICS_FILENAME = "metrics.jsonl"

# Fields that may change between the original run and a resume: they change how long the run goes or what
# it reports, not what it computes. An entry matches a dotted field path exactly, any field under it
# ("logging" matches "logging.every"), or its last component(s) ("total_steps" matches "train.total_steps").
RESUME_ALLOWED_FIELDS: tuple[str, ...] = (
    "total_steps",
    "num_steps",
    "train_steps",
    "logging",
    "log_every",
    "log_every_steps",
    "progress_bar",
    "eval_every",
    "eval_every_steps",
    "checkpoint.save_every",
    "checkpoint.keep",
    "checkpoint.keep_best",
    "checkpoint.async_save",
    "workdir",
    "resume",
)


class WorkdirError(UserError, RuntimeError):
    """The workdir cannot be used as asked (existing run without --resume, or a config mismatch)."""


def checkpoint_dir(workdir: str | os.PathLike) -> Path:
    return Path(workdir) / CHECKPOINT_SUBDIR


def has_run(workdir: str | os.PathLike) -> bool:
    """Whether ``workdir`` already holds a run: a ``config.json`` or any checkpoint entry."""
    workdir = Path(workdir)
    ckpt = checkpoint_dir(workdir)
    return (workdir / CONFIG_FILENAME).exists() or (ckpt.is_dir() and any(ckpt.iterdir()))


def _allowed(path: str, allowed: Sequence[str]) -> bool:
    return any(path == a or path.startswith(a + ".") or path.endswith("." + a) for a in allowed)


def _normalise(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
    # JSON round trip so tuples and lists (and ints written as floats by nobody) compare as on disk
    return json.loads(json.dumps(config_to_dict(config)))


def prepare_workdir(
    workdir: str | os.PathLike,
    config: ml_collections.ConfigDict | dict,
    resume: bool,
    allowed: Sequence[str] = RESUME_ALLOWED_FIELDS,
) -> Path:
    """Create/validate ``workdir`` for a new or resumed run and return it; never overwrites a run.

    - No run there yet (new or empty directory): create it and write ``config.json``, whatever ``resume``
      says — so the same ``--resume`` command line works for the first launch and every restart.
    - A run there and ``resume`` is False: ``WorkdirError`` (suggesting ``--resume`` or a new workdir).
    - A run there and ``resume``: the saved config must equal ``config`` except for ``allowed`` fields
      (see ``RESUME_ALLOWED_FIELDS``), else ``WorkdirError`` listing every differing field;
      ``config.json`` is then rewritten with the new values of the allowed fields.
    """
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"workdir {workdir} exists and is not a directory")
    if not has_run(workdir):
        workdir.mkdir(parents=True, exist_ok=True)
        save_config(config, workdir)
        return workdir
    if not resume:
        raise WorkdirError(
            f"workdir {workdir} already holds a run ({CONFIG_FILENAME} or {CHECKPOINT_SUBDIR}/ exist); "
            "pass --resume to continue it, or choose a new workdir (nothing was overwritten)"
        )
    config_path = workdir / CONFIG_FILENAME
    if not config_path.exists():
        raise WorkdirError(
            f"workdir {workdir} has checkpoints but no {CONFIG_FILENAME}, so the resume cannot be checked; "
            f"restore the {CONFIG_FILENAME} of that run or choose a new workdir"
        )
    try:
        saved = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise WorkdirError(f"{config_path} is not valid JSON ({e}); cannot check the resume") from e
    old, new = flatten_dict(saved), flatten_dict(_normalise(config))
    diffs = []
    for path in sorted(set(old) | set(new)):
        if _allowed(path, allowed):
            continue
        missing = "<missing>"
        before, after = old.get(path, missing), new.get(path, missing)
        if before != after:
            diffs.append(f"  {path}: {before!r} -> {after!r}")
    if diffs:
        raise WorkdirError(
            f"cannot resume {workdir}: the config differs from the saved {CONFIG_FILENAME} in fields that "
            "change the computation:\n" + "\n".join(diffs) + "\nuse the original values or a new workdir"
        )
    if old != new:
        save_config(config, workdir)
    return workdir
