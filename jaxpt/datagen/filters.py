"""Quality filters for synthetic data.

Every filter is a callable ``rows -> (kept_rows, FilterReport)`` over a list of row dicts (rows are never
mutated, kept rows keep their order), so a pipeline can chain them with ``apply_filters`` and report how
many rows each one removed and why. Plain functions with the same contract work in ``apply_filters`` too.

Filters that read a text field (``key``) accept a string, or a chat-style list of ``{"content": ...}``
messages (contents joined by newlines); a missing/None field removes the row with reason ``missing_<key>``.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

Row = dict[str, Any]


@dataclasses.dataclass
class FilterReport:
    """What one filter did: ``removed`` rows in total, broken down by ``reasons``; ``kept`` rows remain."""

    name: str
    removed: int
    reasons: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    kept: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "removed": self.removed, "kept": self.kept, "reasons": dict(self.reasons)}


Filter = Callable[[list[Row]], tuple[list[Row], FilterReport]]


def field_text(row: Mapping[str, Any], key: str) -> str | None:
    """The text of ``row[key]``: strings as is, chat message lists as joined contents, None if missing."""
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and all(isinstance(m, Mapping) for m in value):
        return "\n".join(str(m.get("content", "")) for m in value)
    return str(value)


def _normalize(text: str, lowercase: bool = True) -> str:
    text = " ".join(text.split())
    return text.casefold() if lowercase else text


class _KeepIf:
    """Base for per-row filters: subclasses return None to keep a row, or the reason to drop it."""

    name = "filter"

    def reason(self, row: Row) -> str | None:
        raise NotImplementedError

    def __call__(self, rows: list[Row]) -> tuple[list[Row], FilterReport]:
        kept, reasons = [], collections.Counter()
        for row in rows:
            why = self.reason(row)
            if why is None:
                kept.append(row)
            else:
                reasons[why] += 1
        return kept, FilterReport(self.name, len(rows) - len(kept), reasons, len(kept))


class ExactDedup(_KeepIf):
    """Drop rows whose ``keys`` fields equal an earlier row's after whitespace collapsing and casefolding.

    Cheap first pass before ``NearDedup``: repeated generations and copy-pasted prompts are common in
    synthetic data and would otherwise be over-weighted in training.
    """

    def __init__(
        self,
        keys: Sequence[str] = ("prompt", "completion"),
        lowercase: bool = True,
        name: str = "exact_dedup",
    ):
        self.keys = (keys,) if isinstance(keys, str) else tuple(keys)
        self.lowercase = lowercase
        self.name = name

    def __call__(self, rows: list[Row]) -> tuple[list[Row], FilterReport]:
        self._seen: set[tuple[str, ...]] = set()
        return super().__call__(rows)

    def reason(self, row: Row) -> str | None:
        key = tuple(_normalize(field_text(row, k) or "", self.lowercase) for k in self.keys)
        if key in self._seen:
            return "exact_duplicate"
        self._seen.add(key)
        return None


_MERSENNE_31 = (1 << 31) - 1  # MinHash prime: a, b < p and 32-bit x keep a*x + b inside uint64


def _lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows_per_band) with bands*rows <= num_perm minimising weighted LSH error around ``threshold``.

    False negatives are weighted 19x false positives (a pair right at the threshold becomes a candidate
    with probability >~ 0.9): candidates are verified by exact Jaccard afterwards, so a false positive
    only costs time while a false negative leaves a duplicate in the data.
    """
    s = np.linspace(0.0, 1.0, 1001)
    below, above = s <= threshold, s >= threshold
    best, best_err = (1, num_perm), math.inf
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            p = 1.0 - (1.0 - s**r) ** b  # probability a pair of similarity s becomes a candidate
            fp = np.trapezoid(p[below], s[below]) if below.sum() > 1 else 0.0
            fn = np.trapezoid(1.0 - p[above], s[above]) if above.sum() > 1 else 0.0
            err = 0.05 * fp + 0.95 * fn
            if err < best_err - 1e-12:
                best, best_err = (b, r), err
    return best


class NearDedup:
    """Drop rows whose ``key`` text is a near duplicate (n-gram Jaccard >= ``threshold``) of an earlier row.

    MinHash signatures (``num_perm`` universal hashes over stable blake2b shingle hashes, seeded by
    ``seed``) are banded for LSH so only rows sharing a band are compared; every candidate pair is then
    checked with the exact Jaccard of the n-gram sets, so the result has no false positives. ``unit``
    chooses character (default, robust to small typos) or word n-grams. The first occurrence is kept.
    ``bands`` (rows per band = num_perm // bands) overrides the automatic LSH choice.
    """

    def __init__(
        self,
        key: str,
        threshold: float = 0.8,
        ngram: int = 3,
        unit: str = "char",
        num_perm: int = 64,
        seed: int = 0,
        bands: int | None = None,
        lowercase: bool = True,
        name: str = "near_dedup",
    ):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if unit not in ("char", "word"):
            raise ValueError(f"unit must be 'char' or 'word', got {unit!r}")
        if ngram < 1 or num_perm < 1:
            raise ValueError("ngram and num_perm must be >= 1")
        self.key, self.threshold, self.ngram, self.unit = key, threshold, ngram, unit
        self.num_perm, self.seed, self.lowercase, self.name = num_perm, seed, lowercase, name
        if bands is None:
            self.bands, self.rows_per_band = _lsh_params(threshold, num_perm)
        else:
            if not 1 <= bands <= num_perm:
                raise ValueError(f"bands must be in [1, num_perm], got {bands}")
            self.bands, self.rows_per_band = bands, num_perm // bands
        rng = np.random.default_rng(seed)
        self._a = rng.integers(1, _MERSENNE_31, size=num_perm, dtype=np.uint64)
        self._b = rng.integers(0, _MERSENNE_31, size=num_perm, dtype=np.uint64)
        self.duplicate_of: dict[int, int] = {}  # last call: removed row index -> index of the kept row

    def shingles(self, text: str) -> set[str]:
        """The n-gram set of ``text`` (after whitespace/case normalisation); short texts are one shingle."""
        text = _normalize(text, self.lowercase)
        units: Sequence[str] = text if self.unit == "char" else text.split()
        if not units:
            return set()
        if len(units) <= self.ngram:
            return {text if self.unit == "char" else " ".join(units)}
        sep = "" if self.unit == "char" else " "
        return {sep.join(units[i : i + self.ngram]) for i in range(len(units) - self.ngram + 1)}

    @staticmethod
    def _hash(shingle: str) -> int:
        return int.from_bytes(hashlib.blake2b(shingle.encode("utf-8"), digest_size=8).digest(), "little")

    def signature(self, hashes: Iterable[int]) -> np.ndarray:
        """MinHash signature [num_perm] of a set of 64-bit shingle hashes (uses their high 32 bits)."""
        x = np.fromiter((h >> 32 for h in hashes), dtype=np.uint64)
        return ((self._a[:, None] * x[None, :] + self._b[:, None]) % _MERSENNE_31).min(axis=1)

    def __call__(self, rows: list[Row]) -> tuple[list[Row], FilterReport]:
        buckets: dict[tuple[int, bytes], list[int]] = collections.defaultdict(list)
        kept_sets: dict[int, frozenset[int]] = {}
        kept, reasons = [], collections.Counter()
        self.duplicate_of = {}
        r = self.rows_per_band
        for i, row in enumerate(rows):
            text = field_text(row, self.key)
            if text is None:
                reasons[f"missing_{self.key}"] += 1
                continue
            hashes = frozenset(self._hash(s) for s in self.shingles(text))
            if not hashes:  # empty text: nothing to compare, leave it to other filters
                kept.append(row)
                continue
            sig = self.signature(hashes)
            band_keys = [(b, sig[b * r : (b + 1) * r].tobytes()) for b in range(self.bands)]
            candidates = sorted({j for k in band_keys for j in buckets.get(k, ())})
            dup = next((j for j in candidates if _jaccard(hashes, kept_sets[j]) >= self.threshold), None)
            if dup is not None:
                reasons["near_duplicate"] += 1
                self.duplicate_of[i] = dup
                continue
            kept.append(row)
            kept_sets[i] = hashes
            for k in band_keys:
                buckets[k].append(i)
        return kept, FilterReport(self.name, len(rows) - len(kept), reasons, len(kept))


def _jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class LengthFilter(_KeepIf):
    """Keep rows whose ``key`` text length lies within the given bounds (inclusive).

    Character bounds catch empty or runaway generations; token bounds (``tokenizer``: text -> token
    sequence, or an HF-style tokenizer returning ``{"input_ids": ...}``; whitespace split if omitted)
    keep examples within the training sequence length.
    """

    def __init__(
        self,
        key: str,
        min_chars: int | None = None,
        max_chars: int | None = None,
        min_tokens: int | None = None,
        max_tokens: int | None = None,
        tokenizer: Callable[[str], Any] | None = None,
        name: str = "length",
    ):
        self.key, self.name, self.tokenizer = key, name, tokenizer
        self.min_chars, self.max_chars = min_chars, max_chars
        self.min_tokens, self.max_tokens = min_tokens, max_tokens

    def num_tokens(self, text: str) -> int:
        if self.tokenizer is None:
            return len(text.split())
        out = self.tokenizer(text)
        if isinstance(out, Mapping):
            out = out["input_ids"]
        return len(out)

    def reason(self, row: Row) -> str | None:
        text = field_text(row, self.key)
        if text is None:
            return f"missing_{self.key}"
        n = len(text)
        if self.min_chars is not None and n < self.min_chars:
            return "too_short_chars"
        if self.max_chars is not None and n > self.max_chars:
            return "too_long_chars"
        if self.min_tokens is not None or self.max_tokens is not None:
            t = self.num_tokens(text)
            if self.min_tokens is not None and t < self.min_tokens:
                return "too_short_tokens"
            if self.max_tokens is not None and t > self.max_tokens:
                return "too_long_tokens"
        return None


class FormatFilter(_KeepIf):
    """Keep rows whose ``key`` text has the required format: a regex (``re.search`` by default, or
    ``mode="fullmatch"``/``"match"``) or a predicate ``text -> bool`` (e.g. "parses as JSON", "has a
    \\boxed{} answer"), so malformed generations never reach training or verification."""

    def __init__(
        self,
        key: str,
        pattern: str | re.Pattern[str] | Callable[[str], bool],
        mode: str = "search",
        flags: int = 0,
        name: str = "format",
    ):
        if mode not in ("search", "match", "fullmatch"):
            raise ValueError(f"mode must be search, match or fullmatch, got {mode!r}")
        self.key, self.name = key, name
        if callable(pattern) and not isinstance(pattern, re.Pattern):
            self._check = pattern
        else:
            regex = re.compile(pattern, flags) if isinstance(pattern, str) else pattern
            method = getattr(regex, mode)
            self._check = lambda text: method(text) is not None

    def reason(self, row: Row) -> str | None:
        text = field_text(row, self.key)
        if text is None:
            return f"missing_{self.key}"
        return None if self._check(text) else "format_mismatch"


class VerifierFilter(_KeepIf):
    """Keep rows a verifier accepts (accuracy filtering: checked math answers, passing unit tests...).

    ``fn(row)`` returns truthy to keep, or ``(ok, reason)`` to name the rejection; rejections count as
    ``wrong_answer`` by default and exceptions as ``verifier_error`` (a crashing check never keeps a row).
    """

    def __init__(self, fn: Callable[[Row], Any], name: str = "verifier"):
        self.fn, self.name = fn, name

    def reason(self, row: Row) -> str | None:
        try:
            out = self.fn(row)
        except Exception:
            return "verifier_error"
        if isinstance(out, tuple):
            ok, why = out
            return None if ok else str(why)
        return None if out else "wrong_answer"


class ScoreFilter(_KeepIf):
    """Keep rows whose numeric ``key`` (e.g. a reward-model score) is >= ``min_score`` (and <= ``max_score``).

    Missing or NaN scores are removed (``missing_<key>``): an unscored row has not passed the bar.
    """

    def __init__(
        self,
        key: str = "score",
        min_score: float | None = None,
        max_score: float | None = None,
        name: str = "score",
    ):
        self.key, self.min_score, self.max_score, self.name = key, min_score, max_score, name

    def reason(self, row: Row) -> str | None:
        value = row.get(self.key)
        if value is None or math.isnan(float(value)):
            return f"missing_{self.key}"
        if self.min_score is not None and float(value) < self.min_score:
            return "low_score"
        if self.max_score is not None and float(value) > self.max_score:
            return "high_score"
        return None


def _level_seed(level: Hashable) -> int:
    return int.from_bytes(hashlib.blake2b(repr(level).encode(), digest_size=4).digest(), "little")


class ComplexityBalance:
    """Cap or rebalance how many rows each difficulty level (``row[key]``) contributes.

    * ``max_per_level=n``: at most ``n`` rows per level;
    * ``proportions={level: weight}``: the largest subset whose per-level counts follow the weights
      (levels absent from ``proportions`` or with weight 0 are dropped), optionally also capped;
    * neither: equal counts, i.e. every level cut to the size of the smallest.

    Which rows survive is a seeded random choice per level (independent of the other levels), and the
    kept rows keep their original order, so the result is deterministic for a given ``seed``.
    """

    def __init__(
        self,
        key: str = "difficulty",
        max_per_level: int | None = None,
        proportions: Mapping[Hashable, float] | None = None,
        seed: int = 0,
        name: str = "complexity_balance",
    ):
        if proportions is not None and (not proportions or any(w < 0 for w in proportions.values())):
            raise ValueError("proportions must be a non-empty mapping of non-negative weights")
        self.key, self.max_per_level, self.seed, self.name = key, max_per_level, seed, name
        self.proportions = proportions

    def targets(self, counts: Mapping[Hashable, int]) -> dict[Hashable, int]:
        """How many rows to keep per level given how many each level has."""
        if self.proportions is not None:
            total_w = sum(self.proportions.values())
            w = {lv: self.proportions.get(lv, 0.0) / total_w for lv in counts}
            caps = {
                lv: counts[lv] if self.max_per_level is None else min(counts[lv], self.max_per_level) for lv in counts
            }
            # Largest total N with floor(w*N) <= cap for every weighted level present in the data.
            wanted = [lv for lv in self.proportions if self.proportions[lv] > 0]
            if any(lv not in counts for lv in wanted):
                n_total = 0  # a requested level has no rows: its proportion cannot be met
            else:
                n_total = min(math.floor((caps[lv] + 1) / w[lv] - 1e-9) for lv in wanted) if wanted else 0
            return {lv: min(caps[lv], math.floor(w[lv] * n_total + 1e-9)) for lv in counts}
        if self.max_per_level is not None:
            return {lv: min(c, self.max_per_level) for lv, c in counts.items()}
        smallest = min(counts.values(), default=0)
        return dict.fromkeys(counts, smallest)

    def __call__(self, rows: list[Row]) -> tuple[list[Row], FilterReport]:
        reasons: collections.Counter[str] = collections.Counter()
        by_level: dict[Hashable, list[int]] = collections.defaultdict(list)
        for i, row in enumerate(rows):
            level = row.get(self.key)
            if level is None:
                reasons[f"missing_{self.key}"] += 1
            else:
                by_level[level].append(i)
        targets = self.targets({lv: len(ix) for lv, ix in by_level.items()})
        keep: set[int] = set()
        for level, idx in by_level.items():
            n = targets[level]
            if n < len(idx):
                rng = np.random.default_rng([self.seed, _level_seed(level)])
                chosen = rng.choice(len(idx), size=n, replace=False)
                reasons[f"over_quota:{level}"] += len(idx) - n
                keep.update(idx[j] for j in chosen)
            else:
                keep.update(idx)
        kept = [row for i, row in enumerate(rows) if i in keep]
        return kept, FilterReport(self.name, len(rows) - len(kept), reasons, len(kept))


def apply_filters(rows: list[Row], filters: Sequence[Filter]) -> tuple[list[Row], list[FilterReport]]:
    """Run ``filters`` in order, each on the previous one's output; returns final rows and one report each."""
    reports = []
    for f in filters:
        rows, report = f(list(rows))
        reports.append(report)
    return rows, reports


def format_reports(reports: Sequence[FilterReport]) -> str:
    """A Markdown table of filter reports (filter | removed | kept | reasons) for logs and READMEs."""
    lines = ["| filter | removed | kept | reasons |", "|---|---|---|---|"]
    for r in reports:
        why = ", ".join(f"{k}: {v}" for k, v in r.reasons.most_common()) or "-"
        lines.append(f"| {r.name} | {r.removed} | {r.kept} | {why} |")
    return "\n".join(lines)
