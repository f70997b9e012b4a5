"""Online-RL plumbing that GRPO and PPO share: the step skeleton (:func:`online_rollout`: prompts -> sampling
with the *current* params -> decoded, scored completions -> training rows -> the algorithm's scoring pass and
advantages -> minibatches), log-probs of the sampled tokens, the config sections, greedy evaluation.

Sequences are laid out as ``[prompt (left-padded to rollout.max_prompt_len P) | completion (N =
rollout.max_new_tokens)]``: model inputs / targets are ``[R, P + N - 1]``; per-token RL quantities are
``[R, N]`` aligned with the sampled tokens (the logits for completion token k sit at input P - 1 + k).
All log-probs are of the temperature-scaled distribution (logits / temperature), as the sampler computes them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from ml_collections import ConfigDict

from jaxpt.algorithms import sft
from jaxpt.algorithms.base import Program
from jaxpt.config import with_defaults
from jaxpt.data.iterators import EpochIterator
from jaxpt.data.sft import build_sft_dataset, fixed_batches, load_records
from jaxpt.errors import UserError
from jaxpt.evaluation.metrics import lm_metrics
from jaxpt.generation.frontend import Sampler, sampling_config
from jaxpt.generation.sampler import SamplingConfig, check_sampling, generate
from jaxpt.models.config import ModelConfig
from jaxpt.models.decoder import init_cache
from jaxpt.models.logprobs import batch_logprobs
from jaxpt.rewards import RewardInput, build_rewards
from jaxpt.sharding import batch_sharding, replicated, rules_of
from jaxpt.training.defaults import base_config

_ROLLOUT_STREAM = 0x5EED  # rng stream of the sampler (the train step uses the state's own rng)


def defaults(algorithm: str) -> ConfigDict:
    """The sections every online-RL config has (PPO's and GRPO's ``defaults()`` add their own section)."""
    c = base_config(algorithm)
    c.data = ConfigDict(
        dict(
            train="",  # prompt records (JSONL / Parquet / a save_to_disk dir)
            eval="",  # '' = no eval; with a completion column also the NLL of the reference completions
            prompt_key="prompt",
            chat=False,  # render prompts through the tokenizer's chat template
            seq_len=128,  # eval NLL rows of the reference completions (and the MFU estimate)
            eval_prompts=256,  # greedy-decoded and scored before and after training
        )
    )
    c.rollout = _rollout_defaults()
    c.rewards = []  # {kind, weight, name?, ...} specs: jaxpt.rewards.build_rewards
    return c


def _rollout_defaults() -> ConfigDict:
    return ConfigDict(
        dict(
            max_prompt_len=64,  # P: prompts are left-padded / cut from the left to this many tokens
            max_new_tokens=32,  # N
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            old_logprobs="sampler",  # "sampler" (the sampler's) or "recompute" (a jitted scoring pass)
        )
    )


def rollout_config(config: ConfigDict) -> ConfigDict:
    """``config.rollout`` with defaults, checked; an unknown field is an error naming it."""
    r = with_defaults(config.get("rollout"), _rollout_defaults(), "rollout")
    check_sampling(
        {k: r[k] for k in ("max_new_tokens", "temperature", "top_k", "top_p")}, label=lambda f: f"rollout.{f}"
    )
    if r.temperature <= 0:
        raise UserError(f"rollout.temperature={r.temperature}: must be > 0 for RL (log-probs are of logits / it)")
    if r.max_prompt_len < 1:
        raise UserError(f"rollout.max_prompt_len={r.max_prompt_len}: must be >= 1")
    if r.old_logprobs not in ("sampler", "recompute"):
        raise UserError(f"rollout.old_logprobs={r.old_logprobs!r}; expected 'sampler' or 'recompute'")
    return r


def load_prompt_records(source: str, prompt_key: str) -> list[dict[str, Any]]:
    records = [dict(r) for r in load_records(source)]
    if not records:
        raise UserError(f"no prompts in {source!r}")
    check_prompt_column(list(records[0]), prompt_key, repr(source))
    return records


def check_prompt_column(columns: Sequence[str], prompt_key: str, where: str) -> None:
    """Prompt records must have ``data.prompt_key``; the error names the file, the key and what it has."""
    if prompt_key not in columns:
        raise UserError(
            f"{where}: records have no {prompt_key!r} column (found {sorted(columns)}); "
            "set --config.data.prompt_key to the column holding the prompts"
        )


class PromptIterator(EpochIterator):
    """Infinite batches of prompt records (lists of dicts), reshuffled per epoch, resumable.

    The state is the epoch iterator's ``(epoch, position)`` plus ``extra``: small JSON-able algorithm state
    that must survive a resume with the data position (PPO's adaptive KL coefficient).
    """

    def __init__(self, records: Sequence[dict[str, Any]], batch_size: int, seed: int, shuffle: bool = True):
        super().__init__(len(records), batch_size, seed, shuffle)
        self.records = list(records)
        self.extra: dict[str, Any] = {}

    def _layout(self, epoch: int) -> list[int]:
        return [int(i) for i in self._order(epoch)]

    def __next__(self) -> list[dict[str, Any]]:
        return [self.records[i] for i in self._take()]

    def get_state(self) -> dict[str, Any]:
        return {**super().get_state(), "extra": dict(self.extra)}

    def set_state(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.extra = dict(state.pop("extra", None) or {})
        super().set_state(state)


@dataclasses.dataclass
class Samples:
    """One rollout's completions, host-side (``R`` rows = prompts x samples per prompt)."""

    prompt_tokens: np.ndarray  # [R, P] left-padded
    prompt_mask: np.ndarray  # [R, P]
    tokens: np.ndarray  # [R, N]
    logprobs: np.ndarray  # [R, N] sampler log-probs (temperature-scaled)
    mask: np.ndarray  # [R, N] float32, 1 on completion tokens (EOS included)
    lengths: np.ndarray  # [R]
    finished: np.ndarray  # [R] bool: ended with EOS
    completions: list[str]
    records: list[dict[str, Any]]
    prompts: list[Any]

    def reward_input(self) -> RewardInput:
        return RewardInput(self.prompts, self.completions, self.records, self.finished)


def response_logprobs(
    config: ModelConfig,
    params: Any,
    batch: dict,
    prompt_len: int,
    temperature: float,
    entropy: bool = False,
    chunk_size: int = 0,
) -> tuple[jax.Array, jax.Array | None]:
    """Log-probs ``[R, N]`` of the sampled completion tokens under logits / temperature (and the policy's
    entropy when asked), from flat rows (``training_rows``) or shared-prompt rows (``shared_prompt_rows``);
    the vocabulary projection in blocks of ``chunk_size`` tokens (0: one block)."""
    out, _ = batch_logprobs(
        config, params, batch, chunk_size, prompt_len=prompt_len, temperature=temperature, entropy=entropy
    )
    return out.logprobs, out.entropy


def training_rows(s: Samples) -> dict[str, np.ndarray]:
    """Training rows ``[R, P + N - 1]`` (inputs/targets/positions/segment_ids) + ``response_mask [R, N]``.

    ``[prompt | completion]`` shifted by one: the target at input ``P - 1 + k`` is completion token ``k``.
    Prompt padding (left) and completion padding (after EOS) are segment 0.
    """
    full = np.concatenate([s.prompt_tokens, s.tokens], axis=1)
    seg = np.concatenate([s.prompt_mask, s.mask.astype(np.int32)], axis=1).astype(np.int32)
    positions = np.maximum(np.cumsum(seg, axis=1) - 1, 0) * seg
    return {
        "inputs": full[:, :-1].astype(np.int32),
        "targets": full[:, 1:].astype(np.int32),
        "positions": positions[:, :-1].astype(np.int32),
        "segment_ids": seg[:, :-1],
        "response_mask": s.mask.astype(np.float32),
    }


PROMPT_KEYS = ("prompt_tokens", "prompt_mask")  # per-prompt arrays of shared-prompt rows


def shared_prompt_rows(s: Samples, group: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Rows for completions that come in groups of ``group`` per prompt (GRPO), each prompt stored once.

    ``s`` holds a prompt's rows contiguously (``RolloutEngine.sample``); the rows here are sample-major (row
    ``j * Np + i`` is sample ``j`` of prompt ``i``, the layout of ``jaxpt.models.logprobs.shared_prompt_forward``):
    ``prompt_tokens`` / ``prompt_mask`` ``[Np, P]``, ``completion_tokens`` / ``completion_segment_ids`` /
    ``response_mask`` ``[R, N]``. Returns the rows and ``order`` (row ``k`` here is row ``order[k]`` of ``s``).
    """
    prompts = len(s.tokens) // group
    order = (np.arange(group)[:, None] + np.arange(prompts)[None, :] * group).ravel()
    rows = {
        "prompt_tokens": s.prompt_tokens[::group].astype(np.int32),
        "prompt_mask": s.prompt_mask[::group].astype(np.int32),
        "completion_tokens": s.tokens[order].astype(np.int32),
        "completion_segment_ids": s.mask[order].astype(np.int32),
        "response_mask": s.mask[order].astype(np.float32),
    }
    return rows, order


def batch_shards(mesh: Mesh) -> int:
    """How many ways rows split over the mesh's batch axes (``data`` x ``fsdp``)."""
    return int(np.prod([mesh.shape[a] for a in ("data", "fsdp")]))


def planned_samples(rows: int, prompt_len: int, new_tokens: int) -> Samples:
    """``rows`` empty samples of a rollout's shapes (``jaxpt plan``: no prompts, no sampling)."""
    zeros = lambda *shape: np.zeros(shape, np.int32)  # noqa: E731
    return Samples(
        prompt_tokens=zeros(rows, prompt_len),
        prompt_mask=zeros(rows, prompt_len),
        tokens=zeros(rows, new_tokens),
        logprobs=np.zeros((rows, new_tokens), np.float32),
        mask=np.zeros((rows, new_tokens), np.float32),
        lengths=zeros(rows),
        finished=np.zeros(rows, bool),
        completions=[],
        records=[],
        prompts=[],
    )


def planned_rows(rows: int, prompt_len: int, new_tokens: int, group: int = 0) -> dict[str, np.ndarray]:
    """Training rows (``shared_prompt_rows`` in groups of ``group`` when > 0, else ``training_rows``) of
    ``rows`` empty samples: the shapes the update and the scoring pass see."""
    s = planned_samples(rows, prompt_len, new_tokens)
    return shared_prompt_rows(s, group)[0] if group else training_rows(s)


def sampler_program(
    config: ConfigDict, model_config: ModelConfig, rows: int, policy: Callable[[Any], Any] = lambda p: p
) -> Program:
    """The rollout's sampler as ``jaxpt plan`` compiles it: ``generate`` (the prefill, then the decode loop over
    its KV cache) on ``rows`` prompts of ``rollout.max_prompt_len`` tokens, ``rollout.max_new_tokens`` new.
    (Stop ids come from the tokenizer in training; they do not change the program's shapes.)"""
    r = rollout_config(config)
    p, n = int(r.max_prompt_len), int(r.max_new_tokens)
    sampling = SamplingConfig(
        max_new_tokens=n,
        temperature=float(r.temperature),
        top_k=int(r.top_k),
        top_p=float(r.top_p),
        eos_token_ids=tuple(model_config.eos_token_ids) or (0,),
    )
    cache = jax.eval_shape(lambda: init_cache(model_config, rows, p + n - 1))
    cache_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))

    def fn(params, frozen, arrays):
        tokens, mask = arrays["prompt_tokens"], arrays["prompt_mask"]
        return generate(model_config, policy(params), tokens, mask, jax.random.key(0), sampling)

    prompts = jax.ShapeDtypeStruct((rows, p), np.int32)
    return Program(
        name=f"sampler: prefill + decode of {rows} rows, {p} prompt + {n} new tokens",
        fn=fn,
        arrays={"prompt_tokens": prompts, "prompt_mask": prompts},
        notes=(f"KV cache: {cache_bytes / 2**30:.2f} GiB in all ({rows} rows x {p + n - 1} slots)",),
    )


class RolloutEngine:
    """Prompts -> jitted sampling -> decoded, scored completions -> training rows (GRPO and PPO)."""

    def __init__(self, config: ConfigDict, model_config: ModelConfig, tokenizer: Any, mesh: Mesh):
        r = rollout_config(config)
        self.cfg, self.model_config, self.tokenizer, self.mesh = r, model_config, tokenizer, mesh
        self.prompt_len, self.new_tokens = int(r.max_prompt_len), int(r.max_new_tokens)
        self.temperature = float(r.temperature)
        self.seed = int(config.seed)
        d = config.data
        self.prompt_key, self.chat = d.prompt_key, bool(d.chat)
        sampling = sampling_config(
            model_config, tokenizer, self.new_tokens, self.temperature, int(r.top_k), float(r.top_p), require_stop=True
        )
        self.sampler = Sampler(
            model_config, tokenizer, sampling, max_prompt_len=self.prompt_len, chat=self.chat, put=self.put
        )
        self.greedy = self.sampler.replace(temperature=0.0, top_k=0, top_p=1.0)
        self.rewards = build_rewards(list(config.rewards), tokenizer=tokenizer, mesh=mesh, rules=rules_of(config))
        self.num_batch_shards = batch_shards(mesh)

    # ---------------------------------------------------------------------------------------- device
    def put(self, x: np.ndarray) -> jax.Array:
        """Host array -> device, split over the batch axes when the rows divide evenly (else replicated)."""
        x = np.asarray(x)
        if x.ndim and x.shape[0] % self.num_batch_shards == 0:
            return jax.device_put(x, batch_sharding(self.mesh))
        return jax.device_put(x, replicated(self.mesh))

    def put_tree(self, tree: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return {k: self.put(v) for k, v in tree.items()}

    def rng(self, step: int) -> jax.Array:
        return jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), _ROLLOUT_STREAM), step)

    # -------------------------------------------------------------------------------------- sampling
    def sample(
        self, params: Any, records: Sequence[dict[str, Any]], rng: jax.Array, repeat: int = 1, greedy: bool = False
    ) -> Samples:
        """Completions of each record's prompt, ``repeat`` per prompt (rows of one prompt are contiguous)."""
        prompts = [r[self.prompt_key] for r in records]
        c = (self.greedy if greedy else self.sampler)(params, prompts, rng, repeat)
        rep_records = [r for r in records for _ in range(repeat)]
        return Samples(
            prompt_tokens=c.prompt_tokens,
            prompt_mask=c.prompt_mask,
            tokens=c.tokens,
            logprobs=c.logprobs,
            mask=c.mask.astype(np.float32),
            lengths=c.lengths,
            finished=c.finished,
            completions=c.texts,
            records=rep_records,
            prompts=[r[self.prompt_key] for r in rep_records],
        )

    def score(self, samples: Samples) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return self.rewards(samples.reward_input())

    # ------------------------------------------------------------------------------------ evaluation
    def greedy_eval(self, params: Any, records: Sequence[dict[str, Any]], rows: int) -> dict[str, float]:
        """Greedy completions of ``records`` (in chunks of ``rows``), scored by the rewards."""
        if not records:
            return {}
        totals, parts, lengths, finished = [], {}, [], []
        for start in range(0, len(records), rows):
            chunk = list(records[start : start + rows])
            n = len(chunk)
            chunk += [chunk[0]] * (rows - n)  # one compiled shape
            s = self.sample(params, chunk, jax.random.key(0), greedy=True)
            total, comps = self.score(s)
            totals.append(total[:n])
            for k, v in comps.items():
                parts.setdefault(k, []).append(v[:n])
            lengths.append(s.lengths[:n])
            finished.append(s.finished[:n])
        out = {"greedy/reward": float(np.mean(np.concatenate(totals)))}
        out.update({f"greedy/reward/{k}": float(np.mean(np.concatenate(v))) for k, v in parts.items()})
        out["greedy/response_length"] = float(np.mean(np.concatenate(lengths)))
        out["greedy/eos_frac"] = float(np.mean(np.concatenate(finished)))
        return out


def reward_metrics(total: np.ndarray, parts: dict[str, np.ndarray], s: Samples) -> dict[str, float]:
    out = {"reward": float(np.mean(total)), "reward_std": float(np.std(total))}
    out.update({f"reward/{k}": float(np.mean(v)) for k, v in parts.items()})
    out["response_length"] = float(np.mean(s.lengths))
    out["eos_frac"] = float(np.mean(s.finished))
    return out


def kl_metrics(logp: np.ndarray, ref_logp: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Sequence KL estimate (mean over rows of sum_t log pi - log ref) and the token-mean k3 estimator."""
    d = (logp - ref_logp) * mask
    k3 = (np.expm1(-(logp - ref_logp)) + (logp - ref_logp)) * mask
    return {"kl": float(np.mean(np.sum(d, axis=1))), "kl_token_k3": float(np.sum(k3) / max(np.sum(mask), 1.0))}


def minibatches(
    rows: dict[str, np.ndarray], size: int, epochs: int, seed: int, step: int
) -> list[dict[str, np.ndarray]]:
    """``epochs`` passes over the rows, each reshuffled (deterministic in seed, step, epoch), ``size`` rows each.

    Shared-prompt rows are shuffled by prompt group instead (a group's rows stay together, with their prompt),
    so ``size`` must be a multiple of the group size.
    """
    if "prompt_tokens" in rows:
        return _group_minibatches(rows, size, epochs, seed, step)
    n = next(iter(rows.values())).shape[0]
    out = []
    for epoch in range(epochs):
        order = np.random.default_rng([seed, step, epoch]).permutation(n)
        for i in range(0, n, size):
            idx = order[i : i + size]
            out.append({k: v[idx] for k, v in rows.items()})
    return out


def _group_minibatches(rows: dict[str, np.ndarray], size: int, epochs: int, seed: int, step: int):
    prompts, n = len(rows["prompt_tokens"]), len(rows["completion_tokens"])
    group = n // prompts
    if size % group:
        raise UserError(f"mini-batch of {size} rows does not hold whole groups of {group}")
    per_batch = size // group
    out = []
    for epoch in range(epochs):
        order = np.random.default_rng([seed, step, epoch]).permutation(prompts)
        for i in range(0, prompts, per_batch):
            chosen = order[i : i + per_batch]
            idx = (np.arange(group)[:, None] * prompts + chosen[None, :]).ravel()  # sample-major again
            out.append({k: (v[chosen] if k in PROMPT_KEYS else v[idx]) for k, v in rows.items()})
    return out


def eval_setup(config: ConfigDict, tokenizer: Any, model_config: ModelConfig, rows: int):
    """``(eval_batches, eval_records, eval_fn_for(params_of), summarize)``: reference-completion NLL + greedy."""
    d = config.data
    if not d.eval:
        return [], [], None, lm_metrics
    records = load_prompt_records(d.eval, d.prompt_key)[: d.eval_prompts]
    seq_len = d.seq_len
    chunk = config.train.loss_chunk_size or seq_len * config.train.batch_size
    if "completion" in records[0]:
        examples = build_sft_dataset(d.eval, tokenizer, seq_len, completion_only=True)
        batches = fixed_batches(examples, config.train.batch_size, seq_len, False, tokenizer.pad_token_id or 0)
    else:  # prompts only: one empty batch (no NLL), so that the loop still runs the greedy evaluation
        shape = (config.train.batch_size, seq_len)
        keys = ("inputs", "targets", "loss_mask", "positions", "segment_ids")
        batches = [{k: np.zeros(shape, np.float32 if k == "loss_mask" else np.int32) for k in keys}]
    inner = sft.make_eval_fn(model_config, chunk)

    def summarize(totals):
        return lm_metrics(totals) if totals.get("num_tokens", 0) > 0 else {}

    return batches, records, inner, summarize


def rollout_timings(t0: float, t1: float, t2: float, t3: float) -> dict[str, float]:
    """Seconds spent sampling (t0-t1), scoring rewards (t1-t2) and in the scoring pass (t2-t3) of a rollout."""
    return {"time/generate_s": t1 - t0, "time/reward_s": t2 - t1, "time/score_s": t3 - t2, "time/rollout_s": t3 - t0}


def check_rows(rows: int, mini: int, shards: int, what: str) -> None:
    if rows % mini:
        raise UserError(f"{what}: {rows} rollout rows are not divisible by mini_batch_size={mini}")
    if mini % shards:
        raise UserError(f"{what}: mini_batch_size={mini} is not divisible by the data*fsdp mesh size {shards}")


def prompt_iterator(config: ConfigDict, engine: RolloutEngine) -> PromptIterator:
    """``train.batch_size`` prompt records per step from ``data.train``, reshuffled per epoch, resumable."""
    records = load_prompt_records(config.data.train, engine.prompt_key)
    return PromptIterator(records, config.train.batch_size, seed=config.seed, shuffle=True)


def scoring_logprobs(
    model_config: ModelConfig,
    params: Any,
    ref_params: Any,
    batch: dict,
    prompt_len: int,
    temperature: float,
    recompute: bool,
    chunk_size: int = 0,
) -> tuple[jax.Array, jax.Array | None]:
    """The scoring pass's log-probs (inside the algorithm's jitted pass): the frozen reference's and, with
    ``rollout.old_logprobs="recompute"``, the behaviour policy's (else None: the sampler's are used)."""
    ref, _ = response_logprobs(model_config, ref_params, batch, prompt_len, temperature, chunk_size=chunk_size)
    old = None
    if recompute:
        old, _ = response_logprobs(model_config, params, batch, prompt_len, temperature, chunk_size=chunk_size)
    return ref, old


# prepare(params, frozen, samples, rows, order, rewards) -> (the minibatch source rows, metrics): the scoring
# pass (reference / value / recomputed log-probs) and the algorithm's advantages.
Prepare = Callable[[Any, Any, Samples, dict[str, np.ndarray], np.ndarray, np.ndarray], tuple[dict, dict]]


def online_rollout(
    engine: RolloutEngine,
    train_iter: PromptIterator,
    *,
    repeat: int,
    prepare: Prepare,
    mini_batch_size: int,
    epochs: int,
    seed: int,
    policy: Callable[[Any], Any] = lambda params: params,
    shared_prompt_group: int = 0,
) -> Callable[[Any, Any, int], tuple[list[dict], dict[str, float]]]:
    """The online-RL step PPO and GRPO share, as ``AlgorithmParts.rollout``: prompts -> ``repeat`` samples
    each from the *current* policy (``policy(params)``) -> rewards -> training rows (shared-prompt rows in
    groups of ``shared_prompt_group`` when > 0; ``order`` maps them to the samples) -> ``prepare`` (the
    algorithm's scoring pass and advantages) -> ``epochs`` reshuffled passes of ``mini_batch_size`` rows.
    Metrics: rewards, lengths, the algorithm's, and the time spent in each stage."""

    def rollout(params: Any, frozen: Any, step: int) -> tuple[list[dict], dict[str, float]]:
        t0 = time.perf_counter()
        records = next(train_iter)
        s = engine.sample(policy(params), records, engine.rng(step), repeat=repeat)
        t1 = time.perf_counter()
        total, parts = engine.score(s)
        t2 = time.perf_counter()
        if shared_prompt_group:
            rows, order = shared_prompt_rows(s, shared_prompt_group)
        else:
            rows, order = training_rows(s), np.arange(len(s.tokens))
        batch, extra = prepare(params, frozen, s, rows, order, total)
        t3 = time.perf_counter()
        metrics = {**reward_metrics(total, parts, s), **extra, **rollout_timings(t0, t1, t2, t3)}
        return minibatches(batch, mini_batch_size, epochs, seed, step), metrics

    return rollout
