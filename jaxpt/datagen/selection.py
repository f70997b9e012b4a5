"""Choosing what data generation keeps: scores by source, best-of-N, preference pairs, the config's filters."""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jaxpt.datagen.filters import (
    ComplexityBalance,
    ExactDedup,
    FilterReport,
    FormatFilter,
    LengthFilter,
    NearDedup,
    ScoreFilter,
    VerifierFilter,
)
from jaxpt.errors import UserError

Row = dict[str, Any]


def _mean_logprob(row: Row) -> float:
    return row["logprob"] / max(row["num_tokens"], 1)


def _num(value: Any, missing: float = -math.inf) -> float:
    if value is None:
        return missing
    v = float(value)
    return missing if math.isnan(v) else v


SCORE_SOURCES = ("verifier", "reward", "judge", "logprob")


def score_of(row: Row, source: str) -> float | None:
    """A sample's score by ``source``: verifier (1 correct / 0 wrong), reward (``rm_score``), judge
    (``judge_score``), logprob (mean teacher log-prob per token). None when not available."""
    if source == "verifier":
        c = row.get("correct")
        return None if c is None else float(bool(c))
    if source == "reward":
        return row.get("rm_score")
    if source == "judge":
        return row.get("judge_score")
    if source == "logprob":
        return _mean_logprob(row)
    raise UserError(f"unknown score source {source!r}; choose from {SCORE_SOURCES}")


class BestOfN:
    """Rejection sampling as a filter: per prompt, keep the best sample by the ``rank_by`` scores compared in
    order (missing scores rank lowest; ties go to the earlier sample)."""

    def __init__(self, rank_by: Sequence[str], name: str = "best_of_n"):
        for s in rank_by:
            score_of({"logprob": 0.0, "num_tokens": 1}, s)  # validates the name
        self.rank_by, self.name = tuple(rank_by), name

    def key(self, row: Row) -> tuple[float, ...]:
        return tuple(_num(score_of(row, s)) for s in self.rank_by)

    def __call__(self, rows: list[Row]) -> tuple[list[Row], FilterReport]:
        best: dict[int, int] = {}
        for i, r in enumerate(rows):
            j = best.get(r["prompt_id"])
            if j is None or self.key(r) > self.key(rows[j]):
                best[r["prompt_id"]] = i
        keep = set(best.values())
        kept = [r for i, r in enumerate(rows) if i in keep]
        reasons = collections.Counter({"not_best_of_n": len(rows) - len(kept)} if len(rows) > len(kept) else {})
        return kept, FilterReport(self.name, len(rows) - len(kept), reasons, len(kept))


def make_pairs(rows: list[Row], source: str, min_margin: float = 0.0) -> tuple[list[Row], FilterReport]:
    """Per prompt: chosen = highest ``source`` score, rejected = lowest, when their gap exceeds
    ``min_margin``. Ties in score: chosen is the most likely sample (teacher mean log-prob), rejected too
    (a confident mistake is the most useful negative). The report counts prompts, not samples."""
    by_prompt: dict[int, list[Row]] = collections.defaultdict(list)
    for r in rows:
        by_prompt[r["prompt_id"]].append(r)
    pairs, reasons = [], collections.Counter()
    for pid in sorted(by_prompt):
        group = by_prompt[pid]
        scored = [r for r in group if score_of(r, source) is not None]
        if len(group) < 2:
            reasons["single_sample"] += 1
            continue
        if len(scored) < 2:
            reasons[f"unscored_{source}"] += 1
            continue
        chosen = max(scored, key=lambda r: (score_of(r, source), _mean_logprob(r), -r["sample_idx"]))
        rejected = min(scored, key=lambda r: (score_of(r, source), -_mean_logprob(r), r["sample_idx"]))
        margin = score_of(chosen, source) - score_of(rejected, source)
        if margin <= min_margin:
            reasons["no_margin"] += 1
            continue
        pairs.append(
            {
                "prompt": chosen["prompt"],
                "chosen": chosen["completion"],
                "rejected": rejected["completion"],
                "chosen_score": score_of(chosen, source),
                "rejected_score": score_of(rejected, source),
                "score_source": source,
                "chosen_sample_idx": chosen["sample_idx"],
                "rejected_sample_idx": rejected["sample_idx"],
                **{k: chosen[k] for k in _PROMPT_PROVENANCE if k in chosen},
            }
        )
    report = FilterReport(f"pairs_by_{source}", len(by_prompt) - len(pairs), reasons, len(pairs))
    return pairs, report


_PROMPT_PROVENANCE = ("prompt_id", "skill", "difficulty", "reference", "teacher", "sampling", "seed")


# ---------------------------------------------------------------------------------------------------------
# Filters from the config.


def sample_filters(f: Mapping[str, Any], seed: int, tokenizer: Any = None) -> list[Callable]:
    """Quality filters over samples (before any accuracy / score selection); ``f`` is the config's whole
    ``filters`` section (``jaxpt.datagen.pipeline.defaults``), as are the other builders' here."""
    fs: list[Callable] = []
    if f["exact_dedup"]:
        fs.append(ExactDedup(keys=("prompt", "completion")))
    if float(f["near_dedup_threshold"] or 0.0) > 0:
        key = {"sample": "_sample", "prompt": "prompt", "completion": "completion"}[f["near_dedup_key"]]
        fs.append(NearDedup(key, threshold=float(f["near_dedup_threshold"]), seed=seed))
    if any(f[k] for k in ("min_chars", "max_chars", "min_tokens", "max_tokens")):
        fs.append(
            LengthFilter(
                "completion",
                min_chars=f["min_chars"] or None,
                max_chars=f["max_chars"] or None,
                min_tokens=f["min_tokens"] or None,
                max_tokens=f["max_tokens"] or None,
                tokenizer=(lambda t: tokenizer(t, add_special_tokens=False)) if tokenizer is not None else None,
            )
        )
    if f["format_regex"]:
        fs.append(FormatFilter("completion", f["format_regex"], mode=f["format_mode"]))
    if f["require_eos"]:
        fs.append(VerifierFilter(lambda r: (bool(r["finished"]), "no_eos_within_max_new_tokens"), name="finished"))
    return fs


def selection_filters(f: Mapping[str, Any], have: set[str]) -> list[Callable]:
    """Accuracy and score thresholds (what SFT keeps; preference pairs need the rejected samples)."""
    fs: list[Callable] = []
    if f["require_correct"] and "verifier" in have:

        def accurate(r: Row) -> tuple[bool, str]:
            if r.get("correct") is None:
                return False, "unverifiable"
            return bool(r["correct"]), "wrong_answer"

        fs.append(VerifierFilter(accurate, name="accuracy"))
    if f["min_reward"] is not None:
        if "reward" not in have:
            raise UserError("filters.min_reward needs scoring.reward_model")
        fs.append(ScoreFilter("rm_score", min_score=float(f["min_reward"]), name="reward_threshold"))
    if f["min_judge"] is not None:
        if "judge" not in have:
            raise UserError("filters.min_judge needs scoring.judge")
        fs.append(ScoreFilter("judge_score", min_score=float(f["min_judge"]), name="judge_threshold"))
    return fs


def balance_filter(f: Mapping[str, Any], levels: Sequence[int], seed: int) -> Callable | None:
    mode = f["balance"]
    if mode == "none":
        return None
    if mode == "equal":
        return ComplexityBalance("difficulty", seed=seed)
    if mode == "cap":
        return ComplexityBalance("difficulty", max_per_level=int(f["max_per_level"]), seed=seed)
    if mode == "proportions":
        props = list(f["proportions"])
        if len(props) != len(levels):
            raise UserError(f"filters.proportions {props} must give one weight per prompts.levels {list(levels)}")
        cap = int(f["max_per_level"] or 0) or None
        return ComplexityBalance(
            "difficulty", max_per_level=cap, proportions=dict(zip(levels, props, strict=True)), seed=seed
        )
    raise UserError(f"filters.balance must be none, equal, cap or proportions, got {mode!r}")
