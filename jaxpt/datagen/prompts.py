"""Prompts for data generation: seed tasks at controlled difficulty (skills), or a seed file; prompt dedup.

A :class:`Skill` makes ``(prompt, reference answer)`` pairs at difficulty levels 1..3 and names its verifier
(``jaxpt.rewards.VERIFIERS``: the same check ``jaxpt eval`` and RL rewards use).
"""

from __future__ import annotations

import dataclasses
import json
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxpt.data import tasks
from jaxpt.data.sft import load_records
from jaxpt.datagen.filters import ExactDedup, FilterReport, NearDedup, apply_filters
from jaxpt.errors import UserError
from jaxpt.rewards import VERIFIERS

Row = dict[str, Any]


def _word(rng: np.random.Generator, n: int) -> str:
    return "".join(rng.choice(list(string.ascii_lowercase), size=n))


def _make_arithmetic(rng: np.random.Generator, level: int) -> tuple[str, str]:
    ex = tasks.make_problem(rng, level)
    return ex["prompt"], ex["completion"]


def _make_compare(rng: np.random.Generator, level: int) -> tuple[str, str]:
    hi = 10**level
    a, b = (int(x) for x in rng.integers(0, hi, size=2))
    return f"max({a},{b})=", str(max(a, b))


_WORD_LENGTHS = {1: (2, 4), 2: (5, 7), 3: (8, 12)}


def _make_reverse(rng: np.random.Generator, level: int) -> tuple[str, str]:
    lo, hi = _WORD_LENGTHS[level]
    w = _word(rng, int(rng.integers(lo, hi + 1)))
    return f"reverse({w})=", w[::-1]


def _make_count(rng: np.random.Generator, level: int) -> tuple[str, str]:
    lo, hi = _WORD_LENGTHS[level]
    w = _word(rng, int(rng.integers(lo, hi + 1)))
    return f"len({w})=", str(len(w))


def _make_sort(rng: np.random.Generator, level: int) -> tuple[str, str]:
    n = 1 + 2 * level  # 3, 5, 7 digits
    xs = [int(x) for x in rng.integers(0, 10, size=n)]
    return f"sort({','.join(map(str, xs))})=", ",".join(map(str, sorted(xs)))


@dataclasses.dataclass(frozen=True)
class Skill:
    """A prompt family: ``make(rng, level) -> (prompt, reference answer)``, checked by the verifier of the
    same name (``jaxpt.rewards.VERIFIERS``)."""

    name: str
    make: Callable[[np.random.Generator, int], tuple[str, str]]
    levels: tuple[int, ...] = (1, 2, 3)
    description: str = ""

    def __post_init__(self):
        if self.name not in VERIFIERS:
            raise ValueError(f"skill {self.name!r} has no verifier; register one with jaxpt.rewards.register_verifier")


SKILLS: dict[str, Skill] = {
    s.name: s
    for s in (
        Skill("arithmetic", _make_arithmetic, tasks.LEVELS, "a+b= / a-b= with L-digit operands"),
        Skill("compare", _make_compare, (1, 2, 3), "max(a,b)= with up to L-digit numbers"),
        Skill("reverse", _make_reverse, (1, 2, 3), "reverse(word)= for 2-4 / 5-7 / 8-12 letters"),
        Skill("count", _make_count, (1, 2, 3), "len(word)= for 2-4 / 5-7 / 8-12 letters"),
        Skill("sort", _make_sort, (1, 2, 3), "sort(digits)= with 3 / 5 / 7 digits"),
    )
}


def _weights(names: Sequence[Any], weights: Sequence[float]) -> np.ndarray:
    if not weights:
        return np.full(len(names), 1.0 / len(names))
    if len(weights) != len(names):
        raise ValueError(f"{len(weights)} weights for {len(names)} choices {list(names)}")
    w = np.asarray(weights, np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    return w / w.sum()


def _read_table(path: str) -> list[Row]:
    return [dict(r) for r in load_records(path)]


def generate_prompts(cfg: Mapping[str, Any], seed: int) -> list[Row]:
    """``cfg.num_prompts`` distinct prompts ``{prompt, skill, difficulty, reference}``, deterministic in
    ``seed``: a skill by ``skill_weights``, then a level among the skill's levels in ``levels`` by
    ``level_weights``. Prompts in ``exclude_file`` (its ``prompt`` column) are never produced."""
    skills = list(cfg["skills"])
    for s in skills:
        if s not in SKILLS:
            raise UserError(f"skill {s!r} cannot generate prompts; choose from {sorted(SKILLS)}")
    levels = [int(x) for x in cfg["levels"]]
    p_skill = _weights(skills, cfg["skill_weights"])
    p_level_all = _weights(levels, cfg["level_weights"])
    exclude = set()
    if cfg["exclude_file"]:
        exclude = {json.dumps(r["prompt"]) for r in _read_table(cfg["exclude_file"])}
    rng = np.random.default_rng(seed)
    seen, out = set(exclude), []
    n = int(cfg["num_prompts"])
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise UserError(f"could only draw {len(out)} distinct prompts of {n}: widen skills/levels")
        skill = SKILLS[skills[int(rng.choice(len(skills), p=p_skill))]]
        allowed = [i for i, lv in enumerate(levels) if lv in skill.levels]
        if not allowed:
            raise UserError(f"skill {skill.name!r} has levels {skill.levels}; none in {levels}")
        p = p_level_all[allowed] / p_level_all[allowed].sum()
        level = levels[allowed[int(rng.choice(len(allowed), p=p))]]
        prompt, reference = skill.make(rng, level)
        key = json.dumps(prompt)
        if key in seen:
            continue
        seen.add(key)
        out.append({"prompt": prompt, "skill": skill.name, "difficulty": level, "reference": reference})
    return out


def seed_prompts(cfg: Mapping[str, Any]) -> list[Row]:
    """Prompts from ``cfg.seed_file`` (JSONL / Parquet / ...): a ``prompt`` column, optional ``reference``
    (or ``answer`` / ``completion``), ``skill`` (default: ``arithmetic`` for ``a+b=`` prompts, else ``exact``
    with a reference, else none) and ``difficulty``. First ``num_prompts`` rows if > 0."""
    rows = _read_table(cfg["seed_file"])
    n = int(cfg["num_prompts"] or 0)
    out = []
    for i, r in enumerate(rows[:n] if n else rows):
        if r.get("prompt") is None:
            raise UserError(f"seed file {cfg['seed_file']} row {i} has no 'prompt'")
        ref = next((r[k] for k in ("reference", "answer", "completion") if r.get(k) is not None), None)
        skill = r.get("skill")
        if not skill:
            if isinstance(r["prompt"], str) and tasks._PROBLEM_RE.match(r["prompt"]):
                skill = "arithmetic"
            elif ref is not None:
                skill = "exact"
        out.append(
            {
                "prompt": r["prompt"],
                "skill": skill,
                "difficulty": r.get("difficulty"),
                "reference": None if ref is None else str(ref),
            }
        )
    return out


def prompt_filters(cfg: Mapping[str, Any], seed: int) -> list[Callable]:
    fs: list[Callable] = []
    if cfg["exact_dedup"]:
        fs.append(ExactDedup(keys=("prompt",), name="prompt_exact_dedup"))
    if float(cfg["near_dedup_threshold"] or 0.0) > 0:
        fs.append(
            NearDedup("prompt", threshold=float(cfg["near_dedup_threshold"]), seed=seed, name="prompt_near_dedup")
        )
    return fs


def build_prompts(cfg: Mapping[str, Any], seed: int) -> tuple[list[Row], list[FilterReport]]:
    """The prompt table (``prompt_id`` = position) after prompt-level dedup, and the dedup reports."""
    rows = seed_prompts(cfg) if cfg["seed_file"] else generate_prompts(cfg, seed)
    rows, reports = apply_filters(rows, prompt_filters(cfg, seed))
    return [{"prompt_id": i, **r} for i, r in enumerate(rows)], reports
