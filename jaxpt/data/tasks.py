"""A synthetic arithmetic task small enough for a tiny char-level model to learn in minutes on a CPU.

Problems are ``"17+25="`` -> ``"42"``: addition or subtraction of non-negative integers, where subtraction
always has ``a >= b`` so answers are never negative. Difficulty level ``L`` (1..3) means the first operand has
exactly ``L`` digits (0-9 for level 1) and the second at most ``L``. Answers are checked by a verifier
(:func:`check_answer`) that RL rewards and data filters share.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

_PROBLEM_RE = re.compile(r"^\s*(\d+)\s*([+-])\s*(\d+)\s*=\s*$")
_ANSWER_RE = re.compile(r"^\s*(-?\d+)")
LEVELS = (1, 2, 3)


def solve(prompt: str) -> int:
    """The exact answer of an ``"a+b="`` / ``"a-b="`` prompt."""
    match = _PROBLEM_RE.match(prompt)
    if match is None:
        raise ValueError(f"not an arithmetic prompt: {prompt!r}")
    a, op, b = int(match.group(1)), match.group(2), int(match.group(3))
    return a + b if op == "+" else a - b


def parse_answer(completion: str) -> int | None:
    """The integer at the start of a completion (leading spaces allowed), or None."""
    match = _ANSWER_RE.match(completion)
    return int(match.group(1)) if match else None


def check_answer(prompt: str, completion: str) -> bool:
    """True iff the completion starts with the correct integer.

    Only the leading integer counts (what follows, e.g. EOS or chatter, is ignored), but ``"42"`` must not be
    the prefix of a longer number: ``"420"`` parses as 420 and is wrong.
    """
    answer = parse_answer(completion)
    return answer is not None and answer == solve(prompt)


def _operand(rng: np.random.Generator, level: int, exact: bool) -> int:
    hi = 10**level
    lo = 10 ** (level - 1) if (exact and level > 1) else 0
    return int(rng.integers(lo, hi))


def make_problem(rng: np.random.Generator, level: int, ops: str = "+-") -> dict[str, Any]:
    """One random problem of the given level."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level}")
    a, b = _operand(rng, level, exact=True), _operand(rng, level, exact=False)
    op = ops[int(rng.integers(len(ops)))]
    if op == "-" and b > a:
        a, b = b, a  # non-negative result; b > a >= 10**(level-1) means b also has `level` digits
    prompt = f"{a}{op}{b}="
    answer = solve(prompt)
    return {"prompt": prompt, "completion": str(answer), "difficulty": level, "answer": answer}


def make_arithmetic_examples(
    n: int,
    seed: int,
    levels: Sequence[int] = (1, 2),
    weights: Sequence[float] | None = None,
    ops: str = "+-",
    unique: bool = True,
    exclude: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """``n`` problems ``{prompt, completion, difficulty, answer}``, deterministic in ``seed``.

    Levels are drawn with ``weights`` (uniform by default). ``unique`` forbids repeated prompts and
    ``exclude`` forbids given prompts (e.g. an eval split); level 1 has only ~155 distinct problems, so
    weight it low when asking for thousands of unique examples.
    """
    if not levels or any(lv not in LEVELS for lv in levels):
        raise ValueError(f"levels must be a non-empty subset of {LEVELS}, got {levels}")
    p = None if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
    rng = np.random.default_rng(seed)
    seen = set(exclude)
    out: list[dict[str, Any]] = []
    while len(out) < n:
        level = int(rng.choice(np.asarray(levels), p=p))
        for _ in range(10_000):
            ex = make_problem(rng, level, ops)
            if ex["prompt"] not in seen:
                break
        else:
            raise ValueError(f"ran out of distinct level-{level} problems after {len(out)} examples")
        if unique:
            seen.add(ex["prompt"])
        out.append(ex)
    return out


def wrong_answer(answer: int, rng: np.random.Generator) -> int:
    """A plausible wrong answer: one digit changed (the leading digit stays non-zero), or off by one."""
    digits = str(answer)
    while True:
        if rng.random() < 0.25:
            candidate = answer + int(rng.choice([-1, 1]))
        else:
            pos = int(rng.integers(len(digits)))
            choices = [d for d in "0123456789" if d != digits[pos] and not (pos == 0 and d == "0" and len(digits) > 1)]
            candidate = int(digits[:pos] + str(rng.choice(choices)) + digits[pos + 1 :])
        if candidate != answer and candidate >= 0:
            return candidate


def make_preference_pair(example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """``{prompt, chosen, rejected, difficulty, answer}`` for one problem: chosen right, rejected wrong."""
    return {
        "prompt": example["prompt"],
        "chosen": str(example["answer"]),
        "rejected": str(wrong_answer(int(example["answer"]), rng)),
        "difficulty": example["difficulty"],
        "answer": example["answer"],
    }


def make_preference_pairs(
    n: int,
    seed: int,
    levels: Sequence[int] = (1, 2),
    weights: Sequence[float] | None = None,
    exclude: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """``n`` preference pairs: chosen = the correct answer, rejected = a near miss (:func:`wrong_answer`)."""
    examples = make_arithmetic_examples(n, seed, levels, weights, exclude=exclude)
    rng = np.random.default_rng(seed + 1)
    return [make_preference_pair(ex, rng) for ex in examples]
