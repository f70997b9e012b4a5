"""Synthetic data generation: prompts -> teacher samples -> scores -> filters -> SFT set and preference pairs.

    jaxpt generate-data --config=configs/datagen/arithmetic_distill.py --output=runs/datagen/arith

Stages (``run``; every field of the config is in :func:`defaults`):

1. **Prompts** (``jaxpt.datagen.prompts``) from seed tasks at controlled difficulty (``SKILLS``: the
   arithmetic task generator and a few template skills, each checked by the ``jaxpt.rewards`` verifier of its
   name), drawn by skill / level weights, never repeating an excluded prompt (e.g. the eval split); or read
   from a seed file. Exact and near-duplicate prompts are removed and reported.
2. **Generation**: ``sampling.num_samples`` completions per prompt from the teacher (anything ``load_any``
   loads) with the sampler front-end, ``sampling.batch_size`` rows per call; batch ``k`` uses the key
   ``fold_in(key(seed), k)``, so a batch's samples do not depend on which invocation produced it.
3. **Scoring**: the prompt's verifier (``correct``), a reward model (``rm_score``, ``scoring.reward_model``)
   and a rubric-prompted judge (``judge_score``, ``scoring.judge``: ``"teacher"`` for self-judging, or a
   model path) whose reply is parsed by ``jaxpt.evaluation.judge.parse_judge_score``.
4. **Filters** (``jaxpt.datagen.filters``, chosen from the config by ``jaxpt.datagen.selection``), each
   reporting rows removed and why: exact / near-duplicate removal over the samples, length and format checks,
   unfinished generations, accuracy (verifier), score thresholds (reward model, judge), best-of-N rejection
   sampling, complexity balance.
5. **Outputs**: ``sft.{jsonl,parquet}`` (rejection-sampled: the best of N per prompt), ``preferences.*``
   (best vs worst sample per prompt by verifier, reward model or self-judgement), ``samples.*`` (everything
   generated, scored), all with provenance columns (teacher, sampling parameters, seed, generation batch,
   scores); ``report.json`` / ``report.md`` with every filter's counts.

Resumability (``jaxpt.datagen.store``): generation and scoring run in batches, each written to
``shards/<stage>-<k>.jsonl`` (atomically) before ``progress.json`` records it. Running the same command again
continues after the last recorded batch; a batch that was being written when the run died is simply redone,
so no row is lost or duplicated and the final dataset equals an uninterrupted run's. ``progress.json`` also
holds a fingerprint of the config: resuming with a different config is refused.
"""

from __future__ import annotations

import collections
import json
import math
import os
import shutil
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict, config_dict

from jaxpt.config import save_config, with_defaults
from jaxpt.data.tokenizer import load_tokenizer
from jaxpt.datagen.filters import apply_filters, field_text, format_reports
from jaxpt.datagen.prompts import build_prompts
from jaxpt.datagen.selection import (
    SCORE_SOURCES,
    BestOfN,
    balance_filter,
    make_pairs,
    sample_filters,
    selection_filters,
)
from jaxpt.datagen.store import (
    Interrupted,
    Progress,
    ResumeMismatch,
    StageRunner,
    fingerprint,
    read_jsonl,
    write_dataset,
    write_json,
    write_jsonl,
)
from jaxpt.evaluation.judge import RubricJudge, mean_judge_score, parse_judge_score
from jaxpt.generation.frontend import Sampler, sampling_from
from jaxpt.models.loaded import load_model, load_reward_model
from jaxpt.rewards import RewardModelScorer, verify

Row = dict[str, Any]

__all__ = ["Interrupted", "ResumeMismatch", "defaults", "run"]


def defaults() -> ConfigDict:
    """Every field of a data-generation config with its default; ``configs/datagen/`` files start from this
    and :func:`run` reads a config through it (an unknown field is an error naming it)."""
    c = ConfigDict()
    c.seed = 0
    # Any model `load_any` loads: HF dir, Orbax params dir or a training run's workdir.
    c.teacher = ConfigDict(dict(path="", tokenizer="", name=""))
    c.prompts = ConfigDict(
        dict(
            num_prompts=256,  # prompts to generate (with seed_file: the first N rows, 0 = all)
            skills=("arithmetic",),  # see jaxpt.datagen.prompts.SKILLS
            skill_weights=(),  # () = uniform over skills
            levels=(1, 2),
            level_weights=(),  # () = uniform over levels
            seed_file="",  # a JSONL/Parquet of seed prompts instead of generated ones
            exclude_file="",  # prompts (its `prompt` column) never to generate, e.g. an eval split
            chat=False,  # render prompts as one user message through the teacher's chat template
            exact_dedup=True,
            near_dedup_threshold=0.0,  # MinHash Jaccard threshold over prompts; 0 = off
        )
    )
    c.sampling = ConfigDict(
        dict(
            num_samples=4,
            temperature=0.8,
            top_k=0,
            top_p=1.0,
            max_new_tokens=64,
            batch_size=64,  # prompt x sample rows per sampler call (and per resumable shard)
            max_prompt_length=256,
        )
    )
    c.scoring = ConfigDict(
        dict(
            verifier=True,  # each prompt's skill verifier -> `correct`
            batch_size=0,  # rows per reward / judge batch (and per resumable shard); 0 = sampling.batch_size
            reward_model="",  # a reward model dir -> `rm_score`
            reward_seq_len=256,  # prompt + completion tokens it reads, kept from the end
            judge="",  # "teacher" (self-judged) or a model path -> `judge_score`
            judge_criteria=("correctness",),
            judge_template="",  # '' = jaxpt.evaluation.judge.JUDGE_TEMPLATE
            judge_low=1,
            judge_high=10,
            judge_max_new_tokens=8,
            judge_max_prompt_length=512,
            judge_chat=False,
        )
    )
    c.filters = ConfigDict(
        dict(
            exact_dedup=True,  # repeated (prompt, completion) samples
            near_dedup_threshold=0.0,  # MinHash Jaccard threshold over near_dedup_key; 0 = off
            near_dedup_key="sample",  # sample (prompt + completion) | prompt | completion
            min_chars=0,
            max_chars=0,  # 0 = no limit
            min_tokens=0,
            max_tokens=0,
            format_regex="",  # '' = no format check
            format_mode="search",
            require_eos=False,  # drop generations cut off by max_new_tokens
            require_correct=True,  # accuracy filter (SFT set only; pairs need the wrong samples)
            min_reward=config_dict.placeholder(float),  # reward-model score threshold (SFT set)
            min_judge=config_dict.placeholder(float),  # judge score threshold (SFT set)
            balance="none",  # complexity balance: none | equal | cap | proportions
            max_per_level=0,
            proportions=(),  # one weight per prompts.levels
        )
    )
    c.sft = ConfigDict(dict(enabled=True, best_of_n=True, rank_by=SCORE_SOURCES))
    c.preferences = ConfigDict(dict(enabled=True, score="verifier", min_margin=0.0))
    c.output = ConfigDict(dict(format="jsonl", keep_samples=True))  # jsonl | parquet
    return c


def _teacher_tokenizer_dir(teacher: Mapping[str, Any]) -> str:
    if teacher["tokenizer"]:
        return teacher["tokenizer"]
    path = teacher["path"]
    if os.path.isdir(os.path.join(path, "model")):  # a run workdir
        return os.path.join(path, "model")
    return path


def _sampling_record(s: Mapping[str, Any]) -> str:
    keys = ("num_samples", "temperature", "top_k", "top_p", "max_new_tokens", "max_prompt_length")
    return json.dumps({k: s[k] for k in keys if k in s}, sort_keys=True)


class _Teacher:
    """The teacher model, loaded on first use (a resumed run whose samples are all on disk never loads it)."""

    def __init__(self, cfg: ConfigDict):
        self.cfg, self._model = cfg, None

    def __call__(self):
        if self._model is None:
            self._model = load_model(self.cfg.path, self.cfg.tokenizer)
        return self._model


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
    t_start = time.perf_counter()
    config = with_defaults(config, defaults())
    if overwrite and os.path.isdir(output_dir):
        shutil.rmtree(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    fp = fingerprint(config)
    progress = Progress(output_dir, fp)
    save_config(config, output_dir)
    runner = StageRunner(output_dir, progress, stop_after_batches)
    teacher = _Teacher(config.teacher)

    prompts, prompt_reports = _prompts_stage(config, output_dir)
    samples = _generate_stage(config, prompts, teacher, runner)
    have = _score_stage(config, samples, teacher, runner)
    paths, counts, reports, md = _write_outputs(config, output_dir, prompts, prompt_reports, samples, have, fp)

    stats = _sample_stats(samples, have)
    md += ["## Samples", "", "| statistic | value |", "|---|---|"]
    md += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in stats.items()]
    report = {
        "fingerprint": fp,
        "teacher": config.teacher.name or config.teacher.path,
        "sampling": json.loads(_sampling_record(config.sampling)),
        "seed": config.seed,
        "counts": counts,
        "sample_stats": stats,
        "filters": reports,
        "paths": paths,
        "batches_run_this_invocation": runner.batches_run,
        "seconds_this_invocation": round(time.perf_counter() - t_start, 2),
    }
    write_json(os.path.join(output_dir, "report.json"), report)
    with open(os.path.join(output_dir, "report.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    return {"paths": paths, "counts": counts, "reports": reports, "batches_run": runner.batches_run}


def _prompts_stage(config: ConfigDict, output_dir: str) -> tuple[list[Row], list]:
    """1. The prompt table, written to ``prompts.jsonl`` (a resumed run must generate the same one)."""
    pc = config.prompts
    prompts, reports = build_prompts(pc, config.seed)
    if not prompts:
        raise ValueError("no prompts left after prompt filtering")
    if pc.chat:  # stored as the conversation the teacher saw, so SFT tokenises it the same way
        for p in prompts:
            if isinstance(p["prompt"], str):
                p["prompt"] = [{"role": "user", "content": p["prompt"]}]
    path = os.path.join(output_dir, "prompts.jsonl")
    if os.path.exists(path) and read_jsonl(path) != json.loads(json.dumps(prompts)):
        raise ResumeMismatch(f"{path} differs from the prompts this config generates; use a new --output")
    write_jsonl(path, prompts)
    return prompts, reports


def _generate_stage(config: ConfigDict, prompts: list[Row], teacher: _Teacher, runner: StageRunner) -> list[Row]:
    """2. ``num_samples`` teacher completions per prompt, ``batch_size`` rows per resumable batch; batch ``k``
    samples with ``fold_in(key(seed), k)``."""
    sc = config.sampling
    flat = [(p["prompt_id"], j) for p in prompts for j in range(sc.num_samples)]
    bs = sc.batch_size
    key = jax.random.key(config.seed)
    sampler: list[Sampler] = []

    def gen_batch(k: int) -> list[Row]:
        if not sampler:
            m = teacher()
            sampling = sampling_from(sc, m.config, m.tokenizer, "sampling")
            sampler.append(
                Sampler(
                    m.config,
                    m.tokenizer,
                    sampling,
                    max_prompt_len=sc.max_prompt_length,
                    chat=config.prompts.chat,
                    batch_size=bs,
                )
            )
        items = flat[k * bs : (k + 1) * bs]
        out = sampler[0](teacher().params, [prompts[pid]["prompt"] for pid, _ in items], jax.random.fold_in(key, k))
        return [
            {"prompt_id": pid, "sample_idx": j, "batch": k, **o} for (pid, j), o in zip(items, out.rows(), strict=True)
        ]

    generated = runner.stage("generate", math.ceil(len(flat) / bs), gen_batch)
    provenance = {
        "teacher": config.teacher.name or config.teacher.path,
        "sampling": _sampling_record(sc),
        "seed": config.seed,
    }
    samples = []
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
                **provenance,
                "batch": g["batch"],
                "num_tokens": g["num_tokens"],
                "logprob": g["logprob"],
                "finished": g["finished"],
            }
        )
    return samples


def _score_stage(config: ConfigDict, samples: list[Row], teacher: _Teacher, runner: StageRunner) -> set[str]:
    """3. Verifier (``correct``), reward model (``rm_score``) and judge (``judge_score``) scores, in place;
    returns the score sources computed."""
    scoring, chat = config.scoring, config.prompts.chat
    have = {"logprob"}
    if scoring.verifier:
        for s in samples:
            s["correct"] = verify(s["skill"], s["prompt"], s["completion"], s["reference"]) if s["skill"] else None
        if any(s["correct"] is not None for s in samples):
            have.add("verifier")
    bs = scoring.batch_size or config.sampling.batch_size
    num_batches = math.ceil(len(samples) / bs)
    chunk = lambda k: samples[k * bs : (k + 1) * bs]  # noqa: E731
    if scoring.reward_model:
        scorer: list[RewardModelScorer] = []

        def rm_batch(k: int) -> list[Row]:
            if not scorer:
                rm = load_reward_model(scoring.reward_model)
                scorer.append(
                    RewardModelScorer(
                        rm.config, rm.params, rm.tokenizer, max_length=scoring.reward_seq_len, batch_size=bs, chat=chat
                    )
                )
            rows = chunk(k)
            scores = scorer[0].score(
                [s["prompt"] for s in rows], [s["completion"] for s in rows], [s["finished"] for s in rows]
            )
            return [{"rm_score": float(v)} for v in scores]

        for s, r in zip(samples, runner.stage("reward", num_batches, rm_batch), strict=True):
            s["rm_score"] = r["rm_score"]
        have.add("reward")
    if scoring.judge:
        judges: list[RubricJudge] = []

        def judge_batch(k: int) -> list[Row]:
            if not judges:
                jm = teacher() if scoring.judge == "teacher" else load_model(scoring.judge)
                judges.append(
                    RubricJudge(
                        jm,
                        criteria=tuple(scoring.judge_criteria),
                        template=scoring.judge_template,
                        low=float(scoring.judge_low),
                        high=float(scoring.judge_high),
                        max_new_tokens=scoring.judge_max_new_tokens,
                        batch_size=bs,
                        max_prompt_length=scoring.judge_max_prompt_length,
                        chat=scoring.judge_chat,
                    )
                )
            judge, rows = judges[0], chunk(k)
            replies = judge.replies([s["prompt"] for s in rows], [s["completion"] for s in rows])
            scores = {c: [parse_judge_score(t, judge.low, judge.high) for t in v] for c, v in replies.items()}
            means = mean_judge_score(scores)
            return [
                {"judge_score": means[i], "judge_replies": {c: replies[c][i] for c in replies}}
                for i in range(len(rows))
            ]

        for s, r in zip(samples, runner.stage("judge", num_batches, judge_batch), strict=True):
            s["judge_score"], s["judge_replies"] = r["judge_score"], r["judge_replies"]
        have.add("judge")
    return have


def _write_outputs(
    config: ConfigDict,
    output_dir: str,
    prompts: list[Row],
    prompt_reports: list,
    samples: list[Row],
    have: set[str],
    fp: str,
) -> tuple[dict[str, str], dict[str, int], dict[str, Any], list[str]]:
    """4 + 5. Quality filters, then the SFT set (selection + best-of-N), the preference pairs and the samples;
    returns ``(paths, counts, filter reports, report.md lines)``."""
    filt, seed = config.filters, config.seed
    tokenizer = None
    if filt.min_tokens or filt.max_tokens:
        tokenizer = load_tokenizer(_teacher_tokenizer_dir(config.teacher))
    pool = [dict(s, _sample=f"{field_text(s, 'prompt')}\n{s['completion']}") for s in samples]
    clean, quality_reports = apply_filters(pool, sample_filters(filt, seed, tokenizer))
    balance = balance_filter(filt, [int(x) for x in config.prompts.levels], seed)
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]  # noqa: E731
    fmt = config.output.format
    paths: dict[str, str] = {}
    reports: dict[str, Any] = {"prompts": [r.to_dict() for r in prompt_reports]}
    counts: dict[str, int] = {"prompts": len(prompts), "samples": len(samples), "clean_samples": len(clean)}
    teacher_name = config.teacher.name or config.teacher.path
    md = [f"# Data generation report: {teacher_name}", "", f"Fingerprint `{fp}`, seed {seed}.", ""]
    md += ["## Prompts", "", format_reports(prompt_reports) if prompt_reports else "(no prompt filters)", ""]
    if config.sft.enabled:
        chain = selection_filters(filt, have)
        if config.sft.best_of_n:
            chain.append(BestOfN([s for s in config.sft.rank_by if s in have]))
        if balance is not None:
            chain.append(balance)
        sft_rows, sft_reports = apply_filters(clean, chain)
        sft_reports = quality_reports + sft_reports
        paths["sft"] = write_dataset(strip(sft_rows), os.path.join(output_dir, "sft"), fmt)
        reports["sft"] = [r.to_dict() for r in sft_reports]
        counts["sft"] = len(sft_rows)
        md += ["## SFT set (rejection sampling)", "", format_reports(sft_reports), ""]
    if config.preferences.enabled:
        source = config.preferences.score
        if source not in have:
            raise ValueError(f"preferences.score={source!r} is not available; scores computed: {sorted(have)}")
        pairs, pair_report = make_pairs(clean, source, float(config.preferences.min_margin))
        pair_reports = [pair_report]
        if balance is not None:
            pairs, r = balance(pairs)
            pair_reports.append(r)
        paths["preferences"] = write_dataset(strip(pairs), os.path.join(output_dir, "preferences"), fmt)
        reports["preferences"] = [r.to_dict() for r in quality_reports + pair_reports]
        counts["preference_pairs"] = len(pairs)
        md += ["## Preference pairs (per prompt)", "", format_reports(quality_reports + pair_reports), ""]
    if config.output.keep_samples:
        paths["samples"] = write_dataset(strip(samples), os.path.join(output_dir, "samples"), fmt)
    return paths, counts, reports, md


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
