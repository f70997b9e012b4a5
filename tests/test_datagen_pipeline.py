"""jaxpt generate-data over a tiny random teacher: planted duplicates and wrong answers are removed with matching
report counts, an interrupted run resumes to the same final dataset, provenance columns, preference pairs."""

import json

import jax
import pytest

from jaxpt.config import ConfigError, load_config
from jaxpt.data.sft import load_records
from jaxpt.datagen import pipeline as pl
from jaxpt.datagen.prompts import generate_prompts
from jaxpt.datagen.store import write_jsonl
from jaxpt.evaluation.judge import RubricJudge
from jaxpt.generation.frontend import Sampler, sampling_from
from jaxpt.models.decoder import init_params
from jaxpt.models.hf import save_hf
from jaxpt.models.loaded import load_model
from jaxpt.models.reward import init_reward_params
from jaxpt.rewards import verify
from jaxpt.rewards.verifiers import first_line
from tests.tiny_models import char_model_config, far_random_params


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, char_tokenizer):
    out = tmp_path_factory.mktemp("teacher")
    config = char_model_config(char_tokenizer)
    save_hf(
        config, far_random_params(lambda: init_params(config, jax.random.key(0)), 1), str(out), tokenizer=char_tokenizer
    )
    return str(out)


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, char_tokenizer):
    out = tmp_path_factory.mktemp("rm")
    config = char_model_config(char_tokenizer, hidden=16)
    params = far_random_params(lambda: init_reward_params(config, jax.random.key(3)), 4)
    save_hf(config, params, str(out), tokenizer=char_tokenizer, head="score")
    return str(out)


def _config(teacher_dir, **overrides):
    c = load_config("configs/datagen/arithmetic_distill.py:tiny")
    c.teacher.path = teacher_dir
    c.teacher.name = "tiny-teacher"
    c.prompts.exclude_file = ""
    c.filters.update(dict(min_chars=0, max_chars=0, format_regex="", require_eos=False))
    for section, values in overrides.items():
        c[section].update(values)
    return c


def _lines(path):
    with open(path) as f:
        return f.read().splitlines()


def _dedup(samples):
    """What ExactDedup over (prompt, completion) keeps: first occurrences after whitespace/case folding."""
    seen, out = set(), []
    for s in samples:
        key = (" ".join(s["prompt"].split()).casefold(), " ".join(s["completion"].split()).casefold())
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


# ---------------------------------------------------------------------------------------------------------


def test_skills_generate_verifiable_prompts(tmp_path):
    cfg = pl.defaults().prompts.to_dict() | dict(
        num_prompts=60,
        skills=("arithmetic", "compare", "reverse", "count", "sort"),
        levels=(1, 2, 3),
        skill_weights=(),
        level_weights=(0.2, 0.3, 0.5),
    )
    rows = generate_prompts(cfg, seed=3)
    assert rows == generate_prompts(cfg, seed=3)  # deterministic in the seed
    assert len({r["prompt"] for r in rows}) == 60
    assert {r["skill"] for r in rows} == set(cfg["skills"]) and {r["difficulty"] for r in rows} == {1, 2, 3}
    for r in rows:  # the reference answer passes the skill's verifier, a corrupted one does not
        assert verify(r["skill"], r["prompt"], r["reference"] + "\n", r["reference"])
        assert not verify(r["skill"], r["prompt"], "x" + r["reference"], r["reference"])
    # Excluded prompts (an eval split) never come out.
    excluded = {r["prompt"] for r in rows[:20]}
    path = str(tmp_path / "exclude.jsonl")
    write_jsonl(path, [{"prompt": p} for p in excluded])
    again = generate_prompts({**cfg, "exclude_file": path}, seed=3)
    assert not excluded & {r["prompt"] for r in again}


def test_planted_duplicates_and_wrong_answers_are_removed(teacher_dir, tmp_path):
    """Seed prompts with 2 exact and 1 near duplicates, and 3 wrong references; greedy sampling with N=2 makes
    the two samples of each prompt identical. Every filter must remove exactly what was planted."""
    base = [
        "apple pie recipe",
        "capital of peru",
        "sum of three and four",
        "name a blue fruit",
        "reverse the word cat",
        "how many legs has a spider",
        "spell the number nine",
        "largest planet known",
    ]
    planted = ["Capital  of PERU", "apple pie recipe", "how many legs has a spider?"]
    wrong = {1, 4, 6}
    teacher = load_model(teacher_dir)
    sampling = sampling_from(dict(max_new_tokens=4, temperature=0.0), teacher.config, teacher.tokenizer)
    flat = [p for p in base for _ in range(2)]  # the pipeline's batch layout (prompt x sample)
    sampler = Sampler(teacher.config, teacher.tokenizer, sampling, max_prompt_len=32, batch_size=8)
    outs = sampler.sample_all(teacher.params, flat).rows()[::2]
    refs = [first_line(o["completion"]) if i not in wrong else "WRONG ANSWER" for i, o in enumerate(outs)]
    seed_file = tmp_path / "seeds.jsonl"
    rows = [
        {"prompt": p, "reference": r, "difficulty": 1 + i % 2} for i, (p, r) in enumerate(zip(base, refs, strict=True))
    ]
    rows += [{"prompt": p, "reference": "x", "difficulty": 1} for p in planted]
    seed_file.write_text("".join(json.dumps(r) + "\n" for r in rows))

    cfg = _config(
        teacher_dir,
        prompts=dict(seed_file=str(seed_file), num_prompts=0, near_dedup_threshold=0.8),
        sampling=dict(temperature=0.0, max_prompt_length=32),
    )
    out = pl.run(cfg, str(tmp_path / "out"))
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    prompt_rep = {r["name"]: r for r in rep["filters"]["prompts"]}
    assert prompt_rep["prompt_exact_dedup"]["removed"] == 2
    assert prompt_rep["prompt_exact_dedup"]["reasons"] == {"exact_duplicate": 2}
    assert prompt_rep["prompt_near_dedup"]["removed"] == 1
    assert prompt_rep["prompt_near_dedup"]["reasons"] == {"near_duplicate": 1}
    sft_rep = {r["name"]: r for r in rep["filters"]["sft"]}
    assert sft_rep["exact_dedup"]["removed"] == 8  # the second, identical greedy sample of every prompt
    assert sft_rep["accuracy"]["removed"] == 3 and sft_rep["accuracy"]["reasons"] == {"wrong_answer": 3}
    assert sft_rep["best_of_n"]["removed"] == 0
    assert out["counts"] == {**out["counts"], "prompts": 8, "samples": 16, "clean_samples": 8, "sft": 5}
    sft = [json.loads(line) for line in _lines(out["paths"]["sft"])]
    assert [r["prompt"] for r in sft] == [p for i, p in enumerate(base) if i not in wrong]
    assert all(r["correct"] and r["completion"] == outs[base.index(r["prompt"])]["completion"] for r in sft)
    # One distinct sample per prompt left: no preference pair possible, and the report says why.
    pairs_rep = rep["filters"]["preferences"][-1]
    assert pairs_rep["kept"] == 0 and pairs_rep["reasons"] == {"single_sample": 8}
    assert "prompt_near_dedup" in (tmp_path / "out" / "report.md").read_text()


def test_unknown_config_field_is_refused_before_anything_is_written(teacher_dir, tmp_path):
    cfg = _config(teacher_dir)
    cfg.filters.min_rewrd = 0.5
    with pytest.raises(ConfigError, match=r"'filters.min_rewrd'; did you mean 'filters.min_reward'"):
        pl.run(cfg, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_resume_after_interruption_gives_the_same_dataset(teacher_dir, rm_dir, tmp_path):
    """Sampled generation + reward-model scoring in 5 + 5 batches. Interrupted twice (once mid-scoring, with
    a stray half-written shard), the run ends with byte-identical outputs to an uninterrupted run."""
    cfg = _config(
        teacher_dir,
        prompts=dict(num_prompts=12),
        sampling=dict(num_samples=3, temperature=1.0, batch_size=8),
        scoring=dict(reward_model=rm_dir, reward_seq_len=24, batch_size=8),
        filters=dict(require_correct=False, min_reward=0.0),
        sft=dict(rank_by=("reward", "logprob")),
        preferences=dict(score="reward"),
    )
    full = pl.run(cfg, str(tmp_path / "a"))
    assert full["batches_run"] == 10

    b = tmp_path / "b"
    with pytest.raises(pl.Interrupted):
        pl.run(cfg, str(b), stop_after_batches=3)
    progress = json.loads((b / "progress.json").read_text())
    assert progress["stages"] == {"generate": {"completed": 3, "num_batches": 5}}
    (b / "shards" / "generate-00003.jsonl").write_text('{"half": "written')  # died while writing batch 3
    with pytest.raises(pl.Interrupted):
        pl.run(cfg, str(b), stop_after_batches=4)  # 2 generation + 2 scoring batches
    resumed = pl.run(cfg, str(b))
    assert resumed["batches_run"] == 3
    for name in ("sft", "preferences", "samples"):
        assert _lines(full["paths"][name]) == _lines(resumed["paths"][name]), name
    assert full["counts"] == resumed["counts"]

    # Counts in the report match the data: the reward threshold removes exactly the deduplicated samples
    # scoring below 0, best-of-N keeps one per remaining prompt.
    samples = [json.loads(line) for line in _lines(full["paths"]["samples"])]
    deduped = _dedup(samples)
    reps = {r["name"]: r for r in full["reports"]["sft"]}
    assert reps["exact_dedup"]["removed"] == len(samples) - len(deduped)
    assert reps["reward_threshold"]["removed"] == sum(s["rm_score"] < 0 for s in deduped)
    assert full["counts"]["sft"] == len({s["prompt_id"] for s in deduped if s["rm_score"] >= 0})
    sft = [json.loads(line) for line in _lines(full["paths"]["sft"])]
    for row in sft:  # rejection sampling: the best reward among that prompt's samples
        assert row["rm_score"] == max(s["rm_score"] for s in deduped if s["prompt_id"] == row["prompt_id"])
    pairs = [json.loads(line) for line in _lines(full["paths"]["preferences"])]
    assert pairs and all(p["chosen_score"] > p["rejected_score"] and p["chosen"] != p["rejected"] for p in pairs)

    # A different config in the same output dir is refused rather than mixed in.
    cfg.sampling.temperature = 0.5
    with pytest.raises(ValueError, match="different config"):
        pl.run(cfg, str(b))


def test_provenance_columns_and_parquet(teacher_dir, tmp_path):
    cfg = _config(teacher_dir, filters=dict(require_correct=False), output=dict(format="parquet"))
    out = pl.run(cfg, str(tmp_path / "p"))
    sft = load_records(out["paths"]["sft"])
    for col in (
        "prompt",
        "completion",
        "teacher",
        "sampling",
        "seed",
        "batch",
        "sample_idx",
        "prompt_id",
        "skill",
        "difficulty",
        "reference",
        "logprob",
        "num_tokens",
        "finished",
        "correct",
    ):
        assert col in sft.column_names, col
    row = sft[0]
    assert row["teacher"] == "tiny-teacher" and row["seed"] == 0 and row["skill"] == "arithmetic"
    assert json.loads(row["sampling"]) == {
        "num_samples": 2,
        "temperature": 0.8,
        "top_k": 0,
        "top_p": 1.0,
        "max_new_tokens": 4,
        "max_prompt_length": 16,
    }
    prefs = load_records(out["paths"]["preferences"]) if out["counts"]["preference_pairs"] else None
    if prefs is not None:
        assert {"prompt", "chosen", "rejected", "score_source", "teacher"} <= set(prefs.column_names)
    # The SFT set loads straight into SFT training data.
    from jaxpt.data.sft import build_sft_dataset

    assert build_sft_dataset(out["paths"]["sft"], load_model(teacher_dir).tokenizer, seq_len=32)


def test_self_judged_pairs(teacher_dir, tmp_path, monkeypatch):
    """The teacher judges its own samples with a rubric prompt; replies are parsed into judge_score and pairs
    are the best vs worst judged sample (scripted replies make the expected pairs known)."""
    calls = []

    def replies(self, prompts, completions):
        calls.append(len(prompts))
        return {
            c: [f"Score: {1 + len(x) % 10}" if len(x) % 3 else "cannot judge" for x in completions]
            for c in self.criteria
        }

    monkeypatch.setattr(RubricJudge, "replies", replies)
    cfg = _config(
        teacher_dir,
        sampling=dict(num_samples=3, temperature=1.0, max_new_tokens=6),
        scoring=dict(judge="teacher", judge_criteria=("correctness", "relevance")),
        filters=dict(require_correct=False, min_judge=5.0),
        sft=dict(rank_by=("judge", "logprob")),
        preferences=dict(score="judge", min_margin=1.0),
    )
    out = pl.run(cfg, str(tmp_path / "j"))
    assert sum(calls) == out["counts"]["samples"]
    samples = [json.loads(line) for line in _lines(out["paths"]["samples"])]
    for s in samples:
        n = len(s["completion"])
        assert s["judge_score"] == (None if n % 3 == 0 else 1 + n % 10)
    pairs = [json.loads(line) for line in _lines(out["paths"]["preferences"])]
    for p in pairs:
        assert p["score_source"] == "judge" and p["chosen_score"] - p["rejected_score"] > 1.0
    sft = [json.loads(line) for line in _lines(out["paths"]["sft"])]
    assert all(r["judge_score"] >= 5.0 for r in sft)
    rep = {r["name"]: r for r in out["reports"]["sft"]}
    deduped = _dedup(samples)
    assert rep["judge_threshold"]["reasons"].get("missing_judge_score", 0) == sum(
        s["judge_score"] is None for s in deduped
    )
    assert rep["judge_threshold"]["reasons"].get("low_score", 0) == sum(
        s["judge_score"] is not None and s["judge_score"] < 5 for s in deduped
    )


def test_chat_prompts_are_stored_as_conversations(teacher_dir, tmp_path):
    """With prompts.chat the teacher sees the chat template, and the outputs keep the conversation so that SFT
    tokenises the prompt exactly as it was generated from."""
    cfg = _config(teacher_dir, prompts=dict(chat=True, num_prompts=4), filters=dict(require_correct=False))
    out = pl.run(cfg, str(tmp_path / "c"))
    rows = [json.loads(line) for line in _lines(out["paths"]["sft"])]
    assert rows and all(r["prompt"][0]["role"] == "user" and r["prompt"][0]["content"].endswith("=") for r in rows)
    from jaxpt.data.sft import build_sft_dataset

    examples = build_sft_dataset(out["paths"]["sft"], load_model(teacher_dir).tokenizer, seq_len=48)
    assert len(examples) == len(rows)
