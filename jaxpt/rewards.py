"""Rewards for online RL (PPO, GRPO): functions of decoded completions, reward models, weighted sums.

Every reward function maps one rollout, a :class:`RewardInput` (``prompts``, decoded ``completions``, the
prompt ``records`` they came from and ``finished``: whether each completion ended with EOS), to one float per
completion. ``config.rewards`` is a list of ``{kind, weight, name?, ...}`` dicts; :func:`build_rewards` turns
it into a :class:`WeightedReward` whose total is ``sum_i weight_i * r_i`` and which also reports every
component (``reward/<name>``). Kinds:

- ``arithmetic``: the verifier of ``jaxpt.data.tasks`` (``check_answer(prompt, completion)``): ``correct``
  (1.0) for the exact answer, else ``incorrect`` (0.0). Needs ``"a+b="`` / ``"a-b="`` prompts.
- ``arithmetic_digits``: partial credit, the fraction of the answer's digits that are right (``per_digit``).
- ``exact_match``: the stripped completion (its first line) equals ``str(record[answer_key])``.
- ``format``: the stripped completion matches ``pattern`` (``mode`` = ``fullmatch`` / ``match`` /
  ``search``), and, with ``require_eos``, the completion ended with EOS; ``matched`` (1.0) / ``unmatched``.
- ``reward_model``: a :class:`jaxpt.models.reward.ScalarHeadModel` loaded from a HF
  ``*ForSequenceClassification`` directory or an RM run (``path``: the run's ``export/`` is used), scoring
  ``prompt + completion (+ EOS if the completion finished)`` tokenised as the preference data is
  (``jaxpt/data/preference.py``), i.e. exactly as the reward model was trained. ``max_length`` (tokens kept,
  from the end), ``batch_size`` (rows per forward; 0 = all), ``shift``/``scale`` (``(r + shift) * scale``),
  ``chat`` (string prompts scored as one user message through the chat template, e.g. when the reward model
  learned on conversations and ``rollout.chat`` renders the prompts so; otherwise a prompt's type decides).
- ``python``: any importable ``fn="package.module:function"`` called as ``function(prompts, completions,
  records)`` (plus ``finished=`` if it accepts it) returning one float per completion.

New kinds can be added with :func:`register_reward`.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxpt.data.preference import encode_scored
from jaxpt.data.tasks import check_answer, parse_answer, solve
from jaxpt.data.tokenizer import is_messages, load_tokenizer


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


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if is_messages(prompt):
        users = [m["content"] for m in prompt if m["role"] == "user"]
        return users[-1] if users else prompt[-1]["content"]
    raise ValueError(f"prompt must be a string or chat messages, got {type(prompt).__name__}")


# ------------------------------------------------------------------------------------ verifiable rewards
@register_reward("arithmetic")
def arithmetic_reward(correct: float = 1.0, incorrect: float = 0.0) -> RewardFn:
    def fn(x: RewardInput) -> np.ndarray:
        ok = [check_answer(_prompt_text(p), c) for p, c in zip(x.prompts, x.completions, strict=True)]
        return np.where(ok, correct, incorrect).astype(np.float32)

    return fn


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
            [score(_prompt_text(p), c) for p, c in zip(x.prompts, x.completions, strict=True)], np.float32
        )

    return fn


@register_reward("exact_match")
def exact_match_reward(answer_key: str = "answer", correct: float = 1.0, incorrect: float = 0.0) -> RewardFn:
    def fn(x: RewardInput) -> np.ndarray:
        ok = []
        for record, completion in zip(x.records, x.completions, strict=True):
            if answer_key not in record:
                raise KeyError(f"exact_match reward: record has no {answer_key!r} field: {sorted(record)}")
            lines = completion.strip().splitlines()
            ok.append(bool(lines) and lines[0].strip() == str(record[answer_key]).strip())
        return np.where(ok, correct, incorrect).astype(np.float32)

    return fn


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
        raise ValueError(f"format reward: mode={mode!r}; expected fullmatch, match or search")
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
        raise ValueError(f"python reward: fn={fn!r} must look like 'package.module:function'")
    target = getattr(importlib.import_module(module_name), attr)
    takes_finished = "finished" in inspect.signature(target).parameters

    def call(x: RewardInput) -> np.ndarray:
        kwargs = {"finished": x.finished} if takes_finished else {}
        return np.asarray(target(x.prompts, x.completions, x.records, **kwargs), np.float32)

    return call


# ------------------------------------------------------------------------------------------ reward model
def resolve_model_dir(path: str) -> str:
    """A HF directory, or an RM run workdir (its ``export/``)."""
    if os.path.exists(os.path.join(path, "config.json")) and any(
        f.endswith((".safetensors", ".safetensors.index.json")) for f in os.listdir(path)
    ):
        return path
    export = os.path.join(path, "export")
    if os.path.isdir(export):
        return export
    raise FileNotFoundError(
        f"reward model {path!r}: neither a HF *ForSequenceClassification directory nor a run with export/"
    )


class RewardModelScorer:
    """Scores ``prompt + completion`` with a frozen scalar-head model (jitted, optionally sharded), read at the
    last token of each row tokenised by :func:`jaxpt.data.preference.encode_scored`.

    The one scorer of the code base: RL's ``reward_model`` reward, ``jaxpt eval``'s reward metrics and data
    generation's ``rm_score`` all use it, so one text gets one score. ``chat=True`` renders string prompts as
    one user message; message lists always go through the chat template.
    """

    def __init__(
        self,
        config: Any,
        params: Any,
        tokenizer: Any,
        *,
        mesh: Any = None,
        max_length: int = 512,
        batch_size: int = 0,
        chat: bool = False,
    ):
        from jaxpt.models.reward import ScalarHeadModel

        self.config, self.params, self.tokenizer = config, params, tokenizer
        self.mesh, self.max_length, self.batch_size, self.chat = mesh, int(max_length), int(batch_size), chat
        model = ScalarHeadModel(config)
        self._apply = jax.jit(lambda p, t, pos, seg: model.apply({"params": p}, t, pos, seg))

    @classmethod
    def load(
        cls,
        path: str,
        *,
        tokenizer: Any = None,
        mesh: Any = None,
        rules: Any = None,
        dtype: str | None = None,
        **options: Any,
    ) -> RewardModelScorer:
        """From a HF ``*ForSequenceClassification`` directory or an RM run (its ``export/``), its params sharded
        by ``rules`` over ``mesh`` when both are given; its own tokenizer files win over ``tokenizer``."""
        from jaxpt.models.config import ModelConfig
        from jaxpt.models.hf import load_hf
        from jaxpt.models.reward import abstract_reward_params
        from jaxpt.sharding import param_shardings

        path = resolve_model_dir(path)
        if os.path.exists(os.path.join(path, "tokenizer_config.json")):
            tokenizer = load_tokenizer(path)
        if tokenizer is None:
            raise ValueError(f"reward model {path!r} has no tokenizer files and none was given")
        run = {"dtype": dtype} if dtype else {}
        config = ModelConfig.from_hf(path, **run)
        shardings = None
        if mesh is not None and rules is not None:
            shardings = param_shardings(abstract_reward_params(config), mesh, rules)
        config, params = load_hf(path, head="score", shardings=shardings, **run)
        return cls(config, params, tokenizer, mesh=mesh, **options)

    def tokenize(self, prompt: Any, completion: str, finished: bool) -> list[int]:
        return encode_scored(self.tokenizer, prompt, completion, self.max_length, finished, chat=self.chat)

    def __call__(self, x: RewardInput) -> np.ndarray:
        return self.score(x.prompts, x.completions, x.finished)

    def score(self, prompts: Sequence[Any], completions: Sequence[str], finished: Any = None) -> np.ndarray:
        """float32 ``[N]``: one score per pair; ``finished`` (default: all) says which completions ended with
        EOS (see ``encode_scored``)."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        finished = np.ones(len(prompts), bool) if finished is None else np.asarray(finished, bool).reshape(-1)
        if len(finished) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(finished)} finished flags")
        rows = [self.tokenize(p, c, bool(f)) for p, c, f in zip(prompts, completions, finished, strict=True)]
        empty = [i for i, r in enumerate(rows) if not r]
        if empty:
            raise ValueError(f"pairs {empty[:5]} tokenise to nothing: there is no last token to score")
        n = len(rows)
        if n == 0:
            return np.zeros((0,), np.float32)
        chunk = self.batch_size or n
        if self.mesh is not None:  # rows split over the batch axes of the mesh
            k = int(np.prod([self.mesh.shape[a] for a in ("data", "fsdp")]))
            chunk = -(-chunk // k) * k
        width = max(len(r) for r in rows)
        width = min(-(-width // 64) * 64, self.max_length)  # few distinct shapes, few compiles
        pad = self.tokenizer.pad_token_id or 0
        out = []
        for start in range(0, n, chunk):
            part = rows[start : start + chunk]
            tokens = np.full((chunk, width), pad, np.int32)
            seg = np.zeros((chunk, width), np.int32)
            for i, r in enumerate(part):
                tokens[i, : len(r)] = r
                seg[i, : len(r)] = 1
            pos = np.maximum(np.cumsum(seg, axis=1) - 1, 0) * seg
            arrays = [tokens, pos, seg]
            if self.mesh is not None:
                from jaxpt.sharding import batch_sharding

                arrays = [jax.device_put(a, batch_sharding(self.mesh)) for a in arrays]
            scores = np.asarray(jax.device_get(self._apply(self.params, *arrays)), np.float32)
            out.append(scores[: len(part)])
        return np.concatenate(out)


@register_reward("reward_model")
def reward_model_reward(
    path: str,
    max_length: int = 512,
    batch_size: int = 0,
    shift: float = 0.0,
    scale: float = 1.0,
    dtype: str = "",
    chat: bool = False,
    *,
    tokenizer: Any = None,
    mesh: Any = None,
    rules: Any = None,
) -> RewardFn:
    scorer = RewardModelScorer.load(
        path,
        tokenizer=tokenizer,
        mesh=mesh,
        rules=rules,
        dtype=dtype or None,
        max_length=max_length,
        batch_size=batch_size,
        chat=chat,
    )

    def fn(x: RewardInput) -> np.ndarray:
        return ((scorer(x) + shift) * scale).astype(np.float32)

    fn.scorer = scorer  # type: ignore[attr-defined]
    return fn


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
        raise ValueError("config.rewards is empty: an online RL run needs at least one reward")
    names, weights, fns = [], [], []
    for spec in specs:
        spec = dict(spec)
        kind = spec.pop("kind", None)
        if kind not in REWARD_KINDS:
            raise ValueError(f"unknown reward kind {kind!r}; available: {', '.join(sorted(REWARD_KINDS))}")
        weight = float(spec.pop("weight", 1.0))
        name = str(spec.pop("name", kind))
        base, k = name, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        factory = REWARD_KINDS[kind]
        params = inspect.signature(factory).parameters
        unknown = sorted(set(spec) - set(params))
        if unknown:
            known = sorted(p for p in params if p not in _BUILD_TIME)
            raise ValueError(f"reward {name!r} ({kind}): unknown options {unknown}; known: {known}")
        extra = {k: v for k, v in (("tokenizer", tokenizer), ("mesh", mesh), ("rules", rules)) if k in params}
        names.append(name)
        weights.append(weight)
        fns.append(factory(**spec, **extra))
    return WeightedReward(names, weights, fns)


__all__ = [
    "REWARD_KINDS",
    "RewardInput",
    "RewardModelScorer",
    "WeightedReward",
    "build_rewards",
    "register_reward",
    "resolve_model_dir",
]
