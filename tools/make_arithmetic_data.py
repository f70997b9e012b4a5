"""Writes the shipped arithmetic data under data/arithmetic/ (deterministic: fixed seeds).

    python tools/make_arithmetic_data.py [--out data/arithmetic]

* eval.jsonl: 200 problems, levels 1-2, drawn first; every other file excludes these prompts.
* train.jsonl: 4000 distinct problems, levels 1-2 (level 1 is weighted low: it has only ~155 problems).
* prefs_train.jsonl: 2000 pairs on non-eval problems; prefs_eval.jsonl: one pair per eval problem.

SFT rows are {prompt, completion, difficulty, answer}; preference rows {prompt, chosen, rejected, difficulty,
answer} with chosen the correct answer and rejected a near miss.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxpt.data.tasks import make_arithmetic_examples, make_preference_pair, make_preference_pairs  # noqa: E402

SEED = 1234
WEIGHTS = (0.025, 0.975)  # levels 1, 2


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"wrote {len(rows):5d} rows to {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/arithmetic")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    eval_rows = make_arithmetic_examples(200, SEED, levels=(1, 2), weights=WEIGHTS)
    held_out = {r["prompt"] for r in eval_rows}
    train_rows = make_arithmetic_examples(4000, SEED + 1, levels=(1, 2), weights=WEIGHTS, exclude=held_out)
    prefs_train = make_preference_pairs(2000, SEED + 2, levels=(1, 2), weights=WEIGHTS, exclude=held_out)
    rng = np.random.default_rng(SEED + 3)
    prefs_eval = [make_preference_pair(r, rng) for r in eval_rows]

    write_jsonl(os.path.join(args.out, "train.jsonl"), train_rows)
    write_jsonl(os.path.join(args.out, "eval.jsonl"), eval_rows)
    write_jsonl(os.path.join(args.out, "prefs_train.jsonl"), prefs_train)
    write_jsonl(os.path.join(args.out, "prefs_eval.jsonl"), prefs_eval)


if __name__ == "__main__":
    main()
