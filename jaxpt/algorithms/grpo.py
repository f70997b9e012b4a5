"""Group Relative Policy Optimization (GRPO; Shao et al. 2024), on the online-RL skeleton shared with PPO.

    jaxpt train --config=configs/grpo/arithmetic.py --workdir=runs/grpo

Each loop step is one *rollout* (``AlgorithmParts.rollout``, called with the loop's current params):

1. ``train.batch_size`` prompts come from a resumable prompt iterator (``data.train``, field
   ``data.prompt_key``); each is repeated ``grpo.num_generations`` (G) times;
2. the sampler (``jaxpt.generation.frontend.Sampler``) draws the completions from the *current* policy
   params (an argument of the jitted function, never a captured copy);
3. completions are decoded and scored by ``config.rewards`` (``jaxpt/rewards/``); advantages are the
   group-normalised rewards ``(r - mean_G) / (std_G + eps)`` (``grpo.advantage``: ``dr_grpo`` drops the
   division, ``rloo`` uses the leave-one-out baseline);
4. one jitted scoring pass gives the frozen reference's log-probs (``AlgorithmParts.frozen``: the initial
   model re-created from ``config.model``, so a resumed run keeps the *initial* reference) and, with
   ``rollout.old_logprobs="recompute"``, the behaviour policy's; by default (``"sampler"``) the sampler's
   log-probs are used. All log-probs are of the temperature-scaled distribution (logits / temperature, as
   the sampler and TRL compute them), so the first update starts at ratio 1;
5. the rollout's prompt groups are shuffled and split into minibatches of ``grpo.mini_batch_size`` rows, for
   ``grpo.num_iterations`` passes (mu in the paper): one optimizer update each, through the loop's shared
   jitted step, whose loss is ``jaxpt.losses.rl.grpo_loss`` (``loss_type`` grpo / dr_grpo / dapo,
   ``epsilon_low`` / ``epsilon_high``, ``beta``; ``beta=0`` drops the KL term).

Rows store each prompt once (``shared_prompt_rows``: the G completions of a prompt run on one copy of its KV
cache, so the scoring pass and the updates run the prompt once per group instead of G times); when a
minibatch's prompt count does not divide over the mesh's batch shards, the flat ``prompt | completion`` rows
are used instead. The skeleton of this step (sample, score, scoring pass, minibatches) and the log-prob conventions:
``jaxpt/algorithms/common/rollout.py``.

Metrics per step (``train/``): ``reward`` (+ ``reward_std``, ``reward/<name>`` per reward component,
``frac_reward_zero_std``), ``kl`` (mean over sequences of sum_t log pi_old - log pi_ref, in nats),
``kl_token_k3``, ``response_length``, ``eos_frac``, ``clip_ratio`` (+ ``/low``, ``/high``), ``entropy``,
rollout timings. Eval: the NLL of ``data.eval``'s reference completions (``eval/loss``) and, before and after
training, greedy decoding of up to ``data.eval_prompts`` eval prompts scored by the rewards
(``eval/greedy/reward*``).
"""

from __future__ import annotations

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
from jaxpt.losses.rl import ADVANTAGE_ESTIMATORS, LOSS_AGGREGATIONS, grpo_loss
from jaxpt.models.config import ModelConfig
from jaxpt.models.decoder import abstract_params
from jaxpt.models.hf import save_hf
from jaxpt.utils.flops import forward_flops_per_token, train_flops_per_token


def defaults() -> ConfigDict:
    """Every field of a GRPO config with its default (``configs/grpo/`` files start from this)."""
    c = rl.defaults("grpo")
    c.grpo = ConfigDict(
        dict(
            num_generations=8,  # G: completions per prompt
            mini_batch_size=0,  # rows per optimizer update; 0 = the whole rollout (batch_size * G)
            num_iterations=1,  # mu: passes over each rollout
            loss_type="dapo",  # grpo | dr_grpo | dapo (jaxpt.losses.rl.LOSS_AGGREGATIONS)
            epsilon_low=0.2,
            epsilon_high=0.2,  # DAPO "clip-higher" uses 0.28
            beta=0.0,  # KL(pi || ref) coefficient (k3 estimator); 0 drops the term
            # grpo: (r - mean_G) / std_G; dr_grpo: r - mean_G; rloo: leave-one-out (ADVANTAGE_ESTIMATORS)
            advantage="grpo",
        )
    )
    return c


def grpo_config(config: ConfigDict) -> ConfigDict:
    """``config.grpo`` with defaults, checked; an unknown field is an error naming it."""
    g = with_defaults(config.get("grpo"), defaults().grpo, "grpo")
    if g.loss_type not in LOSS_AGGREGATIONS:
        raise UserError(f"grpo.loss_type={g.loss_type!r}; valid: {', '.join(LOSS_AGGREGATIONS)}")
    if g.advantage not in ADVANTAGE_ESTIMATORS:
        raise UserError(f"grpo.advantage={g.advantage!r}; valid: {', '.join(ADVANTAGE_ESTIMATORS)}")
    if g.num_generations < 2:
        raise UserError("grpo.num_generations must be >= 2 (advantages are relative to the group)")
    return g


def make_grpo_loss_fn(
    model_config: ModelConfig,
    g: ConfigDict,
    prompt_len: int,
    new_tokens: int,
    temperature: float,
    chunk_size: int = 0,
):
    def loss_fn(params, batch, rng, frozen):
        logp, ent = rl.response_logprobs(model_config, params, batch, prompt_len, temperature, True, chunk_size)
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


def layout(config: ConfigDict, g: ConfigDict, shards: int) -> tuple[int, int, bool]:
    """``(rollout rows, rows per update, shared)``; shared-prompt rows when a minibatch's prompts split evenly
    over the ``shards`` batch shards and the micro-batches."""
    group = g.num_generations
    rows = config.train.batch_size * group
    mini = g.mini_batch_size or rows
    rl.check_rows(rows, mini, shards, "grpo")
    per_mini, split = mini // group, shards * config.train.grad_accum_steps
    return rows, mini, mini % group == 0 and per_mini % split == 0


def make_score_pass(model_config: ModelConfig, config: ConfigDict):
    """``(params, ref_params, rows) -> (ref log-probs, recomputed behaviour log-probs or None)``: the rollout's
    one scoring pass (``jaxpt.algorithms.common.rollout.scoring_logprobs``), to be jitted."""
    r = rl.rollout_config(config)
    recompute = r.old_logprobs == "recompute"

    def score_pass(params, ref_params, batch):
        return rl.scoring_logprobs(
            model_config,
            params,
            ref_params,
            batch,
            int(r.max_prompt_len),
            float(r.temperature),
            recompute,
            config.train.loss_chunk_size,
        )

    return score_pass


def step_spec(config: ConfigDict, model_config: ModelConfig, mesh: Mesh) -> StepSpec:
    """The GRPO update from the config alone, with the rollout's two other programs: the sampler (prefill +
    decode over its KV cache) and the scoring pass (reference log-probs for every rollout row)."""
    g, r = grpo_config(config), rl.rollout_config(config)
    p, n, group = int(r.max_prompt_len), int(r.max_new_tokens), g.num_generations
    rows, mini, shared = layout(config, g, rl.batch_shards(mesh))
    update = rl.planned_rows(mini, p, n, group if shared else 0)
    update |= {
        "old_logprobs": np.zeros((mini, n), np.float32),
        "ref_logprobs": np.zeros((mini, n), np.float32),
        "advantages": np.zeros(mini, np.float32),
    }
    score_rows = rl.planned_rows(rows, p, n, group if shared else 0)
    score_pass = make_score_pass(model_config, config)
    forward = forward_flops_per_token(model_config, p + n) * batch_tokens(score_rows, padded=True)
    recompute = r.old_logprobs == "recompute"
    return StepSpec(
        loss_fn=make_grpo_loss_fn(model_config, g, p, n, float(r.temperature), config.train.loss_chunk_size),
        abstract_params=abstract_params(model_config),
        batch=shapes_of(update),
        layout=f"{mini} of the rollout's {rows} rows ({rows // group} prompts x G={group}), {p} prompt + {n} "
        f"completion tokens, {'shared-prompt' if shared else 'flat'} rows",
        flops=train_flops_per_token(model_config, p + n) * batch_tokens(update, padded=True),
        frozen=abstract_params(model_config),  # the reference (read by the scoring pass)
        programs=(
            rl.sampler_program(config, model_config, rows),
            Program(
                name=f"scoring pass: reference{' + behaviour' if recompute else ''} log-probs of {rows} rows",
                fn=lambda params, frozen, arrays: score_pass(params, frozen, arrays),
                arrays=shapes_of(score_rows),
                notes=(f"model FLOPs: {forward * (1 + recompute):.3e} in all",),
            ),
        ),
    )


def build(config: ConfigDict, model_config: ModelConfig, tokenizer: Any, mesh: Mesh) -> AlgorithmParts:
    spec = step_spec(config, model_config, mesh)
    g = grpo_config(config)
    engine = rl.RolloutEngine(config, model_config, tokenizer, mesh)
    group = g.num_generations
    rows, mini, shared = layout(config, g, engine.num_batch_shards)
    train_iter = rl.prompt_iterator(config, engine)
    recompute = engine.cfg.old_logprobs == "recompute"
    advantages = ADVANTAGE_ESTIMATORS[g.advantage]
    score_pass = jax.jit(make_score_pass(model_config, config))

    def prepare(params, frozen, s, seqs, order, total):
        ref, old = jax.device_get(score_pass(params, frozen, engine.put_tree(seqs)))
        old = np.asarray(old if recompute else s.logprobs[order], np.float32)
        adv = np.asarray(advantages(jnp.asarray(total), group))[order]
        mask = s.mask[order]
        batch = {
            **seqs,
            "old_logprobs": old * mask,
            "ref_logprobs": np.asarray(ref, np.float32) * mask,
            "advantages": adv.astype(np.float32),
        }
        metrics = rl.kl_metrics(old, np.asarray(ref), mask)
        metrics["frac_reward_zero_std"] = float(np.mean(np.std(total.reshape(-1, group), axis=1) == 0))
        return batch, metrics

    rollout = rl.online_rollout(
        engine,
        train_iter,
        repeat=group,
        prepare=prepare,
        mini_batch_size=mini,
        epochs=g.num_iterations,
        seed=config.seed,
        shared_prompt_group=group if shared else 0,
    )
    eval_batches, eval_records, eval_inner, summarize = rl.eval_setup(config, tokenizer, model_config, rows)

    def export(params, out_dir):
        save_hf(model_config, jax.device_get(params), out_dir, tokenizer=tokenizer)

    initial = InitialPolicy(config, model_config)

    return AlgorithmParts(
        train_iter=train_iter,
        eval_batches=eval_batches,
        loss_fn=spec.loss_fn,
        eval_fn=eval_inner or (lambda params, batch, fr: {}),
        summarize=summarize,
        abstract_params=spec.abstract_params,
        init_params=initial.init,
        frozen=initial.reference,
        tokens_in_batch=batch_tokens,
        export=export,
        after_eval=lambda params: engine.greedy_eval(params, eval_records, rows),
        rollout=rollout,
        updates_per_step=g.num_iterations * (rows // mini),
    )


__all__ = ["build", "defaults", "grpo_config", "make_grpo_loss_fn", "step_spec"]
