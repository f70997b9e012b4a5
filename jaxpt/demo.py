"""``jaxpt demo``: the whole post-training story in a few CPU minutes, through the same code ``jaxpt train`` runs.

    jaxpt demo --workdir=runs/demo              # what `make demo` runs
    jaxpt demo --workdir=/tmp/d --preset=tiny   # seconds; for tests

Stages (``configs/demo/``), each a real ``jaxpt.training.loop.train`` run in its own sub-directory:

1. ``sft/``: a tiny Llama-style model from scratch (the *base*: random weights) fine-tuned on 2-digit addition /
   subtraction with every number written least-significant digit first (``data/arithmetic_reversed/``);
2. ``grpo/``: GRPO from the SFT export on other problems, given without answers: the reward solves them
   (:func:`exact_reward`).

Then every held-out problem is answered by the SFT and the final export through the sampler front-end (greedy,
and sampled at GRPO's temperature), each answer checked by solving the problem; with each stage's
``metrics.jsonl`` (the loop's own evaluation before, during and after training) that gives the before/after
table (printed, and written to ``summary.md`` / ``summary.json``), the curves (``curves.png``) and the final
model's answers to the first held-out problems, each marked right or WRONG.

The task format: ``"41+23="`` is 14 + 32 and its answer ``"640"`` is 046 = 46. Operands have ``d`` digits and
answers ``d + 1``, zero-padded; :func:`lsd` writes a number this way, :func:`solve_prompt` solves a prompt.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxpt.config import load_config
from jaxpt.data.sft import load_records
from jaxpt.data.tokenizer import load_tokenizer
from jaxpt.generation.frontend import Sampler, sampling_config
from jaxpt.models import orbax_io
from jaxpt.training.loop import train

_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"sft": _ROOT / "configs/demo/sft.py", "grpo": _ROOT / "configs/demo/grpo.py"}
_PROMPT_RE = re.compile(r"^(\d+)([+-])(\d+)=$")


# ------------------------------------------------------------------------------------------ the task format
def lsd(value: int, width: int) -> str:
    """``value`` zero-padded to ``width`` digits, least-significant digit first: ``lsd(132, 3) == "231"``."""
    if not 0 <= value < 10**width:
        raise ValueError(f"{value} does not fit in {width} digits")
    return f"{value:0{width}d}"[::-1]


def make_prompt(a: int, op: str, b: int, digits: int) -> str:
    """The prompt of ``a op b`` with ``digits``-digit operands: ``make_prompt(14, "+", 32, 2) == "41+23="``."""
    return f"{lsd(a, digits)}{op}{lsd(b, digits)}="


def read_prompt(prompt: str) -> tuple[int, str, int, int]:
    """``(a, op, b, digits)`` of a prompt: ``read_prompt("41+23=") == (14, "+", 32, 2)``."""
    m = _PROMPT_RE.match(prompt.strip())
    if m is None:
        raise ValueError(f"not a demo prompt: {prompt!r}")
    return int(m.group(1)[::-1]), m.group(2), int(m.group(3)[::-1]), len(m.group(1))


def solve_prompt(prompt: str) -> tuple[int, str]:
    """The exact answer of a prompt, as an integer and as the model must write it."""
    a, op, b, digits = read_prompt(prompt)
    value = a + b if op == "+" else a - b
    return value, lsd(value, digits + 1)


def is_right(prompt: str, completion: str) -> bool:
    """The completion's first line is exactly the answer, written least-significant digit first and padded."""
    lines = completion.strip().splitlines()
    return bool(lines) and lines[0].strip() == solve_prompt(prompt)[1]


def exact_reward(prompts: Sequence[Any], completions: Sequence[str], records: Sequence[dict]) -> list[float]:
    """GRPO's reward (``{"kind": "python", "fn": "jaxpt.demo:exact_reward"}``): 1 for the exact answer, found by
    solving the prompt, so the RL prompts need no answers."""
    return [float(is_right(p, c)) for p, c in zip(prompts, completions, strict=True)]


def as_plain(prompt: str, completion: str) -> str:
    """``("41+23=", "640")`` -> ``"14+32=46"``: the problem and the model's answer in the usual notation."""
    a, op, b, _ = read_prompt(prompt)
    text = completion.strip()
    answer = str(int(text[::-1])) if text.isdigit() else repr(text)
    return f"{a}{op}{b}={answer}"


# ----------------------------------------------------------------------------------------------- the driver
def _config(stage: str, preset: str):
    path = str(CONFIGS[stage])
    return load_config(f"{path}:{preset}" if preset else path)


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl`` (a resumed step counts once: the later row wins)."""
    rows: dict[tuple[int, tuple[str, ...]], dict[str, Any]] = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            rows[(int(row["step"]), tuple(sorted(k for k in row if k not in ("step", "time"))))] = row
    return sorted(rows.values(), key=lambda r: r["step"])


def series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of one metric."""
    pts = [(r["step"], float(r[key])) for r in rows if key in r and r[key] is not None]
    return [s for s, _ in pts], [v for _, v in pts]


def _first_last(rows: Sequence[dict[str, Any]], key: str, n: int = 1) -> tuple[float, float]:
    """Mean of the first and of the last ``n`` values of a metric (nan when it was never logged)."""
    _, v = series(rows, key)
    if not v:
        return math.nan, math.nan
    n = max(1, min(n, len(v) // 2 or 1))
    return sum(v[:n]) / n, sum(v[-n:]) / n


SFT_STAGE, GRPO_STAGE = "1. SFT (from the random-init base)", "2. GRPO (from the SFT model)"


def summary_rows(
    sft: Sequence[dict],
    grpo: Sequence[dict],
    sampled: tuple[float, float] | None = None,
    temperature: float = 1.0,
    window: int = 10,
) -> list[dict[str, Any]]:
    """The before/after table from the stages' ``metrics.jsonl``: per stage the metric it optimises first, then
    the others it moves. ``sampled``: the SFT and the final model's held-out accuracy sampled at GRPO's
    ``temperature`` (:func:`check_models`), the held-out counterpart of GRPO's reward."""
    out = []

    def add(stage: str, metric: str, before: float, after: float, key: str, higher: bool = True) -> None:
        out.append(
            {"stage": stage, "metric": metric, "key": key, "before": before, "after": after, "higher_is_better": higher}
        )

    add(SFT_STAGE, "held-out exact match (greedy)", *_first_last(sft, "eval/exact_match"), "eval/exact_match")
    add(SFT_STAGE, "held-out loss (nats / answer token)", *_first_last(sft, "eval/loss"), "eval/loss", higher=False)
    n = max(1, min(window, len(series(grpo, "train/reward")[1]) // 2))
    reward = f"reward: exact answers among its samples (T={temperature:g}, RL prompts; mean of {n} steps)"
    add(GRPO_STAGE, reward, *_first_last(grpo, "train/reward", n), "train/reward")
    if sampled is not None:
        metric = f"held-out exact match, sampled at T={temperature:g} (4 a problem)"
        add(GRPO_STAGE, metric, *sampled, "check/sampled_accuracy")
    greedy = "eval/greedy/reward/exact_match"
    add(GRPO_STAGE, "held-out exact match (greedy)", *_first_last(grpo, greedy), greedy)
    return out


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table: stage | metric | before | after | change."""
    lines = ["| stage | metric | before | after | change |", "|---|---|---|---|---|"]
    for r in rows:
        before, after = r["before"], r["after"]
        better = (after > before) if r["higher_is_better"] else (after < before)
        mark = "better" if better else ("same" if after == before else "WORSE")
        lines.append(f"| {r['stage']} | {r['metric']} | {before:.3f} | {after:.3f} | {after - before:+.3f} ({mark}) |")
    return "\n".join(lines)


def exact_match_curve(rows: Sequence[dict[str, Any]], final_key: str) -> tuple[list[int], list[float]]:
    """Held-out greedy exact match over a stage's steps: the loop's evaluation before and after (``final_key``)
    and the ``eval_hook`` in between (the same 500 problems)."""
    points = dict(zip(*series(rows, "eval_hook/exact_match"), strict=True))
    points.update(zip(*series(rows, final_key), strict=True))
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def plot_curves(sft: Sequence[dict], grpo: Sequence[dict], out: str | os.PathLike, temperature: float = 1.0) -> str:
    """``out`` (PNG): SFT's losses; held-out exact match across both stages (GRPO's steps after SFT's); GRPO's
    sample reward and held-out exact match over its own steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
    for key, label in (("train/loss", "train loss"), ("eval/loss", "held-out loss")):
        s, v = series(sft, key)
        ax1.plot(s, v, marker="o" if key.startswith("eval") else None, label=label)
    ax1.set(title="1. SFT from scratch: loss", xlabel="SFT step", ylabel="nats / answer token", yscale="log")
    ax1.legend()

    offset = max((r["step"] for r in sft), default=0)
    s, v = exact_match_curve(sft, "eval/exact_match")
    g, w = exact_match_curve(grpo, "eval/greedy/reward/exact_match")
    ax2.plot(s, v, marker="o", label="after SFT steps")
    ax2.plot([offset + x for x in g], w, marker="o", label="after GRPO steps")
    ax2.axvline(offset, color="grey", linestyle=":")
    ax2.set(title="held-out exact match (greedy): base -> SFT -> GRPO", xlabel="step (SFT, then GRPO)")
    ax2.set_ylim(0, 1.02)
    ax2.legend(loc="center right")

    s, v = series(grpo, "train/reward")
    k = max(1, min(10, len(v) // 4))  # a moving mean: each step's reward is over only 64 prompts
    smooth = [sum(v[max(0, i - k + 1) : i + 1]) / len(v[max(0, i - k + 1) : i + 1]) for i in range(len(v))]
    ax3.plot(s, v, alpha=0.3, color="tab:blue")
    ax3.plot(s, smooth, color="tab:blue", label=f"reward: exact samples (T={temperature:g}; mean of {k} steps)")
    ax3.plot(g, w, marker="o", color="tab:orange", label="held-out exact match (greedy)")
    low = min(v + w, default=0.0)
    ax3.set(title="2. GRPO from the SFT model", xlabel="GRPO step", ylim=(max(0.0, low - 0.05), 1.005))
    ax3.legend(loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return str(out)


def generate_answers(
    model_dir: str, prompts: Sequence[str], temperature: float = 0.0, batch_size: int = 500
) -> list[str]:
    """Completions of ``prompts`` by an exported model (greedy unless ``temperature`` > 0), through the sampler
    front-end that ``jaxpt generate`` runs."""
    config, params, tok_dir = orbax_io.load_any(model_dir)
    tokenizer = load_tokenizer(tok_dir)
    width = max(len(solve_prompt(p)[1]) for p in prompts)  # digits, then EOS
    sampling = sampling_config(config, tokenizer, width + 1, temperature=temperature)
    sampler = Sampler(config, tokenizer, sampling, max_prompt_len=16, batch_size=min(batch_size, len(prompts)))
    return sampler.sample_all(params, list(prompts), seed=1).texts


def check_models(
    models: dict[str, str], prompts: Sequence[str], samples: int = 4, temperature: float = 1.0
) -> dict[str, dict[str, Any]]:
    """Each model's greedy answer to every prompt and ``samples`` answers sampled at ``temperature``, all checked
    by solving the problem (:func:`is_right`), not against the data file: ``{name: {"greedy": [{prompt,
    completion, plain, right}, ...], "sampled_accuracy": float}}``."""
    out = {}
    for name, model_dir in models.items():
        greedy = generate_answers(model_dir, prompts)
        sampled = generate_answers(model_dir, [p for p in prompts for _ in range(samples)], temperature)
        rights = [is_right(p, c) for p, c in zip([p for p in prompts for _ in range(samples)], sampled, strict=True)]
        out[name] = {
            "greedy": [
                {"prompt": p, "completion": c.strip(), "plain": as_plain(p, c), "right": is_right(p, c)}
                for p, c in zip(prompts, greedy, strict=True)
            ],
            "sampled_accuracy": sum(rights) / len(rights),
        }
    return out


def run_demo(workdir: str, preset: str = "", examples: int = 8) -> dict[str, Any]:
    """Runs every stage in ``workdir`` (a stage's directory must not hold a run yet) and reports: prints the
    before/after table, the final model's answers to the first ``examples`` held-out problems and the paths of
    ``summary.md``, ``summary.json`` and ``curves.png``; returns the summary."""
    t0 = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    timings = {}
    print("== 1. SFT: a tiny Llama-style model from scratch (random weights: the base) ==", flush=True)
    sft_dir = os.path.join(workdir, "sft")
    train(_config("sft", preset), sft_dir)
    timings["sft_s"] = time.perf_counter() - t0

    print("== 2. GRPO from the SFT model: reward 1 for the exact answer, found by solving the prompt ==", flush=True)
    grpo_cfg = _config("grpo", preset)
    grpo_cfg.model.path = grpo_cfg.tokenizer.path = os.path.join(sft_dir, "export")
    grpo_dir = os.path.join(workdir, "grpo")
    t1 = time.perf_counter()
    train(grpo_cfg, grpo_dir)
    timings["grpo_s"] = time.perf_counter() - t1

    # Every held-out problem, answered by the SFT and the final model and checked by solving it.
    print("== 3. every held-out problem, answered by the SFT and the final model ==", flush=True)
    t2 = time.perf_counter()
    eval_path = str(grpo_cfg.data.eval)
    prompts = [r["prompt"] for r in load_records(eval_path)][: int(grpo_cfg.data.eval_prompts)]
    final = os.path.join(grpo_dir, "export")
    temperature = float(grpo_cfg.rollout.temperature)
    checked = check_models({"sft": os.path.join(sft_dir, "export"), "final": final}, prompts, 4, temperature)
    sft_right = [a["right"] for a in checked["sft"]["greedy"]]
    final_right = [a["right"] for a in checked["final"]["greedy"]]
    fixed = sum(f and not s for s, f in zip(sft_right, final_right, strict=True))
    broken = sum(s and not f for s, f in zip(sft_right, final_right, strict=True))
    samples = checked["final"]["greedy"][:examples]
    timings["check_s"] = time.perf_counter() - t2

    sft_rows, grpo_rows = read_metrics(sft_dir), read_metrics(grpo_dir)
    sampled = (checked["sft"]["sampled_accuracy"], checked["final"]["sampled_accuracy"])
    rows = summary_rows(sft_rows, grpo_rows, sampled, temperature)
    png = plot_curves(sft_rows, grpo_rows, os.path.join(workdir, "curves.png"), temperature)
    timings["total_s"] = time.perf_counter() - t0

    n, right = len(prompts), sum(final_right)
    wrong = sum(not s["right"] for s in samples)
    lines = [
        "# jaxpt demo",
        "",
        f"Held-out: {n} problems (`{eval_path}`), in no training file. Greedy rows: the training loop's own "
        "evaluation at each stage's first and last step (`metrics.jsonl`); the sampled row: 4 answers a problem "
        f"at GRPO's temperature {temperature:g}, checked by solving the problem.",
        "",
        format_table(rows),
        "",
        f"Final model, greedy, every held-out answer checked by solving the problem: {right} / {n} right "
        f"({right / n:.1%}); GRPO fixed {fixed} of the SFT model's wrong answers and broke {broken} right ones.",
        "",
        f"Wall time: SFT {timings['sft_s']:.0f} s, GRPO {timings['grpo_s']:.0f} s, checks "
        f"{timings['check_s']:.0f} s, total {timings['total_s']:.0f} s. Final model: `{final}`.",
        "",
        f"The final model's greedy answers to the first {len(samples)} held-out problems (in brackets what it "
        "read and wrote: every number least-significant digit first):",
        "",
    ]
    lines += [_sample_line(s) for s in samples]
    lines += ["", f"{len(samples) - wrong} of {len(samples)} right" + (f", {wrong} WRONG." if wrong else ".")]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(workdir, "summary.md"), "w") as f:
        f.write(text)
    summary = {
        "rows": rows,
        "held_out": {"problems": n, "final_right": right, "fixed_by_grpo": fixed, "broken_by_grpo": broken},
        "samples": samples,
        "timings": timings,
        "curves": png,
        "final_model": final,
    }
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print("\n" + text, flush=True)
    print(f"curves: {png}", flush=True)
    print(f"summary: {os.path.join(workdir, 'summary.md')} (and summary.json)", flush=True)
    return summary


def _sample_line(s: dict[str, Any]) -> str:
    mark = "✓ right" if s["right"] else "✗ WRONG"
    return f"    {s['plain']:<12} {mark}   ({s['prompt']}{s['completion']})"
