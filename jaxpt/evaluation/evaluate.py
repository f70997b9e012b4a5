"""Evaluate a model: likelihood, generation and model-judged metrics, written as a report.

    jaxpt eval --config=configs/eval/arithmetic.py --model=runs/quickstart/export --output=runs/eval/quickstart

Four groups of metrics, each switched on by its config section (see ``configs/eval/``):

* **likelihood** (``likelihood.enabled``): masked next-token ``loss``, ``perplexity`` and ``token_accuracy`` on
  the dataset's reference completions, computed exactly as SFT training computes them (``jaxpt.models.logprobs``
  ``lm_loss`` over ``build_sft_dataset`` examples, one example per row).
* **generation** (``generation.enabled``): completions sampled with the jitted sampler, scored against the
  references with ``jaxpt.evaluation.metrics`` (exact match, classification / token P-R-F1, BLEU, chrF, ROUGE),
  plus a task verifier's accuracy (``verifier``, e.g. ``arithmetic``) and the mean completion length.
* **reward model** (``reward.model``): a scalar-head model's mean score of the generations, of the reference
  completions, and the win rate of the generations against the references (ties count half).
* **rubric judge** (``judge.model``, ``"self"`` = the evaluated model): a judge model is prompted once per
  criterion (fluency, coherence, relevance, safety, ...) with a rubric and its reply is parsed
  (:func:`parse_judge_score`); unparsable replies are counted, not guessed (``judge_<c>_parsed``).

:func:`evaluate_params` is the in-process entry point (the training loop can call it every N steps with the
live params); :func:`run_eval` loads a model from disk, evaluates and writes ``report.json``, ``report.md``,
TensorBoard scalars and ``predictions.jsonl``.

Model loading lives in ``jaxpt.models.loaded``, sampling in ``jaxpt.generation.frontend``, the reward-model
scorer and verifiers in ``jaxpt.rewards``, the rubric judge in ``jaxpt.evaluation.judge``: the same code that
data generation and RL run.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from jaxpt.config import save_config, with_defaults
from jaxpt.data.sft import build_sft_dataset, fixed_batches, load_records
from jaxpt.data.tokenizer import is_messages
from jaxpt.errors import UserError
from jaxpt.evaluation.judge import RubricJudge, parse_judge_score, prompt_as_text, summarize_judge
from jaxpt.evaluation.metrics import check_metrics_tokenizer, compute_generation_metrics, lm_metrics, win_rate
from jaxpt.evaluation.report import write_report
from jaxpt.generation.frontend import Prompt, Sampler, sampling_from
from jaxpt.models.config import ModelConfig
from jaxpt.models.loaded import LoadedModel, load_model, load_reward_model
from jaxpt.models.logprobs import lm_loss
from jaxpt.rewards import RewardModelScorer, verify

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------
# Defaults.


def defaults() -> ConfigDict:
    """Every field of an eval config with its default; ``configs/eval/`` files start from this and
    :func:`evaluate_params` reads a config through it (an unknown field is an error naming it)."""
    c = ConfigDict()
    c.seed = 0
    c.tokenizer = ""  # '' = the model's own tokenizer files
    c.data = ConfigDict(
        dict(
            path="",  # JSONL / Parquet / ... read with jaxpt.data.sft.load_records
            split="train",
            max_examples=0,  # 0 = all
            prompt_key="prompt",
            reference_key="completion",
            chat=False,
        )
    )
    c.likelihood = ConfigDict(dict(enabled=True, seq_len=256, batch_size=16, completion_only=True))
    c.generation = ConfigDict(
        dict(
            enabled=True,
            metrics=(),  # any of jaxpt.evaluation.metrics.METRICS
            # how bleu / rouge / token_f1 split words: 13a (each metric's standard; English-like text), zh, char,
            # ja-mecab (pip install "sacrebleu[ja]"), intl, none (jaxpt.evaluation.metrics.METRIC_TOKENIZERS)
            metrics_tokenizer="13a",
            verifier="",  # a jaxpt.rewards.VERIFIERS name ('arithmetic', 'exact', 'reverse', ...) or '' for none
            max_new_tokens=64,
            temperature=0.0,
            top_k=0,
            top_p=1.0,
            batch_size=32,
            max_prompt_length=256,
            strip=True,
        )
    )
    # seq_len: tokens of prompt + completion the reward model reads, kept from the end (jaxpt.rewards scorer)
    c.reward = ConfigDict(
        dict(model="", tokenizer="", reference="", reference_key="completion", seq_len=256, batch_size=32)
    )
    c.judge = ConfigDict(
        dict(
            model="",  # '' = off, 'self' = the evaluated model, or a path
            tokenizer="",
            criteria=("fluency", "coherence", "relevance", "safety"),
            template="",
            low=1,
            high=10,
            max_new_tokens=16,
            batch_size=32,
            max_prompt_length=512,
            chat=False,
        )
    )
    c.report = ConfigDict(dict(title="", tensorboard=True))
    return c


@functools.lru_cache(maxsize=4)
def _cached(kind: str, path: str, tokenizer_path: str = "") -> LoadedModel:
    """Judge / reward models loaded once per process (the training loop evaluates every N steps)."""
    return load_reward_model(path, tokenizer_path) if kind == "reward" else load_model(path, tokenizer_path)


# ---------------------------------------------------------------------------------------------------------
# Likelihood metrics.


@functools.partial(jax.jit, static_argnames=("config", "chunk_size"))
def _lm_sums(config: ModelConfig, params: Any, batch: dict[str, jax.Array], chunk_size: int):
    return lm_loss(config, params, batch, chunk_size)


def likelihood_metrics(
    config: ModelConfig,
    params: Any,
    tokenizer: Any,
    records: Sequence[Mapping[str, Any]],
    seq_len: int = 256,
    batch_size: int = 16,
    completion_only: bool = True,
    chat: bool = False,
) -> dict[str, float]:
    """``loss`` (mean NLL per target token), ``perplexity`` and ``token_accuracy`` over ``records``.

    Examples are tokenised as SFT training tokenises them (loss on completion tokens + EOS when
    ``completion_only``), one per row, truncated to ``seq_len + 1`` tokens; sums are exact over the set.
    """
    examples = build_sft_dataset(
        [dict(r) for r in records], tokenizer, seq_len, completion_only=completion_only, chat=chat
    )
    pad = int(tokenizer.pad_token_id or 0)
    totals = {"nll_sum": 0.0, "num_tokens": 0.0, "correct": 0.0}
    for batch in fixed_batches(examples, batch_size, seq_len, packing=False, pad_id=pad):
        nll, n, correct = jax.device_get(_lm_sums(config, params, batch, seq_len * batch_size))
        totals["nll_sum"] += float(nll)
        totals["num_tokens"] += float(n)
        totals["correct"] += float(correct)
    out = lm_metrics(totals)
    out["num_target_tokens"] = totals["num_tokens"]
    return out


# ---------------------------------------------------------------------------------------------------------
# Data.


def load_eval_records(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The eval set (``data.path`` via ``load_records``), first ``data.max_examples`` rows if > 0."""
    ds = load_records(data["path"], split=data["split"])
    n = int(data["max_examples"] or 0)
    if n and n < len(ds):
        ds = ds.select(range(n))
    return [dict(r) for r in ds]


def prompts_and_references(
    records: Sequence[Mapping[str, Any]], prompt_key: str = "prompt", reference_key: str = "completion"
) -> tuple[list[Prompt], list[str | list[str]]]:
    """Prompts and references: ``prompt``/``completion`` columns (names configurable), or a ``messages``
    conversation whose last assistant turn is the reference and everything before it the prompt."""
    prompts, refs = [], []
    for i, r in enumerate(records):
        if prompt_key in r and r[prompt_key] is not None:
            prompts.append(r[prompt_key])
            ref = r.get(reference_key)
            refs.append(ref if isinstance(ref, str | list) else ("" if ref is None else str(ref)))
        elif is_messages(r.get("messages")):
            msgs = list(r["messages"])
            if msgs[-1]["role"] != "assistant":
                raise UserError(f"row {i}: a messages example must end with the assistant turn to evaluate")
            prompts.append(msgs[:-1])
            refs.append(str(msgs[-1]["content"]))
        else:
            raise UserError(f"row {i} has neither a {prompt_key!r} column nor 'messages'; columns: {sorted(r)}")
    return prompts, refs


def reference_completions(path: str, prompts: Sequence[Prompt], key: str = "completion") -> list[str]:
    """Reference completions for win rates from a JSONL/Parquet file, matched to ``prompts`` by prompt text."""
    table = {}
    for r in load_records(path):
        table.setdefault(json.dumps(r["prompt"], sort_keys=True), r[key])
    out = []
    for p in prompts:
        k = json.dumps(p, sort_keys=True)
        if k not in table:
            raise KeyError(f"reference file {path} has no completion for prompt {prompt_as_text(p)[:60]!r}")
        out.append(table[k])
    return out


# ---------------------------------------------------------------------------------------------------------
# Putting it together.


def _first_ref(ref: str | list[str]) -> str:
    return ref if isinstance(ref, str) else (ref[0] if ref else "")


def evaluate_params(
    config: ModelConfig,
    params: Any,
    tokenizer: Any,
    eval_cfg: ConfigDict | Mapping[str, Any],
    records: Sequence[Mapping[str, Any]] | None = None,
    return_samples: bool = False,
) -> dict[str, float] | tuple[dict[str, float], list[dict[str, Any]]]:
    """Every enabled metric of ``eval_cfg`` (read through :func:`defaults`) for in-memory ``params`` (what
    ``jaxpt eval`` and the training loop's periodic evaluation call). ``records`` overrides ``eval_cfg.data``.

    Returns a flat ``{metric: float}`` dict (plus the per-example samples when ``return_samples``).
    """
    cfg = with_defaults(eval_cfg, defaults())
    check_metrics_tokenizer(cfg.generation.metrics_tokenizer, "generation.metrics_tokenizer")  # before any work
    records = list(records) if records is not None else load_eval_records(cfg.data)
    if not records:
        raise UserError("the eval set is empty")
    model = LoadedModel(config, params, tokenizer, "self")
    metrics: dict[str, float] = {"num_examples": float(len(records))}
    samples: list[dict[str, Any]] = []
    if cfg.likelihood.enabled:
        lk = cfg.likelihood
        metrics.update(
            likelihood_metrics(
                config, params, tokenizer, records, lk.seq_len, lk.batch_size, lk.completion_only, cfg.data.chat
            )
        )
    if cfg.generation.enabled:
        prompts, refs = prompts_and_references(records, cfg.data.prompt_key, cfg.data.reference_key)
        gen_metrics, samples = generation_metrics(model, prompts, refs, cfg)
        metrics.update(gen_metrics)
        if cfg.reward.model:
            metrics.update(reward_metrics(prompts, refs, samples, cfg))
        if cfg.judge.model:
            metrics.update(judge_metrics(model, prompts, samples, cfg.judge))
    return (metrics, samples) if return_samples else metrics


def generation_metrics(
    model: LoadedModel, prompts: Sequence[Prompt], refs: Sequence[str | list[str]], cfg: ConfigDict
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Sampled completions scored against the references and by the verifier; returns the metrics and one
    sample record per prompt (``prompt``, ``reference``, ``prediction``, ``num_tokens``, ``finished``, ...)."""
    gen = cfg.generation
    sampler = Sampler(
        model.config,
        model.tokenizer,
        sampling_from(gen, model.config, model.tokenizer, "generation"),
        max_prompt_len=gen.max_prompt_length,
        chat=cfg.data.chat,
        batch_size=gen.batch_size,
    )
    out = sampler.sample_all(model.params, prompts, seed=cfg.seed)
    preds = [t.strip() if gen.strip else t for t in out.texts]
    samples = [
        {"prompt": p, "reference": ref, "prediction": pred, "num_tokens": int(n), "finished": bool(f)}
        for p, ref, pred, n, f in zip(prompts, refs, preds, out.lengths, out.finished, strict=True)
    ]
    metrics: dict[str, float] = {}
    names = [n for n in gen.metrics if n]
    if names:
        metrics.update(_reference_metrics(preds, list(refs), names, gen.metrics_tokenizer))
    if gen.verifier:
        for s in samples:
            s["correct"] = verify(gen.verifier, s["prompt"], s["prediction"], _first_ref(s["reference"]))
        metrics["verifier_accuracy"] = float(np.mean([s["correct"] for s in samples]))
    metrics["mean_completion_tokens"] = float(np.mean(out.lengths))
    metrics["finished_fraction"] = float(np.mean(out.finished))
    return metrics, samples


def reward_metrics(
    prompts: Sequence[Prompt], refs: Sequence[str | list[str]], samples: list[dict[str, Any]], cfg: ConfigDict
) -> dict[str, float]:
    """A reward model's mean score of the generations (``rm_score``, also per sample), of the references and
    the generations' win rate against them (ties count half)."""
    rw = cfg.reward
    rm = _cached("reward", rw.model, rw.tokenizer)
    scorer = RewardModelScorer(
        rm.config, rm.params, rm.tokenizer, max_length=rw.seq_len, batch_size=rw.batch_size, chat=cfg.data.chat
    )
    ours = scorer.score(prompts, [s["prediction"] for s in samples], [s["finished"] for s in samples])
    for s, v in zip(samples, ours, strict=True):
        s["rm_score"] = float(v)
    out = {"rm_score": float(np.mean(ours))}
    if rw.reference != "none":
        if rw.reference:
            ref_texts = reference_completions(rw.reference, prompts, rw.reference_key)
        else:
            ref_texts = [_first_ref(r) for r in refs]
        theirs = scorer.score(prompts, ref_texts)
        out["rm_reference_score"] = float(np.mean(theirs))
        out["rm_win_rate"] = win_rate(ours, theirs)
    return out


def judge_metrics(
    model: LoadedModel, prompts: Sequence[Prompt], samples: list[dict[str, Any]], jd: ConfigDict
) -> dict[str, float]:
    """The rubric judge's mean score per criterion (and the fraction of replies it could parse)."""
    judge_model = model if jd.model == "self" else _cached("lm", jd.model, jd.tokenizer)
    judge = RubricJudge(
        judge_model,
        criteria=tuple(jd.criteria),
        template=jd.template,
        low=float(jd.low),
        high=float(jd.high),
        max_new_tokens=jd.max_new_tokens,
        batch_size=jd.batch_size,
        max_prompt_length=jd.max_prompt_length,
        chat=jd.chat,
    )
    replies = judge.replies(prompts, [s["prediction"] for s in samples])
    scores = {c: [parse_judge_score(t, judge.low, judge.high) for t in v] for c, v in replies.items()}
    for i, s in enumerate(samples):
        s["judge"] = {c: {"reply": replies[c][i], "score": scores[c][i]} for c in scores}
    return summarize_judge(scores)


def _reference_metrics(
    preds: list[str], refs: list[str | list[str]], names: Sequence[str], tokenize: str = "13a"
) -> dict[str, float]:
    # sacrebleu / rouge need non-empty references; examples without one are skipped (and counted).
    keep = [i for i, r in enumerate(refs) if (r if isinstance(r, str) else any(r))]
    if not keep:
        return {}
    out = compute_generation_metrics([preds[i] for i in keep], [refs[i] for i in keep], list(names), tokenize)
    if len(keep) < len(refs):
        out["examples_without_reference"] = float(len(refs) - len(keep))
    return out


def run_eval(
    eval_cfg: ConfigDict,
    model_path: str,
    output_dir: str,
    step: int | None = None,
) -> dict[str, float]:
    """Load ``model_path`` (HF dir, Orbax params dir or run workdir), evaluate it and write the report:
    ``report.json``, ``report.md``, TensorBoard scalars (``tensorboard/``), ``predictions.jsonl`` and the
    resolved ``config.json``. Returns the metrics."""
    eval_cfg = with_defaults(eval_cfg, defaults())
    model = load_model(model_path, eval_cfg.tokenizer)
    metrics, samples = evaluate_params(model.config, model.params, model.tokenizer, eval_cfg, return_samples=True)
    os.makedirs(output_dir, exist_ok=True)
    save_config(eval_cfg, output_dir)
    title = eval_cfg.report.title or f"Evaluation of {model_path}"
    tb_subdir = "tensorboard" if eval_cfg.report.tensorboard else None
    write_report(metrics, output_dir, step=step, title=title, tb_subdir=tb_subdir)
    with open(os.path.join(output_dir, "predictions.jsonl"), "w") as f:
        for s in samples:
            f.write(json.dumps(s) + "\n")
    return metrics
