"""Reward kinds for online RL (PPO, GRPO): functions of decoded completions, reward models, weighted sums.

Every reward function maps one rollout, a :class:`RewardInput` (``prompts``, decoded ``completions``, the
prompt ``records`` they came from and ``finished``: whether each completion ended with EOS), to one float per
completion. ``config.rewards`` is a list of ``{kind, weight, name?, ...}`` dicts; :func:`build_rewards` turns
it into a :class:`WeightedReward` whose total is ``sum_i weight_i * r_i`` and which also reports every
component (``reward/<name>``). Kinds:

- every verifier of ``jaxpt.rewards.verifiers`` (``arithmetic``, ``exact``, ``reverse``, ...: the checks
  ``jaxpt eval`` and data generation use): ``correct`` (1.0) when the verifier accepts the completion, else
  ``incorrect`` (0.0); the reference is ``record[reference_key]`` (default: the record's ``reference``,
  ``answer`` or ``completion``). ``arithmetic`` solves ``"a+b="`` / ``"a-b="`` prompts itself.
- ``exact_match``: the ``exact`` verifier against ``record[answer_key]`` (default ``answer``; a record
  without it is an error).
- ``arithmetic_digits``: partial credit, the fraction of the answer's digits that are right (``per_digit``).
- ``format``: the stripped completion matches ``pattern`` (``mode`` = ``fullmatch`` / ``match`` /
  ``search``), and, with ``require_eos``, the completion ended with EOS; ``matched`` (1.0) / ``unmatched``.
- ``reward_model``: a scalar-head model (``jaxpt.rewards.reward_model``).
- ``python``: any importable ``fn="package.module:function"`` called as ``function(prompts, completions,
  records)`` (plus ``finished=`` if it accepts it) returning one float per completion.

New kinds can be added with :func:`register_reward` (or, for a yes/no check, ``register_verifier``).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxpt.data.tasks import parse_answer, solve
from jaxpt.errors import UserError
from jaxpt.rewards.verifiers import VERIFIERS, prompt_text, verify


@dataclasses.dataclass
class RewardInput:
    """One rollout as reward functions see it (all lists have one entry per completion)."""

    prompts: list[Any]  # the prompt as in the data: a string or a list of chat messages
    completions: list[str]  # decoded without special tokens
    records: list[dict[str, Any]]  # the full data records (answers, metadata)
    finished: np.ndarray  # bool: the completion ended with EOS (was not cut at max_new_tokens)

    def __len__(self) -> int:
        return len(self.completions)


RewardFn = Callable[[RewardInput], np.ndarray]
REWARD_KINDS: dict[str, Callable[..., RewardFn]] = {}


def register_reward(kind: str):
    """Decorator: ``@register_reward("mine") def factory(**options) -> RewardFn``."""

    def wrap(factory):
        REWARD_KINDS[kind] = factory
        return factory

    return wrap


REFERENCE_KEYS = ("reference", "answer", "completion")  # where a record's reference answer is looked for


def _reference(record: dict[str, Any], key: str) -> Any:
    if key:
        if key not in record:
            raise KeyError(f"reward: record has no {key!r} field: {sorted(record)}")
        return record[key]
    return next((record[k] for k in REFERENCE_KEYS if record.get(k) is not None), None)


def verifier_reward(verifier: str) -> Callable[..., RewardFn]:
    """The reward kind of a verifier: ``correct`` where it accepts the completion, else ``incorrect``."""

    def factory(correct: float = 1.0, incorrect: float = 0.0, reference_key: str = "") -> RewardFn:
        def fn(x: RewardInput) -> np.ndarray:
            ok = [
                verify(verifier, p, c, _reference(r, reference_key))
                for p, c, r in zip(x.prompts, x.completions, x.records, strict=True)
            ]
            return np.where(ok, correct, incorrect).astype(np.float32)

        return fn

    return factory


def reward_factory(kind: str) -> Callable[..., RewardFn]:
    """A registered reward kind, or a verifier used as one."""
    if kind in REWARD_KINDS:
        return REWARD_KINDS[kind]
    if kind in VERIFIERS:
        return verifier_reward(kind)
    known = sorted({*REWARD_KINDS, *VERIFIERS})
    raise UserError(f"unknown reward kind {kind!r}; available: {', '.join(known)}")


# ------------------------------------------------------------------------------------ verifiable rewards
@register_reward("arithmetic_digits")
def arithmetic_digits_reward(per_digit: float = 1.0) -> RewardFn:
    """Partial credit from the same verifier: the fraction of the answer's digits that are right, aligned
    from the units digit, over ``max(len(answer), len(prediction))`` (so extra or missing digits cost);
    0 when the completion does not start with an integer. ``per_digit`` scales it (1 = exact answer)."""

    def score(prompt: str, completion: str) -> float:
        got = parse_answer(completion)
        if got is None:
            return 0.0
        want, have = str(solve(prompt)), str(got)
        hits = sum(a == b for a, b in zip(reversed(want), reversed(have), strict=False))
        return hits / max(len(want), len(have))

    def fn(x: RewardInput) -> np.ndarray:
        return per_digit * np.asarray(
            [score(prompt_text(p), c) for p, c in zip(x.prompts, x.completions, strict=True)], np.float32
        )

    return fn


@register_reward("exact_match")
def exact_match_reward(answer_key: str = "answer", correct: float = 1.0, incorrect: float = 0.0) -> RewardFn:
    return verifier_reward("exact")(correct, incorrect, reference_key=answer_key)


@register_reward("format")
def format_reward(
    pattern: str = r"-?\d+",
    mode: str = "fullmatch",
    require_eos: bool = True,
    matched: float = 1.0,
    unmatched: float = 0.0,
    strip: bool = True,
) -> RewardFn:
    if mode not in ("fullmatch", "match", "search"):
        raise UserError(f"format reward: mode={mode!r}; expected fullmatch, match or search")
    regex = re.compile(pattern, re.DOTALL)
    test = getattr(regex, mode)

    def fn(x: RewardInput) -> np.ndarray:
        ok = np.asarray([test(c.strip() if strip else c) is not None for c in x.completions], bool)
        if require_eos:
            ok &= np.asarray(x.finished, bool)
        return np.where(ok, matched, unmatched).astype(np.float32)

    return fn


@register_reward("python")
def python_reward(fn: str) -> RewardFn:
    module_name, _, attr = fn.partition(":")
    if not attr:
        raise UserError(f"python reward: fn={fn!r} must look like 'package.module:function'")
    target = getattr(importlib.import_module(module_name), attr)
    takes_finished = "finished" in inspect.signature(target).parameters

    def call(x: RewardInput) -> np.ndarray:
        kwargs = {"finished": x.finished} if takes_finished else {}
        return np.asarray(target(x.prompts, x.completions, x.records, **kwargs), np.float32)

    return call


# -------------------------------------------------------------------------------------------- weighted sum
@dataclasses.dataclass
class WeightedReward:
    """``total = sum_i weight_i * r_i``; ``__call__`` returns ``(total [N], {name: r_i [N]})``."""

    names: list[str]
    weights: list[float]
    fns: list[RewardFn]

    def __call__(self, x: RewardInput) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        total = np.zeros((len(x),), np.float32)
        parts = {}
        for name, weight, fn in zip(self.names, self.weights, self.fns, strict=True):
            r = np.asarray(fn(x), np.float32).reshape(-1)
            if r.shape != (len(x),):
                raise ValueError(f"reward {name!r} returned {r.shape[0]} values for {len(x)} completions")
            parts[name] = r
            total += np.float32(weight) * r
        return total, parts


_BUILD_TIME = ("tokenizer", "mesh", "rules")


def build_rewards(
    specs: Sequence[dict[str, Any]], *, tokenizer: Any = None, mesh: Any = None, rules: Any = None
) -> WeightedReward:
    """``config.rewards`` -> :class:`WeightedReward`. Each spec: ``{kind, weight=1, name=kind, **options}``."""
    if not specs:
        raise UserError("config.rewards is empty: an online RL run needs at least one reward")
    names, weights, fns = [], [], []
    for spec in specs:
        spec = dict(spec)
        kind = spec.pop("kind", None)
        factory = reward_factory(kind)
        weight = float(spec.pop("weight", 1.0))
        name = str(spec.pop("name", kind))
        base, k = name, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        params = inspect.signature(factory).parameters
        unknown = sorted(set(spec) - set(params))
        if unknown:
            known = sorted(p for p in params if p not in _BUILD_TIME)
            raise UserError(f"reward {name!r} ({kind}): unknown options {unknown}; known: {known}")
        extra = {k: v for k, v in (("tokenizer", tokenizer), ("mesh", mesh), ("rules", rules)) if k in params}
        names.append(name)
        weights.append(weight)
        fns.append(factory(**spec, **extra))
    return WeightedReward(names, weights, fns)
