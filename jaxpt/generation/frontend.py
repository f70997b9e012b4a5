"""The sampler front-end: prompts (text or chat messages) in, decoded completions out.

Every caller that samples goes through :class:`Sampler`: ``jaxpt generate``, ``jaxpt eval`` (and its rubric
judge), data generation's teacher, PPO/GRPO rollouts and SFT's exact-match eval. So stop tokens are resolved
in one place (:func:`stop_token_ids`: the model config's EOS ids and the tokenizer's), prompts are encoded one
way (left-padded, cut from the left to ``max_prompt_len``), and ``finished`` means one thing (the row ended with
a stop token; it was not cut at ``max_new_tokens``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxpt.data.tokenizer import encode_prompts
from jaxpt.generation.sampler import SamplingConfig, check_sampling, generate
from jaxpt.models.config import ModelConfig

log = logging.getLogger(__name__)

Prompt = str | list[dict[str, Any]]


def stop_token_ids(model_config: ModelConfig, tokenizer: Any, required: bool = False) -> tuple[int, ...]:
    """Every id that ends a generation: the model config's EOS ids and the tokenizer's EOS id.

    ``required``: no stop token is an error (RL needs completions that can finish); otherwise generation
    simply runs to ``max_new_tokens``.
    """
    ids = {int(i) for i in model_config.eos_token_ids}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if required and not ids:
        raise ValueError("no EOS token id (model config or tokenizer): completions could never finish")
    return tuple(sorted(ids))


def sampling_config(
    model_config: ModelConfig,
    tokenizer: Any,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    require_stop: bool = False,
) -> SamplingConfig:
    """A :class:`SamplingConfig` with this model's stop tokens and the tokenizer's pad id (else the first
    stop token, else 0) filling the rows that have stopped."""
    stop = stop_token_ids(model_config, tokenizer, required=require_stop)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop[0] if stop else 0)
    return SamplingConfig(
        max_new_tokens=int(max_new_tokens),
        temperature=float(temperature),
        top_k=int(top_k),
        top_p=float(top_p),
        eos_token_ids=stop,
        pad_token_id=int(pad),
    )


def sampling_from(
    section: Mapping[str, Any], model_config: ModelConfig, tokenizer: Any, name: str = ""
) -> SamplingConfig:
    """:func:`sampling_config` from a config section with ``max_new_tokens`` and optional ``temperature``
    (default 0: greedy), ``top_k``, ``top_p``; a field out of range is an error naming ``name.field``."""
    fields = ("max_new_tokens", "temperature", "top_k", "top_p")
    check_sampling({k: section[k] for k in fields if k in section}, label=lambda f: f"{name}.{f}" if name else f)
    return sampling_config(
        model_config,
        tokenizer,
        max_new_tokens=int(section["max_new_tokens"]),
        temperature=float(section.get("temperature", 0.0)),
        top_k=int(section.get("top_k", 0)),
        top_p=float(section.get("top_p", 1.0)),
    )


@dataclasses.dataclass
class Completions:
    """Host-side result of one or more sampler calls (``R`` rows; a prompt's ``repeat`` rows are contiguous)."""

    prompt_tokens: np.ndarray  # [R, P] int32, left-padded
    prompt_mask: np.ndarray  # [R, P] int32
    tokens: np.ndarray  # [R, N] int32, pad after the stop token
    logprobs: np.ndarray  # [R, N] float32, log p(token) under logits / temperature (unfiltered)
    lengths: np.ndarray  # [R] int32, generated tokens, the stop token included
    mask: np.ndarray  # [R, N] int32, 1 on generated tokens
    finished: np.ndarray  # [R] bool, ended with a stop token
    texts: list[str]  # decoded without special tokens

    def __len__(self) -> int:
        return len(self.texts)

    def rows(self) -> list[dict[str, Any]]:
        """Per row: ``{completion, num_tokens, logprob (sum over the completion), finished}``."""
        return [
            {
                "completion": text,
                "num_tokens": int(n),
                "logprob": float(np.sum(lp[:n])),
                "finished": bool(f),
            }
            for text, n, lp, f in zip(self.texts, self.lengths, self.logprobs, self.finished, strict=True)
        ]

    def head(self, n: int) -> Completions:
        """The first ``n`` rows (drops the filler rows of a padded batch)."""
        return Completions(**{f.name: getattr(self, f.name)[:n] for f in dataclasses.fields(self)})

    @staticmethod
    def concat(parts: Sequence[Completions]) -> Completions:
        if not parts:
            raise ValueError("no completions to concatenate")
        fields = {}
        for f in dataclasses.fields(Completions):
            values = [getattr(p, f.name) for p in parts]
            fields[f.name] = sum(values, []) if f.name == "texts" else np.concatenate(values)
        return Completions(**fields)


class Sampler:
    """Encodes prompts, runs the jitted sampler (``jaxpt.generation.sampler.generate``) with the params it is
    given, and decodes the completions.

    ``batch_size`` > 0 pads every call to exactly that many prompts (filler rows repeat the first prompt and
    are dropped), so every call reuses one compiled program. ``put`` places host arrays on devices (RL shards
    the rows over the mesh's batch axes); by default they are passed as they are.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        tokenizer: Any,
        sampling: SamplingConfig,
        *,
        max_prompt_len: int,
        chat: bool = False,
        batch_size: int = 0,
        put: Callable[[np.ndarray], Any] | None = None,
    ):
        self.model_config, self.tokenizer, self.sampling = model_config, tokenizer, sampling
        self.max_prompt_len, self.chat, self.batch_size = int(max_prompt_len), bool(chat), int(batch_size)
        self.put = put or (lambda x: x)

    def replace(self, **sampling_changes: Any) -> Sampler:
        """The same sampler with other sampling settings (e.g. ``temperature=0`` for greedy evaluation)."""
        sampling = dataclasses.replace(self.sampling, **sampling_changes)
        return Sampler(
            self.model_config,
            self.tokenizer,
            sampling,
            max_prompt_len=self.max_prompt_len,
            chat=self.chat,
            batch_size=self.batch_size,
            put=self.put,
        )

    def __call__(self, params: Any, prompts: Sequence[Prompt], rng: jax.Array, repeat: int = 1) -> Completions:
        """``repeat`` completions of each prompt, with one sampler call."""
        n = len(prompts)
        if n == 0:
            raise ValueError("no prompts to sample from")
        if self.batch_size and n > self.batch_size:
            raise ValueError(f"{n} prompts for a sampler of batch_size={self.batch_size}")
        enc = encode_prompts(self.tokenizer, prompts, self.max_prompt_len, chat=self.chat)
        cut = int(np.sum(enc["truncated"]))
        if cut:
            log.warning("%d prompt(s) longer than max_prompt_len=%d lose their beginning", cut, self.max_prompt_len)
        longest, new = int(np.max(np.sum(enc["mask"], axis=1))), self.sampling.max_new_tokens
        room = self.model_config.position_limit - longest + 1
        self.model_config.check_positions(  # the last new token is never fed back: longest + new - 1 positions
            longest + new - 1,
            f"a prompt of {longest} tokens + max_new_tokens={new}",
            f"lower max_new_tokens to at most {room} or shorten the prompt" if room >= 1 else "shorten the prompt",
        )
        rows = np.concatenate([np.arange(n), np.zeros(max(self.batch_size - n, 0), int)])  # filler: prompt 0
        tokens = np.repeat(enc["tokens"][rows], repeat, axis=0)
        mask = np.repeat(enc["mask"][rows], repeat, axis=0)
        gen = generate(self.model_config, params, self.put(tokens), self.put(mask), rng, self.sampling)
        out_tokens, logprobs, lengths, out_mask, finished = (np.asarray(a) for a in jax.device_get(tuple(gen)))
        texts = self.tokenizer.batch_decode(
            [row[:k] for row, k in zip(out_tokens, lengths, strict=True)], skip_special_tokens=True
        )
        out = Completions(
            prompt_tokens=tokens,
            prompt_mask=mask,
            tokens=out_tokens.astype(np.int32),
            logprobs=logprobs.astype(np.float32),
            lengths=lengths.astype(np.int32),
            mask=out_mask.astype(np.int32),
            finished=finished.astype(bool),
            texts=list(texts),
        )
        return out.head(n * repeat)

    def sample_all(self, params: Any, prompts: Sequence[Prompt], seed: int = 0) -> Completions:
        """Completions of any number of prompts, in order, ``batch_size`` per call; call ``k`` samples with
        ``fold_in(key(seed), k)``, so a batch's samples do not depend on which other batches ran."""
        if not self.batch_size:
            raise ValueError("sample_all needs a sampler with batch_size > 0")
        key = jax.random.key(seed)
        parts = [
            self(params, prompts[lo : lo + self.batch_size], jax.random.fold_in(key, k))
            for k, lo in enumerate(range(0, len(prompts), self.batch_size))
        ]
        return Completions.concat(parts)
