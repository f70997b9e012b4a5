"""Synthetic data generation: prompts -> teacher samples -> scores -> filters -> SFT set and preference pairs.

    jaxpt generate-data --config=configs/datagen/arithmetic_distill.py --output=runs/datagen/arith

Stages (``run``):

1. **Prompts** from seed tasks at controlled difficulty (:data:`SKILLS`: the arithmetic task generator and a
   few template skills, each with its verifier), drawn by skill / level weights, never repeating an excluded
   prompt (e.g. the eval split); or read from a seed file. Exact and near-duplicate prompts are removed
   (``prompts.exact_dedup``, ``prompts.near_dedup_threshold``) and reported.
2. **Generation**: ``sampling.num_samples`` completions per prompt from the teacher (anything ``load_any``
   loads) with the jitted sampler, ``sampling.batch_size`` rows per call; batch ``k`` uses the key
   ``fold_in(key(seed), k)``, so a batch's samples do not depend on which invocation produced it.
3. **Scoring**: the prompt's verifier (``correct``), a reward model (``rm_score``, ``scoring.reward_model``)
   and a rubric-prompted judge (``judge_score``, ``scoring.judge``: ``"teacher"`` for self-judging, or a
   model path) whose reply is parsed by ``jaxpt.evaluation.evaluate.parse_judge_score``.
4. **Filters** (``jaxpt.datagen.filters``), each reporting rows removed and why: exact / near-duplicate
   removal over the samples, length and format checks, unfinished generations, accuracy (verifier), score
   thresholds (reward model, judge), best-of-N rejection sampling, complexity balance.
5. **Outputs**: ``sft.{jsonl,parquet}`` (rejection-sampled: the best of N per prompt), ``preferences.*``
   (best vs worst sample per prompt by verifier, reward model or self-judgement), ``samples.*`` (everything
   generated, scored), all with provenance columns (teacher, sampling parameters, seed, generation batch,
   scores); ``report.json`` / ``report.md`` with every filter's counts.

Resumability: generation and scoring run in batches, each written to ``shards/<stage>-<k>.jsonl`` (atomically)
before ``progress.json`` records it. Running the same command again continues after the last recorded batch;
a batch that was being written when the run died is simply redone, so no row is lost or duplicated and the
final dataset equals an uninterrupted run's. ``progress.json`` also holds a fingerprint of the config: resuming
with a different config is refused.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import string
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from jaxpt.data import tasks
from jaxpt.datagen.filters import (
    ComplexityBalance,
    ExactDedup,
    FilterReport,
    FormatFilter,
    LengthFilter,
    NearDedup,
    ScoreFilter,
    VerifierFilter,
    apply_filters,
    field_text,
    format_reports,
)

log = logging.getLogger(__name__)

Row = dict[str, Any]

# ---------------------------------------------------------------------------------------------------------
# Skills: prompt templates at difficulty levels 1..3, each with its verifier.


def _head(completion: str) -> str:
    """The answer part of a completion: its first whitespace-separated token."""
    parts = completion.strip().split()
    return parts[0] if parts else ""


def _first_line(completion: str) -> str:
    lines = completion.strip().splitlines()
    return " ".join(lines[0].split()) if lines else ""


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


def _check_head(prompt: str, completion: str, reference: Any) -> bool:
    return reference is not None and _head(completion) == str(reference).strip()


def _check_exact(prompt: str, completion: str, reference: Any) -> bool:
    return reference is not None and _first_line(completion) == " ".join(str(reference).split())


def _check_arithmetic(prompt: str, completion: str, reference: Any) -> bool:
    try:
        return tasks.check_answer(prompt, completion)
    except ValueError:  # not an a+b= prompt: fall back to the reference
        return reference is not None and tasks.parse_answer(completion) == tasks.parse_answer(str(reference))


@dataclasses.dataclass(frozen=True)
class Skill:
    """A prompt family: ``make(rng, level) -> (prompt, reference answer)`` and
    ``check(prompt, completion, reference) -> bool``; ``make`` is None for verify-only skills (seed files)."""

    name: str
    make: Callable[[np.random.Generator, int], tuple[str, str]] | None
    check: Callable[[str, str, Any], bool]
    levels: tuple[int, ...] = (1, 2, 3)
    description: str = ""


SKILLS: dict[str, Skill] = {
    s.name: s
    for s in (
        Skill("arithmetic", _make_arithmetic, _check_arithmetic, tasks.LEVELS, "a+b= / a-b= with L-digit operands"),
        Skill("compare", _make_compare, _check_head, (1, 2, 3), "max(a,b)= with up to L-digit numbers"),
        Skill("reverse", _make_reverse, _check_head, (1, 2, 3), "reverse(word)= for 2-4 / 5-7 / 8-12 letters"),
        Skill("count", _make_count, _check_head, (1, 2, 3), "len(word)= for 2-4 / 5-7 / 8-12 letters"),
        Skill("sort", _make_sort, _check_head, (1, 2, 3), "sort(digits)= with 3 / 5 / 7 digits"),
        Skill("exact", None, _check_exact, (), "the first line of the completion equals the reference"),
    )
}


def verify(skill: str, prompt: Any, completion: str, reference: Any = None) -> bool:
    """Whether ``completion`` answers ``prompt`` correctly according to ``skill``'s verifier."""
    if skill not in SKILLS:
        raise ValueError(f"unknown skill/verifier {skill!r}; known: {sorted(SKILLS)}")
    if not isinstance(prompt, str):  # chat prompt: verify against the last user turn
        prompt = str(prompt[-1]["content"]) if prompt else ""
    return bool(SKILLS[skill].check(prompt, completion, reference))


# ---------------------------------------------------------------------------------------------------------
# Prompts.


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
    from jaxpt.data.sft import load_records

    return [dict(r) for r in load_records(path)]


def generate_prompts(cfg: Mapping[str, Any], seed: int) -> list[Row]:
    """``cfg.num_prompts`` distinct prompts ``{prompt, skill, difficulty, reference}``, deterministic in
    ``seed``: a skill by ``skill_weights``, then a level among the skill's levels in ``levels`` by
    ``level_weights``. Prompts in ``exclude_file`` (its ``prompt`` column) are never produced."""
    skills = list(cfg["skills"])
    for s in skills:
        if s not in SKILLS or SKILLS[s].make is None:
            generative = sorted(k for k, v in SKILLS.items() if v.make)
            raise ValueError(f"skill {s!r} cannot generate prompts; choose from {generative}")
    levels = [int(x) for x in cfg["levels"]]
    p_skill = _weights(skills, cfg.get("skill_weights", ()))
    p_level_all = _weights(levels, cfg.get("level_weights", ()))
    exclude = set()
    if cfg.get("exclude_file"):
        exclude = {json.dumps(r["prompt"]) for r in _read_table(cfg["exclude_file"])}
    rng = np.random.default_rng(seed)
    seen, out = set(exclude), []
    n = int(cfg["num_prompts"])
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise ValueError(f"could only draw {len(out)} distinct prompts of {n}: widen skills/levels")
        skill = SKILLS[skills[int(rng.choice(len(skills), p=p_skill))]]
        allowed = [i for i, lv in enumerate(levels) if lv in skill.levels]
        if not allowed:
            raise ValueError(f"skill {skill.name!r} has levels {skill.levels}; none in {levels}")
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
    n = int(cfg.get("num_prompts", 0) or 0)
    out = []
    for i, r in enumerate(rows[:n] if n else rows):
        if r.get("prompt") is None:
            raise ValueError(f"seed file {cfg['seed_file']} row {i} has no 'prompt'")
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
    if cfg.get("exact_dedup", True):
        fs.append(ExactDedup(keys=("prompt",), name="prompt_exact_dedup"))
    if float(cfg.get("near_dedup_threshold", 0.0) or 0.0) > 0:
        fs.append(
            NearDedup("prompt", threshold=float(cfg["near_dedup_threshold"]), seed=seed, name="prompt_near_dedup")
        )
    return fs


def build_prompts(cfg: Mapping[str, Any], seed: int) -> tuple[list[Row], list[FilterReport]]:
    """The prompt table (``prompt_id`` = position) after prompt-level dedup, and the dedup reports."""
    rows = seed_prompts(cfg) if cfg.get("seed_file") else generate_prompts(cfg, seed)
    rows, reports = apply_filters(rows, prompt_filters(cfg, seed))
    return [{"prompt_id": i, **r} for i, r in enumerate(rows)], reports


# ---------------------------------------------------------------------------------------------------------
# Files: atomic JSONL, progress, outputs.


def _write_jsonl(path: str, rows: Iterable[Row]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)  # a crash never leaves a half-written shard under the final name


def _read_jsonl(path: str) -> list[Row]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, allow_nan=True)
        f.write("\n")
    os.replace(tmp, path)


def write_dataset(rows: list[Row], path_stem: str, fmt: str) -> str:
    """``rows`` as ``path_stem.jsonl`` (one JSON object per line, what ``datasets``' json builder reads) or
    ``path_stem.parquet`` (via ``datasets.Dataset.to_parquet``). Returns the path."""
    if fmt == "jsonl":
        path = path_stem + ".jsonl"
        _write_jsonl(path, rows)
        return path
    if fmt == "parquet":
        import datasets

        path = path_stem + ".parquet"
        ds = datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict({})
        ds.to_parquet(path + ".tmp")
        os.replace(path + ".tmp", path)
        return path
    raise ValueError(f"output.format must be 'jsonl' or 'parquet', got {fmt!r}")


class Interrupted(RuntimeError):
    """Raised by :func:`run` when ``stop_after_batches`` is reached (as a preemption would stop it)."""


class ResumeMismatch(ValueError):
    """The output directory holds a run of a different config (resuming would mix two datasets)."""


class Progress:
    """``progress.json``: the config fingerprint and, per stage, how many batches are safely on disk."""

    def __init__(self, out_dir: str, fingerprint: str):
        self.path = os.path.join(out_dir, "progress.json")
        self.state: dict[str, Any] = {"fingerprint": fingerprint, "stages": {}}
        if os.path.exists(self.path):
            with open(self.path) as f:
                old = json.load(f)
            if old.get("fingerprint") != fingerprint:
                raise ResumeMismatch(
                    f"{out_dir} holds a data-generation run with a different config (fingerprint "
                    f"{old.get('fingerprint')} != {fingerprint}); use a new --output or --overwrite"
                )
            self.state = old

    def done(self, stage: str) -> int:
        return int(self.state["stages"].get(stage, {}).get("completed", 0))

    def record(self, stage: str, completed: int, total: int) -> None:
        self.state["stages"][stage] = {"completed": completed, "num_batches": total}
        _write_json(self.path, self.state)


def fingerprint(config: ConfigDict) -> str:
    """Hash of everything that decides the generated rows (not ``output.*``), and of the seed file's bytes."""
    from jaxpt.config import config_to_dict

    d = config_to_dict(config)
    d.pop("output", None)
    h = hashlib.sha256(json.dumps(d, sort_keys=True).encode())
    for path in (d.get("prompts", {}).get("seed_file"), d.get("prompts", {}).get("exclude_file")):
        if path and os.path.isfile(path):
            with open(path, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()[:16]


class _Runner:
    """Runs batched stages with shards + progress; ``stop_after`` counts batches across stages."""

    def __init__(self, out_dir: str, progress: Progress, stop_after: int | None):
        self.out_dir, self.progress, self.stop_after = out_dir, progress, stop_after
        self.batches_run = 0
        os.makedirs(os.path.join(out_dir, "shards"), exist_ok=True)

    def shard(self, stage: str, k: int) -> str:
        return os.path.join(self.out_dir, "shards", f"{stage}-{k:05d}.jsonl")

    def stage(self, name: str, num_batches: int, fn: Callable[[int], list[Row]]) -> list[Row]:
        for k in range(self.progress.done(name), num_batches):
            if self.stop_after is not None and self.batches_run >= self.stop_after:
                raise Interrupted(f"stopped after {self.batches_run} batches (stage {name}, batch {k})")
            t0 = time.perf_counter()
            rows = fn(k)
            _write_jsonl(self.shard(name, k), rows)
            self.progress.record(name, k + 1, num_batches)
            self.batches_run += 1
            log.info("%s batch %d/%d: %d rows in %.1fs", name, k + 1, num_batches, len(rows), time.perf_counter() - t0)
        out: list[Row] = []
        for k in range(num_batches):
            out += _read_jsonl(self.shard(name, k))
        return out


# ---------------------------------------------------------------------------------------------------------
# Scores, selection and pairs.


def _teacher_tokenizer_dir(teacher: Mapping[str, Any]) -> str:
    if teacher.get("tokenizer"):
        return teacher["tokenizer"]
    path = teacher["path"]
    if os.path.isdir(os.path.join(path, "model")):  # a run workdir
        return os.path.join(path, "model")
    return path


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
    raise ValueError(f"unknown score source {source!r}; choose from {SCORE_SOURCES}")


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
    """Quality filters over samples (before any accuracy / score selection)."""
    fs: list[Callable] = []
    if f.get("exact_dedup", True):
        fs.append(ExactDedup(keys=("prompt", "completion")))
    if float(f.get("near_dedup_threshold", 0.0) or 0.0) > 0:
        key = {"sample": "_sample", "prompt": "prompt", "completion": "completion"}[f.get("near_dedup_key", "sample")]
        fs.append(NearDedup(key, threshold=float(f["near_dedup_threshold"]), seed=seed))
    if any(f.get(k) for k in ("min_chars", "max_chars", "min_tokens", "max_tokens")):
        fs.append(
            LengthFilter(
                "completion",
                min_chars=f.get("min_chars") or None,
                max_chars=f.get("max_chars") or None,
                min_tokens=f.get("min_tokens") or None,
                max_tokens=f.get("max_tokens") or None,
                tokenizer=(lambda t: tokenizer(t, add_special_tokens=False)) if tokenizer is not None else None,
            )
        )
    if f.get("format_regex"):
        fs.append(FormatFilter("completion", f["format_regex"], mode=f.get("format_mode", "search")))
    if f.get("require_eos", False):
        fs.append(VerifierFilter(lambda r: (bool(r["finished"]), "no_eos_within_max_new_tokens"), name="finished"))
    return fs


def selection_filters(f: Mapping[str, Any], have: set[str]) -> list[Callable]:
    """Accuracy and score thresholds (what SFT keeps; preference pairs need the rejected samples)."""
    fs: list[Callable] = []
    if f.get("require_correct", True) and "verifier" in have:

        def accurate(r: Row) -> tuple[bool, str]:
            if r.get("correct") is None:
                return False, "unverifiable"
            return bool(r["correct"]), "wrong_answer"

        fs.append(VerifierFilter(accurate, name="accuracy"))
    if f.get("min_reward") is not None:
        if "reward" not in have:
            raise ValueError("filters.min_reward needs scoring.reward_model")
        fs.append(ScoreFilter("rm_score", min_score=float(f["min_reward"]), name="reward_threshold"))
    if f.get("min_judge") is not None:
        if "judge" not in have:
            raise ValueError("filters.min_judge needs scoring.judge")
        fs.append(ScoreFilter("judge_score", min_score=float(f["min_judge"]), name="judge_threshold"))
    return fs


def balance_filter(f: Mapping[str, Any], levels: Sequence[int], seed: int) -> Callable | None:
    mode = f.get("balance", "none")
    if mode == "none":
        return None
    if mode == "equal":
        return ComplexityBalance("difficulty", seed=seed)
    if mode == "cap":
        return ComplexityBalance("difficulty", max_per_level=int(f["max_per_level"]), seed=seed)
    if mode == "proportions":
        props = list(f["proportions"])
        if len(props) != len(levels):
            raise ValueError(f"filters.proportions {props} must give one weight per prompts.levels {list(levels)}")
        cap = int(f.get("max_per_level", 0) or 0) or None
        return ComplexityBalance(
            "difficulty", max_per_level=cap, proportions=dict(zip(levels, props, strict=True)), seed=seed
        )
    raise ValueError(f"filters.balance must be none, equal, cap or proportions, got {mode!r}")


# ---------------------------------------------------------------------------------------------------------
# The run.


def _sampling_record(s: Mapping[str, Any]) -> str:
    keys = ("num_samples", "temperature", "top_k", "top_p", "max_new_tokens", "max_prompt_length")
    return json.dumps({k: s[k] for k in keys if k in s}, sort_keys=True)


def run(
    config: ConfigDict,
    output_dir: str,
    stop_after_batches: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Generate, score, filter and write the datasets of ``config`` under ``output_dir`` (see module doc).

    Re-running into the same ``output_dir`` resumes (same config required). ``stop_after_batches`` raises
    :class:`Interrupted` after that many generation / scoring batches, as a preemption would (tests).
    Returns ``{"paths", "counts", "reports", "batches_run"}``.
    """
    from jaxpt.config import save_config
    from jaxpt.evaluation.evaluate import (
        RubricJudge,
        load_model,
        load_reward_model,
        make_sampling,
        mean_judge_score,
        reward_scorer,
        sample_batch,
    )

    t_start = time.perf_counter()
    if overwrite and os.path.isdir(output_dir):
        shutil.rmtree(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    fp = fingerprint(config)
    progress = Progress(output_dir, fp)
    save_config(config, output_dir)
    seed = int(config.seed)
    pc, sc, scoring, filt = config.prompts, config.sampling, config.scoring, config.filters
    teacher_cfg = config.teacher
    teacher_name = teacher_cfg.get("name") or teacher_cfg.path
    sampling_json = _sampling_record(sc)

    # 1. prompts
    prompts, prompt_reports = build_prompts(pc, seed)
    if not prompts:
        raise ValueError("no prompts left after prompt filtering")
    if pc.get("chat", False):  # stored as the conversation the teacher saw, so SFT tokenises it the same way
        for p in prompts:
            if isinstance(p["prompt"], str):
                p["prompt"] = [{"role": "user", "content": p["prompt"]}]
    prompts_path = os.path.join(output_dir, "prompts.jsonl")
    if os.path.exists(prompts_path) and _read_jsonl(prompts_path) != json.loads(json.dumps(prompts)):
        raise ResumeMismatch(f"{prompts_path} differs from the prompts this config generates; use a new --output")
    _write_jsonl(prompts_path, prompts)
    n_samples = int(sc.num_samples)
    flat = [(p["prompt_id"], j) for p in prompts for j in range(n_samples)]
    bs = int(sc.batch_size)
    num_batches = math.ceil(len(flat) / bs)
    runner = _Runner(output_dir, progress, stop_after_batches)

    teacher_box: dict[str, Any] = {}

    def teacher():
        if "model" not in teacher_box:
            teacher_box["model"] = load_model(teacher_cfg.path, teacher_cfg.get("tokenizer", ""))
        return teacher_box["model"]

    # 2. generation
    import jax

    key = jax.random.key(seed)

    def gen_batch(k: int) -> list[Row]:
        m = teacher()
        items = flat[k * bs : (k + 1) * bs]
        outs = sample_batch(
            m,
            [prompts[pid]["prompt"] for pid, _ in items],
            make_sampling(sc, m.config, m.tokenizer),
            jax.random.fold_in(key, k),
            bs,
            int(sc.max_prompt_length),
            bool(pc.get("chat", False)),
        )
        return [{"prompt_id": pid, "sample_idx": j, "batch": k, **o} for (pid, j), o in zip(items, outs, strict=True)]

    generated = runner.stage("generate", num_batches, gen_batch)
    samples: list[Row] = []
    for g in generated:
        p = prompts[g["prompt_id"]]
        samples.append(
            {
                "prompt": p["prompt"],
                "completion": g["completion"],
                "prompt_id": p["prompt_id"],
                "sample_idx": g["sample_idx"],
                "skill": p["skill"],
                "difficulty": p["difficulty"],
                "reference": p["reference"],
                "teacher": teacher_name,
                "sampling": sampling_json,
                "seed": seed,
                "batch": g["batch"],
                "num_tokens": g["num_tokens"],
                "logprob": g["logprob"],
                "finished": g["finished"],
            }
        )

    # 3. scores
    have = {"logprob"}
    if scoring.get("verifier", True):
        for s in samples:
            s["correct"] = verify(s["skill"], s["prompt"], s["completion"], s["reference"]) if s["skill"] else None
        if any(s["correct"] is not None for s in samples):
            have.add("verifier")
    score_bs = int(scoring.get("batch_size", bs))
    score_batches = math.ceil(len(samples) / score_bs)
    if scoring.get("reward_model"):
        box: dict[str, Any] = {}

        def rm_batch(k: int) -> list[Row]:
            if "scorer" not in box:
                box["scorer"] = reward_scorer(
                    load_reward_model(scoring.reward_model),
                    seq_len=int(scoring.get("reward_seq_len", 256)),
                    batch_size=score_bs,
                    chat=bool(pc.get("chat", False)),
                )
            chunk = samples[k * score_bs : (k + 1) * score_bs]
            scores = box["scorer"].score(
                [s["prompt"] for s in chunk], [s["completion"] for s in chunk], [s["finished"] for s in chunk]
            )
            return [{"rm_score": float(v)} for v in scores]

        for s, r in zip(samples, runner.stage("reward", score_batches, rm_batch), strict=True):
            s["rm_score"] = r["rm_score"]
        have.add("reward")
    if scoring.get("judge"):
        box = {}

        def judge_batch(k: int) -> list[Row]:
            if "judge" not in box:
                jm = teacher() if scoring.judge == "teacher" else load_model(scoring.judge)
                box["judge"] = RubricJudge(
                    jm,
                    criteria=tuple(scoring.get("judge_criteria", ("correctness",))),
                    template=scoring.get("judge_template", ""),
                    low=float(scoring.get("judge_low", 1)),
                    high=float(scoring.get("judge_high", 10)),
                    max_new_tokens=int(scoring.get("judge_max_new_tokens", 8)),
                    batch_size=score_bs,
                    max_prompt_length=int(scoring.get("judge_max_prompt_length", 512)),
                    chat=bool(scoring.get("judge_chat", False)),
                )
            judge = box["judge"]
            chunk = samples[k * score_bs : (k + 1) * score_bs]
            replies = judge.replies([s["prompt"] for s in chunk], [s["completion"] for s in chunk])
            from jaxpt.evaluation.evaluate import parse_judge_score

            scores = {c: [parse_judge_score(t, judge.low, judge.high) for t in v] for c, v in replies.items()}
            means = mean_judge_score(scores)
            return [
                {"judge_score": means[i], "judge_replies": {c: replies[c][i] for c in replies}}
                for i in range(len(chunk))
            ]

        for s, r in zip(samples, runner.stage("judge", score_batches, judge_batch), strict=True):
            s["judge_score"], s["judge_replies"] = r["judge_score"], r["judge_replies"]
        have.add("judge")

    # 4. filters
    tokenizer = None
    if filt.get("min_tokens") or filt.get("max_tokens"):
        from jaxpt.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(_teacher_tokenizer_dir(teacher_cfg))
    pool = [dict(s, _sample=f"{field_text(s, 'prompt')}\n{s['completion']}") for s in samples]
    clean, quality_reports = apply_filters(pool, sample_filters(filt, seed, tokenizer))
    balance = balance_filter(filt, [int(x) for x in pc.get("levels", ())], seed)
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]  # noqa: E731
    fmt = config.output.get("format", "jsonl")
    paths: dict[str, str] = {}
    reports: dict[str, Any] = {"prompts": [r.to_dict() for r in prompt_reports]}
    counts: dict[str, int] = {"prompts": len(prompts), "samples": len(samples), "clean_samples": len(clean)}
    md = [f"# Data generation report: {teacher_name}", "", f"Fingerprint `{fp}`, seed {seed}.", ""]
    md += ["## Prompts", "", format_reports(prompt_reports) if prompt_reports else "(no prompt filters)", ""]

    if config.sft.get("enabled", True):
        chain = selection_filters(filt, have)
        if config.sft.get("best_of_n", True):
            chain.append(BestOfN([s for s in config.sft.get("rank_by", SCORE_SOURCES) if s in have]))
        if balance is not None:
            chain.append(balance)
        sft_rows, sft_reports = apply_filters(clean, chain)
        sft_reports = quality_reports + sft_reports
        paths["sft"] = write_dataset(strip(sft_rows), os.path.join(output_dir, "sft"), fmt)
        reports["sft"] = [r.to_dict() for r in sft_reports]
        counts["sft"] = len(sft_rows)
        md += ["## SFT set (rejection sampling)", "", format_reports(sft_reports), ""]
    if config.preferences.get("enabled", True):
        source = config.preferences.get("score", "verifier")
        if source not in have:
            raise ValueError(f"preferences.score={source!r} is not available; scores computed: {sorted(have)}")
        pairs, pair_report = make_pairs(clean, source, float(config.preferences.get("min_margin", 0.0)))
        pair_reports = [pair_report]
        if balance is not None:
            pairs, r = balance(pairs)
            pair_reports.append(r)
        paths["preferences"] = write_dataset(strip(pairs), os.path.join(output_dir, "preferences"), fmt)
        reports["preferences"] = [r.to_dict() for r in quality_reports + pair_reports]
        counts["preference_pairs"] = len(pairs)
        md += ["## Preference pairs (per prompt)", "", format_reports(quality_reports + pair_reports), ""]
    if config.output.get("keep_samples", True):
        paths["samples"] = write_dataset(strip(samples), os.path.join(output_dir, "samples"), fmt)

    stats = _sample_stats(samples, have)
    md += ["## Samples", "", "| statistic | value |", "|---|---|"]
    md += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in stats.items()]
    report = {
        "fingerprint": fp,
        "teacher": teacher_name,
        "sampling": json.loads(sampling_json),
        "seed": seed,
        "counts": counts,
        "sample_stats": stats,
        "filters": reports,
        "paths": paths,
        "batches_run_this_invocation": runner.batches_run,
        "seconds_this_invocation": round(time.perf_counter() - t_start, 2),
    }
    _write_json(os.path.join(output_dir, "report.json"), report)
    with open(os.path.join(output_dir, "report.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    return {"paths": paths, "counts": counts, "reports": reports, "batches_run": runner.batches_run}


def _sample_stats(samples: list[Row], have: set[str]) -> dict[str, Any]:
    stats: dict[str, Any] = {"samples": len(samples)}
    if not samples:
        return stats
    stats["finished_fraction"] = float(np.mean([s["finished"] for s in samples]))
    stats["mean_completion_tokens"] = float(np.mean([s["num_tokens"] for s in samples]))
    if "verifier" in have:
        ok = [s["correct"] for s in samples if s["correct"] is not None]
        stats["teacher_accuracy"] = float(np.mean(ok)) if ok else float("nan")
        by_level: dict[Any, list[bool]] = collections.defaultdict(list)
        for s in samples:
            if s["correct"] is not None:
                by_level[s["difficulty"]].append(s["correct"])
        for lv in sorted(by_level, key=str):
            stats[f"teacher_accuracy_level_{lv}"] = float(np.mean(by_level[lv]))
        by_skill: dict[Any, list[bool]] = collections.defaultdict(list)
        for s in samples:
            if s["correct"] is not None:
                by_skill[s["skill"]].append(s["correct"])
        if len(by_skill) > 1:
            for sk in sorted(by_skill, key=str):
                stats[f"teacher_accuracy_skill_{sk}"] = float(np.mean(by_skill[sk]))
        per_prompt: dict[int, bool] = collections.defaultdict(bool)
        for s in samples:
            per_prompt[s["prompt_id"]] |= bool(s["correct"])
        stats["pass_at_n"] = float(np.mean(list(per_prompt.values())))
    if "reward" in have:
        stats["mean_rm_score"] = float(np.mean([s["rm_score"] for s in samples]))
    if "judge" in have:
        js = [s["judge_score"] for s in samples if s.get("judge_score") is not None]
        stats["judge_parsed_fraction"] = len(js) / len(samples)
        stats["mean_judge_score"] = float(np.mean(js)) if js else float("nan")
    return stats


__all__ = [
    "SKILLS",
    "BestOfN",
    "Interrupted",
    "ResumeMismatch",
    "Skill",
    "build_prompts",
    "fingerprint",
    "generate_prompts",
    "make_pairs",
    "run",
    "score_of",
    "seed_prompts",
    "verify",
    "write_dataset",
]
