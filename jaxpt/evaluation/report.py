"""Evaluation reports: one metrics dict written as JSON (machines), Markdown (people) and TensorBoard scalars
(curves across checkpoints)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

from jaxpt.utils.tensorboard import SummaryWriter


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    return f"{v:.4f}" if abs(v) < 1e6 else f"{v:.6g}"


def write_report(
    metrics: Mapping[str, float],
    out_dir: str | os.PathLike,
    step: int | None = None,
    title: str = "Evaluation report",
    tb_subdir: str | None = "tensorboard",
    tag_prefix: str = "eval/",
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and TensorBoard scalars for ``metrics`` under ``out_dir``.

    JSON and Markdown are overwritten (latest evaluation); TensorBoard events are appended under
    ``out_dir/tb_subdir`` as ``{tag_prefix}{name}`` at ``step`` (0 if None), so repeated evaluations of
    successive checkpoints form curves. ``tb_subdir=None`` skips TensorBoard. Non-finite values are
    written as JSON ``null``. Returns the paths written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    values = {str(k): float(v) for k, v in metrics.items()}

    paths = {"json": out / "report.json", "markdown": out / "report.md"}
    payload = {
        "title": title,
        "step": step,
        "metrics": {k: (v if math.isfinite(v) else None) for k, v in values.items()},
    }
    paths["json"].write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")

    lines = [f"# {title}", ""]
    if step is not None:
        lines += [f"Step: {step}", ""]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in values.items()]
    paths["markdown"].write_text("\n".join(lines) + "\n")

    if tb_subdir is not None:
        paths["tensorboard"] = out / tb_subdir
        with SummaryWriter(paths["tensorboard"]) as writer:
            writer.scalars({f"{tag_prefix}{k}": v for k, v in values.items()}, step)
    return paths
