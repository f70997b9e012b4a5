"""Group Relative Policy Optimization (GRPO; Shao et al. 2024), plus the online-RL plumbing PPO shares.

    jaxpt train --config=configs/grpo/arithmetic.py --workdir=runs/grpo

Each loop step is one *rollout* (``AlgorithmParts.rollout``, called with the loop's current params):

1. ``train.batch_size`` prompts come from a resumable prompt iterator (``data.train``, field
   ``data.prompt_key``); each is repeated ``grpo.num_generations`` (G) times;
2. the jitted sampler (``jaxpt.generation.sampler.generate``) draws the completions from the *current* policy
   params (an argument of the jitted function, never a captured copy);
3. completions are decoded and scored by ``config.rewards`` (``jaxpt/rewards.py``); advantages are the
   group-normalised rewards ``(r - mean_G) / (std_G + eps)`` (``grpo.scale_rewards=False``: Dr. GRPO);
4. one jitted scoring pass gives the frozen reference's log-probs (``AlgorithmParts.frozen``: the initial
   model re-created from ``config.model``, so a resumed run keeps the *initial* reference) and, with
   ``rollout.old_logprobs="recompute"``, the behaviour policy's; by default (``"sampler"``) the sampler's
   log-probs are used. All log-probs are of the temperature-scaled distribution (logits / temperature, as
   the sampler and TRL compute them), so the first update starts at ratio 1;
5. the rollout's rows are shuffled and split into minibatches of ``grpo.mini_batch_size`` rows, for
   ``grpo.num_iterations`` passes (mu in the paper): one optimizer update each, through the loop's shared
   jitted step, whose loss is ``jaxpt.losses.rl.grpo_loss`` (``loss_type`` grpo / dr_grpo / dapo,
   ``epsilon_low`` / ``epsilon_high``, ``beta``; ``beta=0`` drops the KL term).

Sequences are laid out as ``[prompt (left-padded to rollout.max_prompt_len P) | completion (N =
rollout.max_new_tokens)]``: model inputs / targets are ``[R, P + N - 1]``; per-token RL quantities are
``[R, N]`` aligned with the sampled tokens (the logits for completion token k sit at input P - 1 + k).

Metrics per step (``train/``): ``reward`` (+ ``reward_std``, ``reward/<name>`` per reward component,
``frac_reward_zero_std``), ``kl`` (mean over sequences of sum_t log pi_old - log pi_ref, in nats),
``kl_token_k3``, ``response_length``, ``eos_frac``, ``clip_ratio`` (+ ``/low``, ``/high``), ``entropy``,
rollout timings. Eval: the NLL of ``data.eval``'s reference completions (``eval/loss``) and, before and after
training, greedy decoding of up to ``data.eval_prompts`` eval prompts scored by the rewards
(``eval/greedy/reward*``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from ml_collections import ConfigDict

from jaxpt.algorithms import sft
from jaxpt.algorithms.base import AlgorithmParts
from jaxpt.data.sft import EpochIterator, build_sft_dataset, load_records
from jaxpt.data.tokenizer import encode_prompts
from jaxpt.generation.sampler import SamplingConfig, generate
from jaxpt.losses.lm import masked_mean, token_entropy, token_logprobs
from jaxpt.losses.rl import GRPO_LOSS_TYPES, grpo_advantages, grpo_loss
from jaxpt.models.config import ModelConfig
from jaxpt.models.decoder import Decoder, abstract_params, head_kernel
from jaxpt.models.factory import RUN_OPTIONS, model_params_from
from jaxpt.models.hf import save_hf
from jaxpt.rewards import RewardInput, build_rewards
from jaxpt.sharding import batch_sharding, replicated

_ROLLOUT_STREAM = 0x5EED  # rng stream of the sampler (the train step uses the state's own rng)


# ================================================================================ shared with PPO
def rollout_config(config: ConfigDict) -> ConfigDict:
    """``config.rollout`` with defaults; unknown fields are an error."""
    defaults = ConfigDict(
        dict(
            max_prompt_len=64,  # P: prompts are left-padded / cut from the left to this many tokens
            max_new_tokens=32,  # N
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            old_logprobs="sampler",  # "sampler" (the sampler's) or "recompute" (a jitted scoring pass)
        )
    )
    return _merged(defaults, config.get("rollout", ConfigDict()), "rollout")


def _merged(defaults: ConfigDict, given: ConfigDict, section: str) -> ConfigDict:
    given = given.to_dict() if isinstance(given, ConfigDict) else dict(given)
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown config.{section} fields {unknown}; known: {sorted(defaults)}")
    defaults.update(given)
    return defaults


def rules_of(config: ConfigDict) -> list[tuple]:
    return [tuple(r) for r in config.mesh.rules]


def run_options(model_cfg: ConfigDict) -> dict[str, Any]:
    return {k: model_cfg[k] for k in RUN_OPTIONS if k in model_cfg}


def shardings_of(tree: Any) -> Any:
    return jax.tree.map(lambda x: x.sharding, tree)


class InitialPolicy:
    """The initial policy params, for the trainable state and for the frozen reference.

    On a fresh start the loop calls ``init`` and then ``reference`` with the just-created state's params:
    the reference is then a device copy of them (no second load / init). On a resume ``init`` is never
    called and ``reference`` re-creates the initial model from ``config.model``, never the resumed policy.
    """

    def __init__(self, config: ConfigDict, model_config: ModelConfig):
        self.config, self.model_config, self.fresh = config, model_config, False

    def load(self, shardings: Any) -> Any:
        return model_params_from(self.config.model, self.model_config, shardings, self.config.seed)

    def init(self, shardings: Any) -> Any:
        self.fresh = True
        return self.load(shardings)

    def reference(self, params: Any) -> Any:
        if self.fresh:
            return jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=shardings_of(params))(params)
        return self.load(shardings_of(params))


def load_prompt_records(source: str, prompt_key: str) -> list[dict[str, Any]]:
    records = [dict(r) for r in load_records(source)]
    if not records:
        raise ValueError(f"no prompts in {source!r}")
    if prompt_key not in records[0]:
        raise ValueError(f"{source!r}: records have no {prompt_key!r} field (found {sorted(records[0])})")
    return records


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


def response_logits(config: ModelConfig, params: Any, batch: dict, prompt_len: int, temperature: float):
    """``[R, N, V]`` float32 logits / temperature at the completion positions (inputs P-1 .. P+N-2)."""
    hidden, _ = Decoder(config).apply(
        {"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"], return_hidden=True
    )
    h = hidden[:, prompt_len - 1 :]
    logits = jnp.einsum("bte,ev->btv", h, head_kernel(config, params), preferred_element_type=jnp.float32)
    return logits / temperature


def response_logprobs(
    config: ModelConfig, params: Any, batch: dict, prompt_len: int, temperature: float, entropy: bool = False
) -> tuple[jax.Array, jax.Array | None]:
    """Log-probs ``[R, N]`` of the sampled completion tokens (and the policy's entropy when asked)."""
    logits = response_logits(config, params, batch, prompt_len, temperature)
    logp = token_logprobs(logits, batch["targets"][:, prompt_len - 1 :])
    return logp, (token_entropy(logits) if entropy else None)


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


class RolloutEngine:
    """Prompts -> jitted sampling -> decoded, scored completions -> training rows (GRPO and PPO)."""

    def __init__(self, config: ConfigDict, model_config: ModelConfig, tokenizer: Any, mesh: Mesh):
        r = rollout_config(config)
        if r.temperature <= 0:
            raise ValueError("rollout.temperature must be > 0 for RL (log-probs are of logits / temperature)")
        if r.old_logprobs not in ("sampler", "recompute"):
            raise ValueError(f"rollout.old_logprobs={r.old_logprobs!r}; expected 'sampler' or 'recompute'")
        self.cfg, self.model_config, self.tokenizer, self.mesh = r, model_config, tokenizer, mesh
        self.prompt_len, self.new_tokens = int(r.max_prompt_len), int(r.max_new_tokens)
        self.temperature = float(r.temperature)
        self.seed = int(config.seed)
        d = config.data
        self.prompt_key, self.chat = d.get("prompt_key", "prompt"), bool(d.get("chat", False))
        eos = set(model_config.eos_token_ids)
        if tokenizer.eos_token_id is not None:
            eos.add(int(tokenizer.eos_token_id))
        if not eos:
            raise ValueError("no EOS token id (model config or tokenizer): completions could never finish")
        self.eos = tuple(sorted(eos))
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos[0])
        self.sampling = SamplingConfig(
            max_new_tokens=self.new_tokens,
            temperature=self.temperature,
            top_k=int(r.top_k),
            top_p=float(r.top_p),
            eos_token_ids=self.eos,
            pad_token_id=self.pad_id,
        )
        self.greedy = dataclasses.replace(self.sampling, temperature=0.0, top_k=0, top_p=1.0)
        self.rewards = build_rewards(list(config.rewards), tokenizer=tokenizer, mesh=mesh, rules=rules_of(config))
        self.num_batch_shards = int(np.prod([mesh.shape[a] for a in ("data", "fsdp")]))

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
        enc = encode_prompts(self.tokenizer, prompts, self.prompt_len, chat=self.chat)
        tokens = np.repeat(enc["tokens"], repeat, axis=0)
        mask = np.repeat(enc["mask"], repeat, axis=0)
        sampling = self.greedy if greedy else self.sampling
        gen = generate(self.model_config, params, self.put(tokens), self.put(mask), rng, sampling)
        out_tokens, logprobs, lengths, out_mask = (np.asarray(a) for a in jax.device_get(tuple(gen)))
        rows = [row[:n] for row, n in zip(out_tokens, lengths, strict=True)]
        last = np.asarray([row[-1] if len(row) else -1 for row in rows])
        finished = np.isin(last, self.eos) & (lengths > 0)
        completions = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        rep_records = [r for r in records for _ in range(repeat)]
        return Samples(
            prompt_tokens=tokens,
            prompt_mask=mask,
            tokens=out_tokens.astype(np.int32),
            logprobs=logprobs.astype(np.float32),
            mask=out_mask.astype(np.float32),
            lengths=lengths.astype(np.int32),
            finished=finished,
            completions=list(completions),
            records=rep_records,
            prompts=[r[self.prompt_key] for r in rep_records],
        )

    def score(self, samples: Samples) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return self.rewards(samples.reward_input())

    def sequences(self, s: Samples) -> dict[str, np.ndarray]:
        return training_rows(s)

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
    """``epochs`` passes over the rows, each reshuffled (deterministic in seed, step, epoch), ``size`` rows each."""
    n = next(iter(rows.values())).shape[0]
    out = []
    for epoch in range(epochs):
        order = np.random.default_rng([seed, step, epoch]).permutation(n)
        for i in range(0, n, size):
            idx = order[i : i + size]
            out.append({k: v[idx] for k, v in rows.items()})
    return out


def eval_setup(config: ConfigDict, tokenizer: Any, model_config: ModelConfig, rows: int):
    """``(eval_batches, eval_records, eval_fn_for(params_of), summarize)``: reference-completion NLL + greedy."""
    d = config.data
    if not d.get("eval"):
        return [], [], None, sft.summarize
    records = load_prompt_records(d.eval, d.get("prompt_key", "prompt"))[: int(d.get("eval_prompts", 256))]
    seq_len = int(d.get("seq_len", 128))
    chunk = config.train.get("loss_chunk_size", 0) or seq_len * config.train.batch_size
    if "completion" in records[0]:
        examples = build_sft_dataset(d.eval, tokenizer, seq_len, completion_only=True)
        batches = sft.fixed_batches(examples, config.train.batch_size, seq_len, False, tokenizer.pad_token_id or 0)
    else:  # prompts only: one empty batch (no NLL), so that the loop still runs the greedy evaluation
        shape = (config.train.batch_size, seq_len)
        keys = ("inputs", "targets", "loss_mask", "positions", "segment_ids")
        batches = [{k: np.zeros(shape, np.float32 if k == "loss_mask" else np.int32) for k in keys}]
    inner = sft.make_eval_fn(model_config, chunk)

    def summarize(totals):
        return sft.summarize(totals) if totals.get("num_tokens", 0) > 0 else {}

    return batches, records, inner, summarize


def check_rows(rows: int, mini: int, shards: int, what: str) -> None:
    if rows % mini:
        raise ValueError(f"{what}: {rows} rollout rows are not divisible by mini_batch_size={mini}")
    if mini % shards:
        raise ValueError(f"{what}: mini_batch_size={mini} is not divisible by the data*fsdp mesh size {shards}")


# ======================================================================================== GRPO
def grpo_config(config: ConfigDict) -> ConfigDict:
    defaults = ConfigDict(
        dict(
            num_generations=8,  # G: completions per prompt
            mini_batch_size=0,  # rows per optimizer update; 0 = the whole rollout (batch_size * G)
            num_iterations=1,  # mu: passes over each rollout
            loss_type="dapo",  # grpo | dr_grpo | dapo
            epsilon_low=0.2,
            epsilon_high=0.2,  # DAPO "clip-higher" uses 0.28
            beta=0.0,  # KL(pi || ref) coefficient (k3 estimator); 0 drops the term
            scale_rewards=True,  # False: Dr. GRPO (no division by the group std)
        )
    )
    g = _merged(defaults, config.get("grpo", ConfigDict()), "grpo")
    if g.loss_type not in GRPO_LOSS_TYPES:
        raise ValueError(f"grpo.loss_type={g.loss_type!r}; valid: {', '.join(GRPO_LOSS_TYPES)}")
    if g.num_generations < 2:
        raise ValueError("grpo.num_generations must be >= 2 (advantages are relative to the group)")
    return g


def make_grpo_loss_fn(model_config: ModelConfig, g: ConfigDict, prompt_len: int, new_tokens: int, temperature: float):
    def loss_fn(params, batch, rng, frozen):
        logp, ent = response_logprobs(model_config, params, batch, prompt_len, temperature, entropy=True)
        mask = batch["response_mask"]
        loss, m = grpo_loss(
            logp,
            batch["old_logprobs"],
            batch["ref_logprobs"] if g.beta else None,
            batch["advantages"],
            mask,
            epsilon_low=g.epsilon_low,
            epsilon_high=g.epsilon_high,
            beta=g.beta,
            loss_type=g.loss_type,
            max_completion_length=new_tokens,
        )
        rows = jnp.float32(mask.shape[0])
        weight = {"grpo": rows, "dapo": jnp.sum(mask), "dr_grpo": rows * new_tokens}[g.loss_type]
        metrics = {k: v for k, v in m.items() if k != "kl"}
        if g.beta:
            metrics["kl_loss_k3"] = m["kl"]
        metrics["entropy"] = masked_mean(jax.lax.stop_gradient(ent), mask)
        return loss * weight, weight, metrics

    return loss_fn


def build(config: ConfigDict, model_config: ModelConfig, tokenizer: Any, mesh: Mesh) -> AlgorithmParts:
    g = grpo_config(config)
    engine = RolloutEngine(config, model_config, tokenizer, mesh)
    prompt_len, new_tokens, temp = engine.prompt_len, engine.new_tokens, engine.temperature
    b = config.train.batch_size
    rows = b * g.num_generations
    mini = g.mini_batch_size or rows
    check_rows(rows, mini, engine.num_batch_shards, "grpo")
    train_iter = PromptIterator(
        load_prompt_records(config.data.train, engine.prompt_key), b, seed=config.seed, shuffle=True
    )
    recompute = engine.cfg.old_logprobs == "recompute"

    @jax.jit
    def score_pass(params, ref_params, batch):
        ref, _ = response_logprobs(model_config, ref_params, batch, prompt_len, temp)
        old = response_logprobs(model_config, params, batch, prompt_len, temp)[0] if recompute else None
        return ref, old

    def rollout(params, frozen, step):
        t0 = time.perf_counter()
        records = next(train_iter)
        s = engine.sample(params, records, engine.rng(step), repeat=g.num_generations)
        t1 = time.perf_counter()
        total, parts = engine.score(s)
        t2 = time.perf_counter()
        seqs = engine.sequences(s)
        ref, old = jax.device_get(score_pass(params, frozen, engine.put_tree(seqs)))
        old = np.asarray(old if recompute else s.logprobs, np.float32)
        adv = np.asarray(grpo_advantages(jnp.asarray(total), g.num_generations, g.scale_rewards))
        t3 = time.perf_counter()
        batch = {
            **seqs,
            "old_logprobs": old * s.mask,
            "ref_logprobs": np.asarray(ref, np.float32) * s.mask,
            "advantages": adv.astype(np.float32),
        }
        groups = total.reshape(-1, g.num_generations)
        metrics = reward_metrics(total, parts, s)
        metrics.update(kl_metrics(old, np.asarray(ref), s.mask))
        metrics["frac_reward_zero_std"] = float(np.mean(np.std(groups, axis=1) == 0))
        metrics["time/generate_s"] = t1 - t0
        metrics["time/reward_s"] = t2 - t1
        metrics["time/score_s"] = t3 - t2
        metrics["time/rollout_s"] = t3 - t0
        return minibatches(batch, mini, g.num_iterations, config.seed, step), metrics

    eval_batches, eval_records, eval_inner, summarize = eval_setup(config, tokenizer, model_config, rows)

    def export(params, out_dir):
        save_hf(model_config, jax.device_get(params), out_dir, tokenizer=tokenizer)

    initial = InitialPolicy(config, model_config)

    return AlgorithmParts(
        train_iter=train_iter,
        eval_batches=eval_batches,
        loss_fn=make_grpo_loss_fn(model_config, g, prompt_len, new_tokens, temp),
        eval_fn=eval_inner or (lambda params, batch, fr: {}),
        summarize=summarize,
        abstract_params=abstract_params(model_config),
        init_params=initial.init,
        frozen=initial.reference,
        tokens_in_batch=lambda batch: int(np.sum(batch["segment_ids"] > 0)),
        export=export,
        after_eval=lambda params: engine.greedy_eval(params, eval_records, rows),
        rollout=rollout,
        updates_per_step=g.num_iterations * (rows // mini),
    )


__all__ = [
    "PromptIterator",
    "RolloutEngine",
    "Samples",
    "build",
    "grpo_config",
    "response_logprobs",
    "rollout_config",
    "training_rows",
]
