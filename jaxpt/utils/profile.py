"""Where a jitted function's time goes: per-op device time from a ``jax.profiler`` trace, named by source op.

XLA names each kernel it runs after the HLO instruction it executes (``ynn_fusion.13``); the compiled
module's text maps those names to the JAX op that made them (``metadata={op_name=...}``), so the table reads
as model code, ``while/body/Decoder/layers_*/mlp/down/dot_general``, with the layers folded together. This is
how the decode-step breakdown in ``docs/benchmarks.md`` is measured (``tools/bench.py generate --profile``).

The trace is the Chrome-format ``*.trace.json.gz`` that ``jax.profiler`` writes; on XLA:CPU each executed
instruction is one event. Events that are not an instruction of the module (runtime bookkeeping) are left
out, and so are the control-flow instructions (``while``, ``conditional``, ``call``), whose events span
their bodies' and would count them twice. Other backends name events by kernel; there nothing matches and
``trace_op_times`` says so.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import json
import os
import re
import tempfile
from collections import defaultdict
from typing import Any

import jax

_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+) = .*?metadata=\{[^}]*?op_name="([^"]+)"', re.MULTILINE)
_CONTROL_FLOW = re.compile(r"(?<![\w-])(?:while|conditional|call)\(")


@dataclasses.dataclass(frozen=True)
class OpTime:
    op: str  # source op name, outer ``jit(...)/`` dropped, layer numbers folded to ``layers_*``
    seconds: float  # summed over the op's calls in one run
    calls: int  # calls in one run (e.g. once per decode step, per layer)


def source_names(hlo_text: str, fold_layers: bool = True) -> dict[str, str]:
    """HLO instruction name -> the JAX source op it came from, from a compiled module's text."""
    names = {}
    for match in _INSTRUCTION.finditer(hlo_text):
        name, op = match.groups()
        if _CONTROL_FLOW.search(match.group(0).split("metadata=")[0]):
            continue  # its event spans its body's events
        op = re.sub(r"^jit\([^)]*\)/", "", op)
        names[name] = re.sub(r"layers_\d+", "layers_*", op) if fold_layers else op
    return names


def trace_op_times(trace_dir: str, names: dict[str, str], runs: int) -> list[OpTime]:
    """Per-run time of each source op in the trace under ``trace_dir``, slowest first."""
    files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    if not files:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}: did the profiler write a trace?")
    with gzip.open(max(files, key=os.path.getmtime)) as f:
        events = json.load(f)["traceEvents"]
    seconds: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for event in events:
        name = event.get("name", "")
        if event.get("ph") != "X" or name not in names:
            continue
        seconds[names[name]] += event["dur"] * 1e-6
        calls[names[name]] += 1
    if not seconds:
        raise ValueError(
            f"no event of the trace under {trace_dir} is an instruction of the compiled module: this backend "
            "names its events otherwise (the per-op view works on XLA:CPU)"
        )
    rows = [OpTime(op, seconds[op] / runs, calls[op] // runs) for op in seconds]
    return sorted(rows, key=lambda r: -r.seconds)


def profile_ops(compiled: jax.stages.Compiled, *args: Any, runs: int = 3, fold_layers: bool = True) -> list[OpTime]:
    """Runs ``compiled(*args)`` once, then ``runs`` times under the profiler; returns ``list[OpTime]`` (per run,
    slowest first). ``compiled`` is ``jax.jit(f).lower(...).compile()``, called with its non-static arguments:
    the names come from the very program that runs."""
    names = source_names(compiled.as_text(), fold_layers)
    jax.block_until_ready(compiled(*args))
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        try:
            for _ in range(runs):
                jax.block_until_ready(compiled(*args))
        finally:
            jax.profiler.stop_trace()
        return trace_op_times(trace_dir, names, runs)
