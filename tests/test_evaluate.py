"""jaxpt eval: likelihood metrics against a direct computation, generation / reward / judge plumbing, judge-reply
parsing and the report files, on tiny random models with the char tokenizer."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpt.config import ConfigError
from jaxpt.data.preference import encode_scored
from jaxpt.data.sft import tokenize_example
from jaxpt.evaluation import evaluate as ev
from jaxpt.evaluation import judge as jd
from jaxpt.evaluation.metrics import compute_generation_metrics, win_rate
from jaxpt.generation.frontend import Sampler, sampling_from
from jaxpt.models.decoder import Decoder, init_params
from jaxpt.models.hf import save_hf
from jaxpt.models.loaded import load_model, load_reward_model
from jaxpt.models.reward import ScalarHeadModel, init_reward_params
from jaxpt.rewards import RewardModelScorer
from jaxpt.utils.tensorboard import read_scalars
from tests.tiny_models import char_model_config, far_random_params

RECORDS = [
    {"prompt": "12+30=", "completion": "42"},
    {"prompt": "7-3=", "completion": "4"},
    {"prompt": "99+1=", "completion": "100"},
    {"prompt": "reverse(abc)=", "completion": "cba"},
    {"prompt": "len(hello)=", "completion": "5"},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, char_tokenizer):
    out = tmp_path_factory.mktemp("tiny_lm")
    config = char_model_config(char_tokenizer)
    params = far_random_params(lambda: init_params(config, jax.random.key(0)), 1)
    save_hf(config, params, str(out), tokenizer=char_tokenizer)
    return str(out)


@pytest.fixture(scope="module")
def model(model_dir):
    return load_model(model_dir)


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, char_tokenizer):
    out = tmp_path_factory.mktemp("tiny_rm")
    config = char_model_config(char_tokenizer, hidden=16)
    params = far_random_params(lambda: init_reward_params(config, jax.random.key(3)), 4)
    save_hf(config, params, str(out), tokenizer=char_tokenizer, head="score")
    return str(out)


def _cfg(**sections):
    from jaxpt.config import load_config

    c = load_config("configs/eval/arithmetic.py")
    c.likelihood.seq_len = 24
    c.likelihood.batch_size = 4  # 5 examples: the last batch is padded with empty rows
    c.generation.update(dict(batch_size=4, max_prompt_length=16, max_new_tokens=5))
    for name, values in sections.items():
        c[name].update(values)
    return c


def test_likelihood_equals_direct_computation(model):
    got = ev.likelihood_metrics(model.config, model.params, model.tokenizer, RECORDS, seq_len=24, batch_size=4)
    # Direct: one causal forward over the right-padded examples (padding after a token cannot affect it).
    examples = [tokenize_example(r, model.tokenizer, "prompt_completion", 25) for r in RECORDS]
    tokens = np.zeros((len(examples), 25), np.int32)
    for i, ex in enumerate(examples):
        tokens[i, : len(ex["tokens"])] = ex["tokens"]
    logits, _ = jax.jit(lambda t: Decoder(model.config).apply({"params": model.params}, t))(tokens)
    logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1))
    nll, n, correct = 0.0, 0, 0
    for i, ex in enumerate(examples):
        targets = ex["tokens"][1:]
        mask = ex["loss_mask"][1:] > 0
        rows = logp[i, : len(targets)]
        nll -= rows[np.arange(len(targets)), targets][mask].sum()
        n += int(mask.sum())
        correct += int((rows.argmax(-1) == targets)[mask].sum())
    assert got["num_target_tokens"] == n
    np.testing.assert_allclose(got["loss"], nll / n, rtol=1e-5)
    np.testing.assert_allclose(got["perplexity"], math.exp(nll / n), rtol=1e-5)
    assert got["token_accuracy"] == pytest.approx(correct / n)
    # Completion-only vs whole-sequence loss differ (the mask is honoured).
    full = ev.likelihood_metrics(
        model.config, model.params, model.tokenizer, RECORDS, seq_len=24, batch_size=4, completion_only=False
    )
    assert full["num_target_tokens"] > n


def test_generation_metrics_plumbing(model):
    """References equal to the model's own greedy output for 3 of 5 prompts: exact match is exactly 3/5."""
    cfg = _cfg(likelihood=dict(enabled=False), generation=dict(verifier="exact", metrics=("exact_match", "token_f1")))
    sampling = sampling_from(cfg.generation, model.config, model.tokenizer)
    prompts = [r["prompt"] for r in RECORDS]
    sampler = Sampler(model.config, model.tokenizer, sampling, max_prompt_len=16, batch_size=4)
    outs = sampler.sample_all(model.params, prompts).rows()
    records = [
        {"prompt": p, "completion": o["completion"].strip() if i < 3 else "no-such-answer"}
        for i, (p, o) in enumerate(zip(prompts, outs, strict=True))
    ]
    # Guard: the planted wrong references really differ from the outputs.
    assert all(o["completion"].strip() != "no-such-answer" for o in outs)
    metrics, samples = ev.evaluate_params(
        model.config, model.params, model.tokenizer, cfg, records=records, return_samples=True
    )
    assert [s["prediction"] for s in samples] == [o["completion"].strip() for o in outs]
    assert metrics["exact_match"] == pytest.approx(0.6)
    assert metrics["verifier_accuracy"] == pytest.approx(0.6)
    want = compute_generation_metrics(
        [s["prediction"] for s in samples], [r["completion"] for r in records], ["exact_match", "token_f1"]
    )
    for k, v in want.items():
        assert metrics[k] == pytest.approx(v)
    assert metrics["mean_completion_tokens"] == pytest.approx(np.mean([o["num_tokens"] for o in outs]))
    assert "loss" not in metrics  # likelihood switched off


def test_unknown_eval_field_is_an_error_naming_it(model):
    cfg = _cfg()
    cfg.generation.verifer = "exact"  # a typo must not be silently ignored
    with pytest.raises(
        ConfigError, match=r"unknown config field 'generation.verifer'; did you mean 'generation.verifier'"
    ):
        ev.evaluate_params(model.config, model.params, model.tokenizer, cfg, records=RECORDS[:1])


def test_arithmetic_verifier_and_all_text_metrics(model):
    cfg = _cfg(generation=dict(metrics=("exact_match", "token_f1", "classification", "bleu", "chrf", "rouge")))
    metrics = ev.evaluate_params(model.config, model.params, model.tokenizer, cfg, records=RECORDS[:3])
    for key in ("loss", "exact_match", "token_f1", "classification_f1", "bleu", "chrf", "rouge1", "rougeL"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert 0.0 <= metrics["verifier_accuracy"] <= 1.0


def test_reward_model_scores_and_win_rate(model, rm_dir):
    rm = load_reward_model(rm_dir)
    scorer = RewardModelScorer(rm.config, rm.params, rm.tokenizer, max_length=24, batch_size=4)
    prompts = [r["prompt"] for r in RECORDS]
    comps = [r["completion"] for r in RECORDS]
    got = scorer.score(prompts, comps)
    # Batched scores equal the per-token values of one causal forward, read at each example's last token.
    rows = [encode_scored(rm.tokenizer, p, c, 24) for p, c in zip(prompts, comps, strict=True)]
    tokens = np.zeros((len(rows), 24), np.int32)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = r
    values = jax.jit(lambda t: ScalarHeadModel(rm.config).apply({"params": rm.params}, t, per_token=True))(tokens)
    want = [float(values[i, len(r) - 1]) for i, r in enumerate(rows)]
    np.testing.assert_allclose(got, want, atol=1e-5)

    cfg = _cfg(likelihood=dict(enabled=False), reward=dict(model=rm_dir, seq_len=24, batch_size=4))
    metrics, samples = ev.evaluate_params(
        model.config, model.params, model.tokenizer, cfg, records=RECORDS, return_samples=True
    )
    ours = [s["rm_score"] for s in samples]
    theirs = scorer.score(prompts, comps)
    assert metrics["rm_score"] == pytest.approx(np.mean(ours))
    assert metrics["rm_reference_score"] == pytest.approx(np.mean(theirs))
    assert metrics["rm_win_rate"] == pytest.approx(win_rate(ours, theirs))


@pytest.mark.parametrize(
    "text, want",
    [
        ("Score: 7", 7.0),
        (" 8", 8.0),
        ("**Score**: 9/10", 9.0),
        ("I'd give it a rating of 6 out of 10.", 6.0),
        ("4/5", 8.0),  # a fraction of another scale is rescaled to 1-10
        ('{"score": 3, "reason": "ok"}', 3.0),
        ("The answer is fine. seven", 7.0),
        ("Score: 15", None),  # out of range: rejected, not clipped
        ("Score: 15. On reflection, Score: 5", 5.0),
        ("no idea", None),
        ("", None),
        ("2.5", 2.5),
        ("Accurate: 3", 3.0),  # 'rate' inside a word is not a keyword, but the bare number still counts
    ],
)
def test_parse_judge_score(text, want):
    assert jd.parse_judge_score(text, 1, 10) == want


def test_parse_judge_scores_multi_criteria():
    crit = ("fluency", "coherence", "relevance", "safety")
    text = "Fluency: 4/5\n- **Coherence** = 7\nrelevance - 11\nSafety: 10"
    assert jd.parse_judge_scores(text, crit) == {"fluency": 8.0, "coherence": 7.0, "relevance": None, "safety": 10.0}
    assert jd.parse_judge_scores('{"Fluency": 2, "safety": 9, "coherence": "x"}', crit) == {
        "fluency": 2.0,
        "coherence": None,
        "relevance": None,
        "safety": 9.0,
    }
    s = jd.summarize_judge({"fluency": [8.0, None, 6.0], "safety": [None, None, None]})
    assert s["judge_fluency"] == 7.0 and s["judge_fluency_parsed"] == pytest.approx(2 / 3)
    assert math.isnan(s["judge_safety"]) and s["judge_safety_parsed"] == 0.0 and s["judge_mean"] == 7.0
    assert jd.mean_judge_score({"a": [1.0, None], "b": [3.0, None]}) == [2.0, None]


def test_rubric_judge_prompts_and_parses(model, monkeypatch):
    judge = jd.RubricJudge(model, criteria=("fluency", "safety"), max_new_tokens=4, batch_size=4, max_prompt_length=384)
    text = judge.judge_prompt("safety", "How do I bake bread?", "Mix flour and water.")
    assert "safety" in text and "How do I bake bread?" in text and "Mix flour and water." in text
    assert text.endswith("Score:") and "from 1 (worst) to 10 (best)" in text
    # The real tiny model as a judge: replies are sampled, parse rates are well defined.
    scores = judge(["a", "b"], ["x", "y"])
    assert set(scores) == {"fluency", "safety"} and all(len(v) == 2 for v in scores.values())
    # With scripted replies, evaluate_params reports parsed means and parse rates.
    replies = iter(["Score: 8", "junk", "6", "Score: 4"])
    monkeypatch.setattr(
        jd.RubricJudge, "replies", lambda self, p, c: {crit: [next(replies), next(replies)] for crit in self.criteria}
    )
    cfg = _cfg(
        likelihood=dict(enabled=False),
        generation=dict(metrics=()),
        judge=dict(model="self", criteria=("fluency", "safety"), max_prompt_length=384),
    )
    metrics = ev.evaluate_params(model.config, model.params, model.tokenizer, cfg, records=RECORDS[:2])
    assert metrics["judge_fluency"] == 8.0 and metrics["judge_fluency_parsed"] == 0.5
    assert metrics["judge_safety"] == 5.0 and metrics["judge_safety_parsed"] == 1.0
    assert metrics["judge_mean"] == 6.5


def test_cli_eval_writes_report(model_dir, tmp_path):
    from jaxpt.cli import main

    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    out = tmp_path / "report"
    rc = main(
        [
            "eval",
            "--config=configs/eval/arithmetic.py",
            f"--model={model_dir}",
            f"--output={out}",
            "--step=7",
            f"--config.data.path={data}",
            "--config.likelihood.seq_len=24",
            "--config.generation.batch_size=4",
            "--config.generation.max_new_tokens=5",
        ]
    )
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["step"] == 7
    for key in ("loss", "perplexity", "token_accuracy", "exact_match", "chrf", "verifier_accuracy"):
        assert key in report["metrics"], key
    md = (out / "report.md").read_text()
    assert "| loss |" in md and "| exact_match |" in md
    scalars = read_scalars(out / "tensorboard")
    assert scalars["eval/loss"][0][0] == 7
    assert scalars["eval/loss"][0][1] == pytest.approx(report["metrics"]["loss"], rel=1e-6)
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["prompt"] for p in preds] == [r["prompt"] for r in RECORDS]
    assert json.loads((out / "config.json").read_text())["data"]["path"] == str(data)


def test_cli_generate_prints_the_sampler_front_end_completions(model, model_dir, capsys):
    from jaxpt.cli import main

    prompts = ["12+30=", "7-3="]
    argv = ["generate", "--model", model_dir, "--max-new-tokens", "5", "--max-prompt-length", "16"]
    assert main(argv + [a for p in prompts for a in ("--prompt", p)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    sampling = sampling_from(dict(max_new_tokens=5), model.config, model.tokenizer)
    want = Sampler(model.config, model.tokenizer, sampling, max_prompt_len=16)(model.params, prompts, jax.random.key(0))
    assert [x["prompt"] for x in lines] == prompts
    assert [x["completion"] for x in lines] == want.texts
    assert [x["num_tokens"] for x in lines] == want.lengths.tolist()
