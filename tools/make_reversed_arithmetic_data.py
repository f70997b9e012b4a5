"""Writes the demo's arithmetic data (numbers written least-significant digit first) to data/arithmetic_reversed/.

    python tools/make_reversed_arithmetic_data.py [--out data/arithmetic_reversed]

Problems are ``a+b=`` / ``a-b=`` (``a >= b`` for subtraction) over every pair of 2-digit operands (00-99), with
*every* number written least-significant digit first and zero-padded: operands to 2 digits, answers to 3.
``"41+23="`` is 14 + 32, and its answer ``"640"`` is 046 (``jaxpt.demo.make_prompt`` / ``lsd``). Why: a causal
model writes the answer left to right, and in this order each answer digit depends only on the operand digits of
its own column and the carry (or borrow) out of the column it has just written, at the same token offsets in
every problem; a tiny model learns that in a few hundred steps, where the usual order makes the first digit
it writes depend on every carry below it.

Deterministic (a fixed seed): the 15,050 problems are shuffled once and split, so no problem is in two files:

* eval.jsonl: 500 held-out problems ``{prompt, completion}``, for every evaluation;
* train.jsonl: 8000 problems ``{prompt, completion}``: the SFT targets;
* rl_prompts.jsonl: 3000 prompts ``{prompt}`` without answers: GRPO's, rewarded by solving them
  (``jaxpt.demo.exact_reward``).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from make_arithmetic_data import write_jsonl  # noqa: E402  (beside this file)

from jaxpt.demo import make_prompt, solve_prompt  # noqa: E402

SEED = 2027
DIGITS = 2
SPLITS = (("eval", 500, True), ("train", 8000, True), ("rl_prompts", 3000, False))  # name, rows, with answers


def all_prompts(digits: int) -> list[str]:
    """Every problem with ``digits``-digit operands, in a fixed order."""
    out = []
    for a in range(10**digits):
        for b in range(10**digits):
            out.append(make_prompt(a, "+", b, digits))
            if a >= b:
                out.append(make_prompt(a, "-", b, digits))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/arithmetic_reversed")
    args = parser.parse_args(argv)
    prompts = all_prompts(DIGITS)
    order = np.random.default_rng(SEED).permutation(len(prompts))
    os.makedirs(args.out, exist_ok=True)
    start = 0
    for name, n, with_answers in SPLITS:
        picked = [prompts[i] for i in order[start : start + n]]
        start += n
        rows = [{"prompt": p, "completion": solve_prompt(p)[1]} if with_answers else {"prompt": p} for p in picked]
        write_jsonl(os.path.join(args.out, f"{name}.jsonl"), rows)


if __name__ == "__main__":
    main()
