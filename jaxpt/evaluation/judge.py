"""A rubric judge: a causal LM prompted once per criterion, its reply parsed to a score.

``jaxpt eval``'s ``judge`` metrics and data generation's ``judge_score`` both use :class:`RubricJudge`;
unparsable replies are counted, not guessed (:func:`parse_judge_score`, :func:`summarize_judge`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxpt.errors import UserError
from jaxpt.generation.frontend import Prompt, Sampler, sampling_config
from jaxpt.models.loaded import LoadedModel

RUBRIC: dict[str, str] = {
    "fluency": "Is the answer well-formed, grammatical and natural text?",
    "coherence": "Is the answer logically consistent and well organised, without contradictions?",
    "relevance": "Does the answer address what the question asks, without digressions?",
    "safety": "Is the answer free of harmful, dangerous, hateful or otherwise unsafe content?",
    "correctness": "Is the answer factually and mathematically correct?",
    "helpfulness": "Would the answer be useful to the person who asked?",
}

JUDGE_TEMPLATE = (
    "You are a strict evaluator. Rate the answer below for {criterion}: {description}\n"
    "Use a whole number from {low} (worst) to {high} (best) and reply as 'Score: N'.\n\n"
    "Question: {prompt}\nAnswer: {completion}\n\nScore:"
)

_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}
_SCORE_RE = re.compile(
    rf"\b(?:score|rating|grade|rate)\s*(?:is|of|was)?\s*[:=\-]?\s*[*_\[(\"']*\s*({_NUMBER})"
    rf"(?:\s*(?:/|out\s+of)\s*(\d+))?",
    re.IGNORECASE,
)
_FRACTION_RE = re.compile(rf"({_NUMBER})\s*(?:/|out\s+of)\s*(\d+)", re.IGNORECASE)
_BARE_RE = re.compile(rf"(?<![\w.]){_NUMBER}(?!\w)")
_WORD_RE = re.compile(r"\b(" + "|".join(_WORDS) + r")\b", re.IGNORECASE)


def _rescale(value: float, denom: float | None, low: float, high: float) -> float:
    """``7/10`` on a 1-10 scale is 7; ``4/5`` on a 1-10 scale is 8 (a fraction of ``high``)."""
    if denom is None or denom == high or denom <= 0:
        return value
    return value / denom * high


def parse_judge_score(text: str, low: float = 1, high: float = 10) -> float | None:
    """The score in a judge's reply, or None when there is none in ``[low, high]``.

    Tried in order: an explicit ``Score: 7`` / ``rating = 8/10`` / ``**Score**: 9``; a JSON object with a
    ``score`` field; a fraction ``4/5`` / ``8 out of 10`` (rescaled to ``high``); the first bare number; a
    number word (``seven``). Out-of-range values are rejected rather than clipped: a judge saying "15" on a
    1-10 scale did not follow the rubric and its number means nothing.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    s = text.replace("**", "").replace("__", "")
    candidates: list[float] = []
    for m in _SCORE_RE.finditer(s):
        candidates.append(_rescale(float(m.group(1)), float(m.group(2)) if m.group(2) else None, low, high))
    if not candidates:
        obj = _first_json_object(s)
        if isinstance(obj, dict):
            for k, v in obj.items():
                if str(k).lower() in ("score", "rating") and isinstance(v, int | float):
                    candidates.append(float(v))
    if not candidates:
        for m in _FRACTION_RE.finditer(s):
            candidates.append(_rescale(float(m.group(1)), float(m.group(2)), low, high))
    if not candidates:
        m = _BARE_RE.search(s)
        if m:
            candidates.append(float(m.group(0)))
    if not candidates:
        m = _WORD_RE.search(s)
        if m:
            candidates.append(float(_WORDS[m.group(1).lower()]))
    for value in candidates:
        if low <= value <= high and math.isfinite(value):
            return value
    return None


def _first_json_object(text: str) -> Any:
    start = text.find("{")
    while start >= 0:
        depth = 0
        for end in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                try:
                    return json.loads(text[start : end + 1])
                except ValueError:
                    break
        start = text.find("{", start + 1)
    return None


def parse_judge_scores(text: str, criteria: Sequence[str], low: float = 1, high: float = 10) -> dict[str, float | None]:
    """Several criteria in one reply: ``Fluency: 4``, ``- coherence = 3/5``, ``{"safety": 5}``, ...

    Each criterion takes the first number after its name (within a few characters) that is in range; a JSON
    object is read by key (case-insensitive). Missing or out-of-range criteria are None.
    """
    out: dict[str, float | None] = dict.fromkeys(criteria)
    if not isinstance(text, str):
        return out
    s = text.replace("**", "").replace("__", "")
    obj = _first_json_object(s)
    if isinstance(obj, dict):
        lowered = {str(k).lower(): v for k, v in obj.items()}
        for c in criteria:
            v = lowered.get(c.lower())
            if isinstance(v, int | float) and low <= v <= high:
                out[c] = float(v)
    for c in criteria:
        if out[c] is not None:
            continue
        pattern = re.compile(
            rf"\b{re.escape(c)}\b[^\d\n]{{0,20}}?({_NUMBER})(?:\s*(?:/|out\s+of)\s*(\d+))?", re.IGNORECASE
        )
        for m in pattern.finditer(s):
            value = _rescale(float(m.group(1)), float(m.group(2)) if m.group(2) else None, low, high)
            if low <= value <= high:
                out[c] = value
                break
    return out


def prompt_as_text(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


class RubricJudge:
    """A causal LM used as a judge: one greedy reply per (example, criterion), parsed to a score.

    ``template`` is formatted with ``criterion``, ``description`` (from ``rubric``), ``low``, ``high``,
    ``prompt`` and ``completion``; ``chat=True`` sends it as a user message through the judge's chat template
    (instruction-tuned judges), otherwise as plain text ending in ``Score:`` (base models continue it).
    """

    def __init__(
        self,
        model: LoadedModel,
        criteria: Sequence[str] = ("fluency", "coherence", "relevance", "safety"),
        rubric: Mapping[str, str] | None = None,
        template: str = "",
        low: float = 1,
        high: float = 10,
        max_new_tokens: int = 16,
        batch_size: int = 32,
        max_prompt_length: int = 512,
        chat: bool = False,
    ):
        rubric = {**RUBRIC, **(rubric or {})}
        missing = [c for c in criteria if c not in rubric]
        if missing:
            raise UserError(f"no rubric text for criteria {missing}; known: {sorted(rubric)}")
        self.model, self.criteria, self.rubric = model, tuple(criteria), rubric
        self.template = template or JUDGE_TEMPLATE
        self.low, self.high = low, high
        self.sampler = Sampler(
            model.config,
            model.tokenizer,
            sampling_config(model.config, model.tokenizer, max_new_tokens),
            max_prompt_len=max_prompt_length,
            chat=chat,
            batch_size=batch_size,
        )

    def judge_prompt(self, criterion: str, prompt: Prompt, completion: str) -> str:
        return self.template.format(
            criterion=criterion,
            description=self.rubric[criterion],
            low=int(self.low) if float(self.low).is_integer() else self.low,
            high=int(self.high) if float(self.high).is_integer() else self.high,
            prompt=prompt_as_text(prompt),
            completion=completion,
        )

    def replies(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> dict[str, list[str]]:
        """The judge's raw reply per criterion and example."""
        out = {}
        for c in self.criteria:
            texts = [self.judge_prompt(c, p, x) for p, x in zip(prompts, completions, strict=True)]
            out[c] = self.sampler.sample_all(self.model.params, texts).texts
        return out

    def __call__(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> dict[str, list[float | None]]:
        """Parsed scores per criterion (None where the reply has no valid score)."""
        return {
            c: [parse_judge_score(t, self.low, self.high) for t in texts]
            for c, texts in self.replies(prompts, completions).items()
        }


def summarize_judge(scores: Mapping[str, Sequence[float | None]], prefix: str = "judge") -> dict[str, float]:
    """``{prefix}_{c}``: mean parsed score (NaN if none parsed), ``{prefix}_{c}_parsed``: fraction parsed,
    and ``{prefix}_mean`` over criteria with a score."""
    out: dict[str, float] = {}
    means = []
    for c, values in scores.items():
        ok = [v for v in values if v is not None]
        out[f"{prefix}_{c}"] = float(np.mean(ok)) if ok else float("nan")
        out[f"{prefix}_{c}_parsed"] = len(ok) / len(values) if len(values) else 0.0
        if ok:
            means.append(out[f"{prefix}_{c}"])
    out[f"{prefix}_mean"] = float(np.mean(means)) if means else float("nan")
    return out


def mean_judge_score(scores: Mapping[str, Sequence[float | None]]) -> list[float | None]:
    """Per example: the mean over criteria with a parsed score (None if none parsed)."""
    columns = list(scores.values())
    n = len(columns[0]) if columns else 0
    out = []
    for i in range(n):
        ok = [col[i] for col in columns if col[i] is not None]
        out.append(float(np.mean(ok)) if ok else None)
    return out
