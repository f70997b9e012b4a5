"""PPO for language models (RLHF: Ouyang et al. 2022; Huang et al. 2024, "The N implementation details of RLHF
with PPO"), on the shared loop through the ``rollout`` hook.

    jaxpt train --config=configs/ppo/arithmetic.py --workdir=runs/ppo

The train state holds ``params = {"policy": <decoder params>, "value": <ScalarHeadModel params>}`` (one
optimizer over both, as TRL's policy-and-value wrapper). The value model is initialised from
``ppo.value_model_path`` (a reward model: a HF ``*ForSequenceClassification`` dir or an RM run, decoder and
head loaded; or a causal LM, head drawn at random) or, by default, from the policy's initial decoder with a
random head. The frozen reference (``AlgorithmParts.frozen``) is the initial policy re-created from
``config.model`` (resume-safe).

Each loop step (``rollout``, called with the current params):

1. ``train.batch_size`` prompts x ``ppo.samples_per_prompt`` completions from the jitted sampler with the
   current policy params (``jaxpt.algorithms.common.rollout``: the step skeleton shared with GRPO);
2. sequence scores from ``config.rewards`` (``jaxpt/rewards/``); completions that did not end with EOS
   (cut at ``rollout.max_new_tokens``) lose ``ppo.missing_eos_penalty``;
3. one jitted scoring pass: reference log-probs, values (and the behaviour log-probs with
   ``rollout.old_logprobs="recompute"``), the per-token KL-shaped rewards
   ``r_t = -kl_coef * kl_t (+ score at the last token)`` (``kl_estimator`` k1 / k3), optional reward
   whitening, GAE (``gamma``, ``lam``) and advantage whitening over the whole rollout;
4. ``ppo.epochs`` passes over the rollout, reshuffled, in minibatches of ``ppo.mini_batch_size`` rows: one
   optimizer update each on ``pg_loss + vf_coef * vf_loss - ent_coef * entropy`` with the clipped policy
   objective (``cliprange``) and the clipped value loss (``cliprange_value``);
5. with ``ppo.adaptive_kl``, the KL coefficient follows Ziegler et al.'s controller (``kl_target``,
   ``kl_horizon``); its value is part of the prompt iterator's state, so a resumed run continues it.

Log-probs are of logits / temperature throughout (sampler, scoring pass and loss). Metrics: ``reward``,
``score`` (after the EOS penalty), ``reward/<name>``, ``kl`` (mean sequence sum of log pi - log ref),
``kl_coef``, ``non_score_reward``, ``entropy``, ``clipfrac``, ``approx_kl``, ``vf_loss``, ``vf_clipfrac``,
``pg_loss``, ``explained_variance``, ``value_mean``, ``response_length``, ``eos_frac``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from ml_collections import ConfigDict

from jaxpt.algorithms.base import AlgorithmParts, Program, StepSpec, shapes_of
from jaxpt.algorithms.common import rollout as rl
from jaxpt.algorithms.common.policy import InitialPolicy
from jaxpt.config import with_defaults
from jaxpt.data.sft import batch_tokens
from jaxpt.errors import UserError
from jaxpt.losses.lm import masked_mean
from jaxpt.losses.rl import (
    KL_ESTIMATORS,
    gae,
    kl_penalty_rewards,
    ppo_policy_loss,
    ppo_value_loss,
    update_kl_coef,
    whiten,
)
from jaxpt.models.config import ModelConfig
from jaxpt.models.decoder import abstract_params
from jaxpt.models.factory import run_options
from jaxpt.models.hf import load_hf, save_hf
from jaxpt.models.reward import ScalarHeadModel, abstract_reward_params
from jaxpt.rewards import resolve_model_dir
from jaxpt.utils.flops import forward_flops_per_token, train_flops_per_token


def defaults() -> ConfigDict:
    """Every field of a PPO config with its default (``configs/ppo/`` files start from this)."""
    c = rl.defaults("ppo")
    c.ppo = ConfigDict(
        dict(
            samples_per_prompt=1,
            epochs=4,  # PPO epochs over each rollout
            mini_batch_size=0,  # rows per optimizer update; 0 = the whole rollout
            cliprange=0.2,
            cliprange_value=0.2,
            vf_coef=0.1,
            ent_coef=0.0,
            gamma=1.0,
            lam=0.95,
            whiten_rewards=False,
            whiten_advantages=True,
            kl_coef=0.05,
            kl_estimator="k1",  # k1 (log pi - log ref, as the papers) or k3 (jaxpt.losses.rl.KL_ESTIMATORS)
            adaptive_kl=False,
            kl_target=6.0,  # nats per sequence (Ziegler et al.)
            kl_horizon=10000.0,
            missing_eos_penalty=1.0,  # subtracted from the score of completions without EOS (0 = off)
            value_model_path="",  # "" = the policy's initial decoder + a random scalar head
        )
    )
    return c


def ppo_config(config: ConfigDict) -> ConfigDict:
    """``config.ppo`` with defaults, checked; an unknown field is an error naming it."""
    p = with_defaults(config.get("ppo"), defaults().ppo, "ppo")
    if p.kl_estimator not in KL_ESTIMATORS:
        raise UserError(f"ppo.kl_estimator={p.kl_estimator!r}; valid: {', '.join(KL_ESTIMATORS)}")
    return p


def _is_sequence_classifier(model_dir: str) -> bool:
    with open(os.path.join(model_dir, "config.json")) as f:
        archs = json.load(f).get("architectures") or []
    return any(a.endswith("ForSequenceClassification") for a in archs)


def fresh_head(config: ModelConfig, seed: int) -> dict[str, Any]:
    """A scalar head ``[embed, 1]`` drawn with std 0.02 (as ScalarHeadModel / transformers initialise it)."""
    kernel = 0.02 * np.random.default_rng(seed).standard_normal((config.hidden_size, 1))
    return {"kernel": kernel.astype(jnp.dtype(config.param_dtype))}


def value_model(config: ConfigDict, p: ConfigDict, policy_config: ModelConfig):
    """``(value ModelConfig, init(shardings, policy_params) -> value params)``."""
    run = run_options(config.model)
    if not p.value_model_path:

        def from_policy(shardings, policy_params):
            head = fresh_head(policy_config, config.seed + 1)
            decoder = jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=shardings["decoder"])(
                {k: v for k, v in policy_params.items() if k != "lm_head"}
            )
            return {"decoder": decoder, "score": jax.device_put(head, shardings["score"])}

        return policy_config, from_policy
    model_dir = resolve_model_dir(p.value_model_path)
    value_config = ModelConfig.from_hf(model_dir, **run)
    if value_config.vocab_size != policy_config.vocab_size:
        raise UserError(
            f"value model vocab_size {value_config.vocab_size} != policy vocab_size {policy_config.vocab_size}"
        )

    def from_path(shardings, policy_params):
        if _is_sequence_classifier(model_dir):
            return load_hf(model_dir, head="score", shardings=shardings, **run)[1]
        _, decoder = load_hf(model_dir, **run)
        params = {
            "decoder": {k: v for k, v in decoder.items() if k != "lm_head"},
            "score": fresh_head(value_config, config.seed + 1),
        }
        return jax.device_put(params, shardings)

    return value_config, from_path


def response_values(value_module: ScalarHeadModel, params: Any, batch: dict, prompt_len: int) -> jax.Array:
    """``[R, N]`` value estimates at the completion positions (the same inputs as the policy's log-probs)."""
    values = value_module.apply(
        {"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"], per_token=True
    )
    return values[:, prompt_len - 1 :]


def make_ppo_loss_fn(
    policy_config: ModelConfig,
    value_config: ModelConfig,
    p: ConfigDict,
    prompt_len: int,
    temperature: float,
    chunk_size: int = 0,
):
    value_model_ = ScalarHeadModel(value_config)

    def loss_fn(params, batch, rng, frozen):
        logp, ent = rl.response_logprobs(
            policy_config, params["policy"], batch, prompt_len, temperature, True, chunk_size
        )
        values = response_values(value_model_, params["value"], batch, prompt_len)
        mask = batch["response_mask"]
        pg_loss, pg_m = ppo_policy_loss(logp, batch["old_logprobs"], batch["advantages"], mask, p.cliprange)
        vf_loss, vf_m = ppo_value_loss(values, batch["old_values"], batch["returns"], mask, p.cliprange_value)
        if not p.ent_coef:
            ent = jax.lax.stop_gradient(ent)
        entropy = masked_mean(ent, mask)
        loss = pg_loss + p.vf_coef * vf_loss - p.ent_coef * entropy
        n = jnp.sum(mask)
        metrics = {
            **pg_m,
            **vf_m,
            "pg_loss": pg_loss,
            "vf_loss": vf_loss,
            "entropy": jax.lax.stop_gradient(entropy),
        }
        return loss * n, n, metrics

    return loss_fn


def make_score_pass(policy_config: ModelConfig, value_config: ModelConfig, p: ConfigDict, config: ConfigDict):
    """``(params, ref_params, rows, score, sampler_logprobs, kl_coef) -> (per-token arrays, stats)``: the
    rollout's one scoring pass (reference log-probs, values, KL-shaped rewards, GAE), to be jitted."""
    r = rl.rollout_config(config)
    prompt_len, temp, recompute = int(r.max_prompt_len), float(r.temperature), r.old_logprobs == "recompute"
    chunk = config.train.loss_chunk_size  # tokens per block of the vocabulary projection; 0 = one
    value_module = ScalarHeadModel(value_config)

    def score_pass(params, ref_params, batch, score, sampler_logprobs, kl_coef):
        mask = batch["response_mask"]
        ref, old = rl.scoring_logprobs(
            policy_config, params["policy"], ref_params, batch, prompt_len, temp, recompute, chunk
        )
        logp = old if recompute else sampler_logprobs
        values = response_values(value_module, params["value"], batch, prompt_len) * mask
        rewards, kl = kl_penalty_rewards(score, logp, ref, mask, kl_coef, p.kl_estimator)
        if p.whiten_rewards:
            rewards = whiten(rewards, mask, shift_mean=False)
        adv, returns = gae(rewards, values, mask, p.gamma, p.lam)
        if p.whiten_advantages:
            adv = whiten(adv, mask)
        resid = (returns - values) * mask
        var = lambda x: masked_mean((x - masked_mean(x, mask)) ** 2, mask)  # noqa: E731
        stats = {
            "kl_seq": jnp.sum(kl, axis=1),
            "non_score_reward": jnp.sum(-kl_coef * kl, axis=1),
            "explained_variance": 1.0 - var(resid) / jnp.maximum(var(returns), 1e-8),
            "value_mean": masked_mean(values, mask),
            "returns_mean": masked_mean(returns, mask),
        }
        return {"logp": logp * mask, "ref": ref * mask, "values": values, "adv": adv, "returns": returns}, stats

    return score_pass


def layout(config: ConfigDict, p: ConfigDict, shards: int) -> tuple[int, int]:
    """``(rollout rows, rows per update)``, checked against the ``shards`` batch shards."""
    rows = config.train.batch_size * p.samples_per_prompt
    mini = p.mini_batch_size or rows
    rl.check_rows(rows, mini, shards, "ppo")
    return rows, mini


def step_spec(config: ConfigDict, model_config: ModelConfig, mesh: Mesh) -> StepSpec:
    """The PPO update (policy + value) from the config alone, with the rollout's sampler and scoring pass."""
    p, r = ppo_config(config), rl.rollout_config(config)
    prompt_len, n = int(r.max_prompt_len), int(r.max_new_tokens)
    rows, mini = layout(config, p, rl.batch_shards(mesh))
    value_config, _ = value_model(config, p, model_config)
    per_row = {k: np.zeros((mini, n), np.float32) for k in ("old_logprobs", "old_values", "returns", "advantages")}
    update = rl.planned_rows(mini, prompt_len, n) | per_row
    score_rows = rl.planned_rows(rows, prompt_len, n)
    score_pass = make_score_pass(model_config, value_config, p, config)
    arrays = shapes_of(score_rows) | {
        "score": jax.ShapeDtypeStruct((rows,), np.float32),
        "sampler_logprobs": jax.ShapeDtypeStruct((rows, n), np.float32),
    }
    seq = prompt_len + n
    tokens = batch_tokens(update, padded=True)
    scored = batch_tokens(score_rows, padded=True)
    forward = (forward_flops_per_token(model_config, seq) + forward_flops_per_token(value_config, seq)) * scored

    def score_fn(params, frozen, a):
        rows_ = {k: v for k, v in a.items() if k not in ("score", "sampler_logprobs")}
        return score_pass(params, frozen, rows_, a["score"], a["sampler_logprobs"], jnp.float32(p.kl_coef))

    return StepSpec(
        loss_fn=make_ppo_loss_fn(
            model_config, value_config, p, prompt_len, float(r.temperature), config.train.loss_chunk_size
        ),
        abstract_params={"policy": abstract_params(model_config), "value": abstract_reward_params(value_config)},
        batch=shapes_of(update),
        layout=f"{mini} of the rollout's {rows} rows, {prompt_len} prompt + {n} completion tokens",
        flops=(train_flops_per_token(model_config, seq) + train_flops_per_token(value_config, seq)) * tokens,
        frozen=abstract_params(model_config),  # the reference policy (read by the scoring pass)
        programs=(
            rl.sampler_program(config, model_config, rows, policy=lambda params: params["policy"]),
            Program(
                name=f"scoring pass: reference log-probs, values and advantages of {rows} rows",
                fn=score_fn,
                arrays=arrays,
                notes=(f"model FLOPs: {forward:.3e} in all",),
            ),
        ),
    )


def build(config: ConfigDict, model_config: ModelConfig, tokenizer: Any, mesh: Mesh) -> AlgorithmParts:
    spec = step_spec(config, model_config, mesh)
    p = ppo_config(config)
    engine = rl.RolloutEngine(config, model_config, tokenizer, mesh)
    rows, mini = layout(config, p, engine.num_batch_shards)
    train_iter = rl.prompt_iterator(config, engine)
    train_iter.extra["kl_coef"] = float(p.kl_coef)
    value_config, init_value = value_model(config, p, model_config)
    score_pass = jax.jit(make_score_pass(model_config, value_config, p, config))

    def prepare(params, frozen, s, seqs, order, total):
        score = total - np.where(s.finished, 0.0, p.missing_eos_penalty).astype(np.float32)
        kl_coef = float(train_iter.extra.get("kl_coef", p.kl_coef))
        out, stats = jax.device_get(
            score_pass(
                params,
                frozen,
                engine.put_tree(seqs),
                engine.put(score),
                engine.put(s.logprobs * s.mask),
                jnp.float32(kl_coef),
            )
        )
        batch = {
            **seqs,
            "old_logprobs": np.asarray(out["logp"], np.float32),
            "old_values": np.asarray(out["values"], np.float32),
            "returns": np.asarray(out["returns"], np.float32),
            "advantages": np.asarray(out["adv"], np.float32),
        }
        metrics = rl.kl_metrics(batch["old_logprobs"], np.asarray(out["ref"]), s.mask)
        metrics["score"] = float(np.mean(score))
        metrics["kl_coef"] = kl_coef
        metrics["non_score_reward"] = float(np.mean(stats["non_score_reward"]))
        for k in ("explained_variance", "value_mean", "returns_mean"):
            metrics[k] = float(stats[k])
        if p.adaptive_kl:
            mean_kl = float(np.mean(stats["kl_seq"]))
            train_iter.extra["kl_coef"] = float(update_kl_coef(kl_coef, mean_kl, rows, p.kl_target, p.kl_horizon))
        return batch, metrics

    rollout = rl.online_rollout(
        engine,
        train_iter,
        repeat=p.samples_per_prompt,
        prepare=prepare,
        mini_batch_size=mini,
        epochs=p.epochs,
        seed=config.seed,
        policy=lambda params: params["policy"],
    )
    eval_batches, eval_records, eval_inner, summarize = rl.eval_setup(config, tokenizer, model_config, rows)

    initial = InitialPolicy(config, model_config)

    def init_params(shardings):
        policy = initial.init(shardings["policy"])
        return {"policy": policy, "value": init_value(shardings["value"], policy)}

    def frozen(params):  # the initial policy (a copy on a fresh start, re-created on a resume)
        return initial.reference(params["policy"])

    def export(params, out_dir):
        save_hf(model_config, jax.device_get(params["policy"]), out_dir, tokenizer=tokenizer)
        save_hf(value_config, jax.device_get(params["value"]), os.path.join(out_dir, "value_model"), head="score")

    return AlgorithmParts(
        train_iter=train_iter,
        eval_batches=eval_batches,
        loss_fn=spec.loss_fn,
        eval_fn=(lambda params, batch, fr: eval_inner(params["policy"], batch, fr))
        if eval_inner
        else (lambda params, batch, fr: {}),
        summarize=summarize,
        abstract_params=spec.abstract_params,
        init_params=init_params,
        frozen=frozen,
        tokens_in_batch=batch_tokens,
        export=export,
        after_eval=lambda params: engine.greedy_eval(params["policy"], eval_records, rows),
        rollout=rollout,
        updates_per_step=p.epochs * (rows // mini),
    )
