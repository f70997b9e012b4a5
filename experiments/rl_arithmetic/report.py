"""Held-out exact-match accuracy of exported models (greedy decoding + the arithmetic verifier) and reward / KL
curves of RL runs.

    python experiments/rl_arithmetic/report.py \
        --model sft=runs/rl_arithmetic/sft/export --model grpo=runs/rl_arithmetic/grpo/export \
        --run grpo=runs/rl_arithmetic/grpo --run ppo=runs/rl_arithmetic/ppo \
        --timings runs/rl_arithmetic/timings.jsonl --out experiments/rl_arithmetic/results

Writes ``report.json`` (accuracy overall and per difficulty, per model; the runs' first/last logged rewards,
KL and wall times) and ``reward_kl.png`` (train reward, verifier accuracy of the samples and KL to the
reference per step, from each run's ``metrics.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from jaxpt.data.tasks import check_answer, make_arithmetic_examples  # noqa: E402
from jaxpt.data.tokenizer import load_tokenizer  # noqa: E402
from jaxpt.generation.frontend import Sampler, sampling_config  # noqa: E402
from jaxpt.models.hf import load_hf  # noqa: E402


def accuracy(model_dir: str, records: list[dict], prompt_len: int, max_new_tokens: int, batch: int) -> dict:
    """Greedy completions of every eval prompt, checked by the verifier (``check_answer``)."""
    config, params = load_hf(model_dir)
    tokenizer = load_tokenizer(model_dir)
    sampling = sampling_config(config, tokenizer, max_new_tokens)  # greedy, the model's stop tokens
    sampler = Sampler(config, tokenizer, sampling, max_prompt_len=prompt_len, batch_size=batch)
    texts = sampler.sample_all(params, [r["prompt"] for r in records]).texts
    correct, by_level = [], defaultdict(list)
    examples = []
    for r, text in zip(records, texts, strict=True):
        ok = check_answer(r["prompt"], text)
        correct.append(ok)
        by_level[str(r.get("difficulty", "all"))].append(ok)
        if len(examples) < 8:
            examples.append({"prompt": r["prompt"], "completion": text, "correct": ok})
    return {
        "accuracy": float(np.mean(correct)),
        "num_examples": len(correct),
        "accuracy_by_difficulty": {k: float(np.mean(v)) for k, v in sorted(by_level.items())},
        "examples": examples,
        "correct": correct,  # per example, for the paired comparison (dropped from report.json)
    }


def paired(base: list[bool], new: list[bool]) -> dict:
    """Paired comparison on the same problems: how many the new model fixed / broke, and the exact two-sided
    McNemar (sign) test p-value of "no change" over the discordant pairs."""
    fixed = sum((not a) and b for a, b in zip(base, new, strict=True))
    broken = sum(a and (not b) for a, b in zip(base, new, strict=True))
    n, k = fixed + broken, min(fixed, broken)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return {"fixed": fixed, "broken": broken, "mcnemar_p": p}


def fresh_problems(n: int, seed: int, exclude_files: list[str]) -> list[dict]:
    """``n`` new 2-digit problems (level 2) from the same generator, none of them in ``exclude_files``."""
    seen = {json.loads(line)["prompt"] for f in exclude_files for line in open(f)}
    return make_arithmetic_examples(n, seed, levels=(2,), exclude=seen)


def read_metrics(workdir: str) -> list[dict]:
    """``train/`` records of a run's metrics.jsonl, one per step (a resumed run's later line wins)."""
    by_step = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if "train/reward" in rec:
                by_step[rec["step"]] = rec
    return [by_step[s] for s in sorted(by_step)]


def smooth(x: np.ndarray, k: int = 5) -> np.ndarray:
    if len(x) < k:
        return x
    return np.convolve(np.pad(x, (k // 2, k - 1 - k // 2), mode="edge"), np.ones(k) / k, mode="valid")


def plot(runs: dict[str, list[dict]], out_png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("train/reward", "reward (mean over rollout)"),
        ("train/reward/arithmetic", "verifier accuracy of the samples"),
        ("train/kl", "KL(policy || reference), nats / sequence"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for label, recs in runs.items():
            steps = np.asarray([r["step"] for r in recs])
            vals = np.asarray([r.get(key, np.nan) for r in recs], float)
            (line,) = ax.plot(steps, vals, alpha=0.3)
            ax.plot(steps, smooth(vals), color=line.get_color(), label=label)
        ax.set_title(title)
        ax.set_xlabel("step (one rollout)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)


def _pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items or []:
        label, _, path = item.partition("=")
        out[label] = path
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="LABEL=HF_DIR to evaluate")
    parser.add_argument("--run", action="append", help="LABEL=WORKDIR whose metrics to plot")
    parser.add_argument("--eval", default="data/arithmetic/eval.jsonl")
    parser.add_argument(
        "--heldout", type=int, default=2000, help="also score this many fresh level-2 problems (0: none)"
    )
    parser.add_argument("--train", default="data/arithmetic/train.jsonl", help="excluded from --heldout")
    parser.add_argument("--timings", default="", help="JSONL of {stage, seconds} written by run.sh")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    sets = {"eval": [json.loads(line) for line in open(args.eval)]}
    if args.heldout:
        sets["heldout"] = fresh_problems(args.heldout, 4321, [args.train, args.eval])
    report: dict = {
        "eval_sets": {"eval": args.eval, "heldout": f"{args.heldout} fresh level-2 problems (seed 4321)"},
        "decoding": "greedy",
        "models": {},
        "runs": {},
    }
    for label, path in _pairs(args.model).items():
        report["models"][label] = {"path": path}
        for name, records in sets.items():
            result = accuracy(path, records, args.prompt_len, args.max_new_tokens, args.batch)
            report["models"][label][name] = result
            print(f"{label:>8} {name:>8}: exact-match accuracy {result['accuracy']:.4f} ({path})", flush=True)
    labels = list(report["models"])
    for label in labels[1:]:  # every model against the first (the SFT start), problem by problem
        for name in sets:
            base, new = report["models"][labels[0]][name]["correct"], report["models"][label][name]["correct"]
            report["models"][label][name][f"vs_{labels[0]}"] = cmp = paired(base, new)
            print(
                f"{label:>8} {name:>8}: vs {labels[0]} fixed {cmp['fixed']}, broke {cmp['broken']}, "
                f"McNemar p={cmp['mcnemar_p']:.2g}",
                flush=True,
            )
    for label in labels:
        for name in sets:
            report["models"][label][name].pop("correct")
    runs = {label: read_metrics(path) for label, path in _pairs(args.run).items()}
    for label, recs in runs.items():
        first = recs[0]
        tail = recs[-10:]
        report["runs"][label] = {
            "steps": len(recs),
            "reward_first": first["train/reward"],
            "reward_last10_mean": float(np.mean([r["train/reward"] for r in tail])),
            "sample_accuracy_first": first.get("train/reward/arithmetic"),
            "sample_accuracy_last10_mean": float(np.mean([r.get("train/reward/arithmetic", np.nan) for r in tail])),
            "kl_last10_mean": float(np.mean([r["train/kl"] for r in tail])),
        }
    if args.timings and os.path.exists(args.timings):
        report["wall_time_s"] = {
            json.loads(line)["stage"]: json.loads(line)["seconds"] for line in open(args.timings) if line.strip()
        }
    if runs:
        plot(runs, os.path.join(args.out, "reward_kl.png"))
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps({k: {n: v[n]["accuracy"] for n in sets} for k, v in report["models"].items()}))


if __name__ == "__main__":
    main()
