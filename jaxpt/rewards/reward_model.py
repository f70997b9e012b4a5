"""The ``reward_model`` reward kind and the one reward-model scorer of the code base.

``reward_model``: a :class:`jaxpt.models.reward.ScalarHeadModel` loaded from a HF ``*ForSequenceClassification``
directory or an RM run (``path``: the run's ``export/`` is used), scoring ``prompt + completion (+ EOS if the
completion finished)`` tokenised as the preference data is (``jaxpt/data/preference.py``), i.e. exactly as the
reward model was trained. ``max_length`` (tokens kept, from the end), ``batch_size`` (rows per forward; 0 =
all), ``shift``/``scale`` (``(r + shift) * scale``), ``chat`` (string prompts scored as one user message
through the chat template, e.g. when the reward model learned on conversations and ``rollout.chat`` renders
the prompts so; otherwise a prompt's type decides).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxpt.data.preference import encode_scored
from jaxpt.data.tokenizer import load_tokenizer
from jaxpt.errors import UserError
from jaxpt.models.config import ModelConfig
from jaxpt.models.hf import load_hf
from jaxpt.models.reward import ScalarHeadModel, abstract_reward_params
from jaxpt.rewards.registry import RewardFn, RewardInput, register_reward
from jaxpt.sharding import batch_sharding, param_shardings


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
        path = resolve_model_dir(path)
        if os.path.exists(os.path.join(path, "tokenizer_config.json")):
            tokenizer = load_tokenizer(path)
        if tokenizer is None:
            raise UserError(f"reward model {path!r} has no tokenizer files and none was given")
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
