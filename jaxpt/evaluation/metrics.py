"""Text metrics for evaluating generations (pure Python / numpy; no model code).

Conventions:
* ``predictions`` is a list of strings; ``references`` is a list with one entry per prediction, each either a
  string or a list of strings (several acceptable references). Multi-reference metrics take the best match
  per example (exact match, token F1, ROUGE) or pass all references to sacrebleu (BLEU, chrF).
* Scores keep their customary scale: exact match, F1, ROUGE and win rate in ``[0, 1]``; BLEU and chrF in
  ``[0, 100]`` exactly as sacrebleu reports them, so numbers are comparable with published ones.
"""

from __future__ import annotations

import collections
import math
import re
import string
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

References = Sequence[str] | Sequence[Sequence[str]]

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def lm_metrics(totals: dict[str, float]) -> dict[str, float]:
    """``loss`` (mean NLL per target token), ``perplexity`` and ``token_accuracy`` from summed ``nll_sum``,
    ``num_tokens`` and ``correct`` (what SFT eval, RL eval and ``jaxpt eval`` report)."""
    n = max(totals["num_tokens"], 1.0)
    loss = totals["nll_sum"] / n
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "token_accuracy": totals["correct"] / n}


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, collapse whitespace.

    Makes "The Eiffel Tower." and "eiffel tower" count as the same answer.
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _ref_lists(predictions: Sequence[str], references: References) -> list[list[str]]:
    """Validate lengths and turn every reference entry into a non-empty list of strings."""
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("predictions and references must be sequences of strings, not a single string")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if len(predictions) == 0:
        raise ValueError("no predictions to score")
    out = []
    for i, ref in enumerate(references):
        refs = [ref] if isinstance(ref, str) else list(ref)
        if not refs:
            raise ValueError(f"example {i} has no reference")
        out.append(refs)
    return out


def exact_match(predictions: Sequence[str], references: References, normalize: bool = True) -> float:
    """Fraction of predictions equal to (any of) their references, after SQuAD normalisation by default."""
    refs = _ref_lists(predictions, references)
    f = normalize_answer if normalize else (lambda x: x)
    hits = [any(f(p) == f(r) for r in rs) for p, rs in zip(predictions, refs, strict=True)]
    return float(np.mean(hits))


def _div(a: float, b: float) -> float:
    return a / b if b else 0.0


def classification_prf(
    predictions: Sequence[Any],
    references: Sequence[Any],
    labels: Sequence[Any] | None = None,
    average: str = "macro",
    normalize: bool = False,
) -> dict[str, float]:
    """Precision / recall / F1 / accuracy for label-style outputs (sentiment, NLI, multiple choice...).

    Per label: P = TP/(TP+FP), R = TP/(TP+FN), F1 = 2PR/(P+R), each 0 when its denominator is 0.
    ``macro`` averages the per-label values over ``labels`` (default: every label seen in references or
    predictions, so a hallucinated label costs precision); ``micro`` pools TP/FP/FN over ``labels`` first.
    Accuracy is over all examples regardless of ``labels``. ``normalize`` strips and lowercases string
    labels first, useful when the "label" is raw generated text.
    """
    if average not in ("macro", "micro"):
        raise ValueError(f"average must be 'macro' or 'micro', got {average!r}")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if len(predictions) == 0:
        raise ValueError("no predictions to score")

    def norm(x: Any) -> Any:
        return x.strip().lower() if normalize and isinstance(x, str) else x

    preds = [norm(p) for p in predictions]
    refs = [norm(r) for r in references]
    if labels is None:
        labels = sorted(set(refs) | set(preds), key=repr)
    else:
        labels = [norm(x) for x in labels]

    tp = collections.Counter(r for p, r in zip(preds, refs, strict=True) if p == r)
    n_pred = collections.Counter(preds)
    n_ref = collections.Counter(refs)
    accuracy = float(np.mean([p == r for p, r in zip(preds, refs, strict=True)]))

    if average == "micro":
        t = sum(tp[c] for c in labels)
        precision = _div(t, sum(n_pred[c] for c in labels))
        recall = _div(t, sum(n_ref[c] for c in labels))
        f1 = _div(2 * precision * recall, precision + recall)
    else:
        ps, rs, fs = [], [], []
        for c in labels:
            p, r = _div(tp[c], n_pred[c]), _div(tp[c], n_ref[c])
            ps.append(p)
            rs.append(r)
            fs.append(_div(2 * p * r, p + r))
        precision, recall, f1 = (float(np.mean(v)) if v else 0.0 for v in (ps, rs, fs))
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": accuracy}


def _token_prf(prediction: str, reference: str) -> tuple[float, float, float]:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:  # SQuAD v2 convention: both empty is a perfect match, one empty scores 0
        v = float(pred == ref)
        return v, v, v
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common == 0:
        return 0.0, 0.0, 0.0
    p, r = common / len(pred), common / len(ref)
    return p, r, 2 * p * r / (p + r)


def token_f1(predictions: Sequence[str], references: References) -> dict[str, float]:
    """SQuAD token-overlap precision / recall / F1 (bag of normalised tokens with counts), mean over examples.

    Gives partial credit where exact match gives none; with several references, each example uses the one
    with the highest F1.
    """
    refs = _ref_lists(predictions, references)
    best = lambda p, rs: max((_token_prf(p, r) for r in rs), key=lambda t: t[2])
    scores = np.array([best(p, rs) for p, rs in zip(predictions, refs, strict=True)])
    precision, recall, f1 = scores.mean(axis=0)
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def _ref_streams(predictions: Sequence[str], references: References) -> list[list[str | None]]:
    """Per-example reference lists -> sacrebleu's reference streams (None pads a missing reference)."""
    refs = _ref_lists(predictions, references)
    n = max(len(r) for r in refs)
    return [[r[k] if k < len(r) else None for r in refs] for k in range(n)]


def bleu(predictions: Sequence[str], references: References, **kwargs: Any) -> float:
    """Corpus BLEU (0-100) from ``sacrebleu.corpus_bleu``; ``kwargs`` (tokenize, lowercase, ...) pass through.

    Delegating to sacrebleu keeps scores reproducible and comparable with published numbers.
    """
    import sacrebleu

    streams = _ref_streams(predictions, references)
    return float(sacrebleu.corpus_bleu(list(predictions), streams, **kwargs).score)


def chrf(predictions: Sequence[str], references: References, word_order: int = 0, **kwargs: Any) -> float:
    """Corpus chrF (0-100) from ``sacrebleu.corpus_chrf``; ``word_order=2`` gives chrF++."""
    import sacrebleu

    streams = _ref_streams(predictions, references)
    return float(sacrebleu.corpus_chrf(list(predictions), streams, word_order=word_order, **kwargs).score)


def rouge(
    predictions: Sequence[str],
    references: References,
    types: Sequence[str] = ("rouge1", "rouge2", "rougeL"),
    use_stemmer: bool = False,
) -> dict[str, float]:
    """Mean ROUGE over examples from ``rouge_score`` (Google's reference implementation).

    Returns ``{type: mean F-measure, f"{type}_precision": ..., f"{type}_recall": ...}``. With several
    references, each example takes the reference with the best F-measure (``score_multi``). The Porter
    stemmer ships with nltk's code, so no nltk data download is needed.
    """
    from rouge_score import rouge_scorer

    refs = _ref_lists(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=use_stemmer)
    sums = {t: np.zeros(3) for t in types}
    for p, rs in zip(predictions, refs, strict=True):
        scores = scorer.score(rs[0], p) if len(rs) == 1 else scorer.score_multi(rs, p)
        for t in types:
            s = scores[t]
            sums[t] += (s.precision, s.recall, s.fmeasure)
    out: dict[str, float] = {}
    n = len(predictions)
    for t in types:
        p, r, f = sums[t] / n
        out[t] = float(f)
        out[f"{t}_precision"] = float(p)
        out[f"{t}_recall"] = float(r)
    return out


def _prefixed(prefix: str, d: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{k}": v for k, v in d.items()}


def _token_f1_metric(p: Sequence[str], r: References) -> dict[str, float]:
    d = token_f1(p, r)
    return {"token_f1": d["f1"], "token_precision": d["precision"], "token_recall": d["recall"]}


def _classification_metric(p: Sequence[str], r: References) -> dict[str, float]:
    labels = [x if isinstance(x, str) else x[0] for x in r]  # a label task has one gold label per example
    return _prefixed("classification", classification_prf(p, labels, normalize=True))


METRICS: dict[str, Callable[[Sequence[str], References], dict[str, float]]] = {
    "exact_match": lambda p, r: {"exact_match": exact_match(p, r)},
    "token_f1": _token_f1_metric,
    "classification": _classification_metric,
    "bleu": lambda p, r: {"bleu": bleu(p, r)},
    "chrf": lambda p, r: {"chrf": chrf(p, r)},
    "rouge": lambda p, r: rouge(p, r),
}


def compute_generation_metrics(
    predictions: Sequence[str], references: References, names: str | Sequence[str]
) -> dict[str, float]:
    """Compute several metrics by name into one flat ``{metric: float}`` dict (ready for ``write_report``).

    Names: exact_match -> ``exact_match``; token_f1 -> ``token_f1``, ``token_precision``, ``token_recall``;
    classification -> ``classification_{precision,recall,f1,accuracy}`` (macro, labels stripped and
    lowercased); bleu -> ``bleu``; chrf -> ``chrf``; rouge -> ``rouge1``, ``rouge1_precision``, ...
    """
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; valid names: {sorted(METRICS)}")
    out: dict[str, float] = {}
    for name in names:
        out.update(METRICS[name](predictions, references))
    return out


def win_rate(scores_a: Sequence[float], scores_b: Sequence[float]) -> float:
    """Fraction of paired examples where A's score beats B's (ties count half), e.g. reward-model scores."""
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"scores must be 1-D and the same length, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("no scores to compare")
    return float(np.mean((a > b) + 0.5 * (a == b)))
