"""Direct preference optimisation and its family (cDPO, rDPO, IPO, SLiC hinge, SimPO, ORPO).

    jaxpt train --config=configs/dpo/quickstart.py --workdir=runs/dpo

A trainable policy (``config.model``) and a frozen reference. Chosen and rejected completions share their
prompt, so batches use the shared-prompt layout (``jaxpt/data/preference.py``): each prompt runs once, its KV
cache is copied for the two completions, which run on top of it in one ``[2B, C]`` pass (chosen rows first);
the per-row summed completion log-probs (``jaxpt.models.logprobs.sequence_logprobs``, the vocabulary projection
in blocks of ``train.loss_chunk_size`` tokens) are split into ``[:B]`` / ``[B:]``.

The reference (``config.dpo``):

- by default the policy's initial weights. ``AlgorithmParts.frozen`` re-creates them from ``config.model``
  (the same checkpoint / seed the policy starts from), a separate copy that is resume-safe: a resumed run
  gets the *initial* model as reference, not the resumed policy;
- ``reference_path``: another HF causal LM (same tokenizer / vocabulary);
- ``precompute_reference=True``: reference log-probs are computed once over the train and eval pairs
  before training and cached in the batches (``ref_logps`` [2B]); no reference params are held and the step
  runs no reference forward;
- reference-free losses (``simpo``, ``orpo``) need no reference at all.

Loss ``dpo.loss_type`` in sigmoid / robust / ipo / hinge / simpo / orpo with ``beta``, ``label_smoothing``,
``simpo_gamma``, ``ipo_length_normalize``, ``orpo_include_nll`` (``jaxpt.losses.preference.dpo_loss``,
evaluated per pair so sums over pairs are exact under gradient accumulation and padded eval batches).
Metrics: ``rewards/{chosen,rejected,accuracy,margin}`` (implicit rewards ``beta (log pi - log ref)``),
``logps/{chosen,rejected}`` and ``logps/accuracy`` (fraction of pairs whose chosen completion the policy
itself finds likelier). The policy exports as a HF causal LM.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from ml_collections import ConfigDict

from jaxpt.algorithms.base import AlgorithmParts, StepSpec, shapes_of
from jaxpt.algorithms.common.policy import InitialPolicy
from jaxpt.algorithms.common.preference import (
    check_batch_layout,
    load_pairs,
    masked_means,
    masked_sums,
    pair_valid,
    planned_pair_batch,
    preference_data_defaults,
    preference_tokenizer,
    summarize_pairs,
)
from jaxpt.config import with_defaults
from jaxpt.data.preference import Pair, PreferenceDataIterator, fixed_preference_batches
from jaxpt.data.sft import batch_tokens
from jaxpt.errors import UserError
from jaxpt.losses.preference import DPO_LOSS_TYPES, dpo_loss
from jaxpt.models.config import ModelConfig
from jaxpt.models.decoder import abstract_params
from jaxpt.models.factory import run_options
from jaxpt.models.hf import load_hf, save_hf
from jaxpt.models.logprobs import sequence_logprobs
from jaxpt.sharding import batch_sharding, param_shardings, rules_of, shard_batch
from jaxpt.training.defaults import base_config
from jaxpt.utils.flops import forward_flops_per_token, train_flops_per_token

REFERENCE_FREE = ("simpo", "orpo")


def defaults() -> ConfigDict:
    """Every field of a DPO config with its default (``configs/dpo/`` files start from this)."""
    c = base_config("dpo")
    c.data = preference_data_defaults()
    c.dpo = ConfigDict(
        dict(
            loss_type="sigmoid",  # sigmoid | robust | ipo | hinge | simpo | orpo (jaxpt.losses.preference)
            beta=0.1,
            label_smoothing=0.0,  # cDPO (sigmoid) / rDPO (robust) label-noise rate
            simpo_gamma=1.0,
            ipo_length_normalize=False,
            orpo_include_nll=True,
            reference_path="",  # "" = the policy's initial weights
            precompute_reference=False,  # reference log-probs once, before training (no reference in the step)
        )
    )
    return c


# ------------------------------------------------------------------------------------------------ loss
def loss_kwargs(dpo: ConfigDict) -> dict[str, Any]:
    if dpo.loss_type not in DPO_LOSS_TYPES:
        raise UserError(f"dpo.loss_type={dpo.loss_type!r}; valid: {', '.join(DPO_LOSS_TYPES)}")
    return dict(
        loss_type=dpo.loss_type,
        beta=float(dpo.beta),
        label_smoothing=float(dpo.label_smoothing),
        simpo_gamma=float(dpo.simpo_gamma),
        ipo_length_normalize=bool(dpo.ipo_length_normalize),
        orpo_include_nll=bool(dpo.orpo_include_nll),
    )


def pair_losses(
    logps: jax.Array, ref_logps: jax.Array, lengths: jax.Array, kwargs: dict[str, Any], valid: jax.Array | None = None
):
    """``dpo_loss`` evaluated pair by pair on ``[2B]`` rows (chosen first): ``(loss [B], metrics {name: [B]})``.

    Padding pairs (``valid == 0``) get finite stand-in log-probs first: an empty completion has log-prob 0,
    which ORPO's ``log(1 - p)`` turns into ``-inf`` (and a nan gradient, even behind a 0 weight).
    """
    b = logps.shape[0] // 2
    if valid is not None:
        rows = jnp.concatenate([valid, valid]) > 0
        logps = jnp.where(rows, logps, -1.0)
        ref_logps = jnp.where(rows, ref_logps, -1.0)

    def one(pc, pr, rc, rr, lc, lr):
        return dpo_loss(
            pc[None], pr[None], rc[None], rr[None], chosen_lengths=lc[None], rejected_lengths=lr[None], **kwargs
        )

    loss, metrics = jax.vmap(one)(logps[:b], logps[b:], ref_logps[:b], ref_logps[b:], lengths[:b], lengths[b:])
    metrics["logps/accuracy"] = (logps[:b] > logps[b:]).astype(jnp.float32)
    return loss, metrics


def pair_terms(
    policy_config: ModelConfig,
    ref_config: ModelConfig | None,
    kwargs: dict[str, Any],
    chunk_size: int,
    params: Any,
    batch: dict[str, jax.Array],
    frozen: Any,
):
    """Per-pair ``(loss [B], metrics {name: [B]}, valid [B])``; the reference comes from ``frozen`` (its
    params), ``batch["ref_logps"]`` (precomputed) or nowhere (reference-free losses)."""
    logps = sequence_logprobs(policy_config, params, batch, chunk_size)
    if kwargs["loss_type"] in REFERENCE_FREE:
        ref = jnp.zeros_like(logps)
    elif "ref_logps" in batch:
        ref = batch["ref_logps"]
    else:
        ref = jax.lax.stop_gradient(sequence_logprobs(ref_config, frozen, batch, chunk_size))
    valid = pair_valid(batch)
    loss, metrics = pair_losses(logps, ref, batch["completion_lengths"], kwargs, valid)
    return loss, metrics, valid


def make_loss_fn(policy_config, ref_config, kwargs, chunk_size):
    def loss_fn(params, batch, rng, frozen):
        loss, metrics, valid = pair_terms(policy_config, ref_config, kwargs, chunk_size, params, batch, frozen)
        return masked_sums({"loss": loss}, valid)["loss"], jnp.sum(valid), masked_means(metrics, valid)

    return loss_fn


def make_eval_fn(policy_config, ref_config, kwargs, chunk_size):
    def eval_fn(params, batch, frozen):
        loss, metrics, valid = pair_terms(policy_config, ref_config, kwargs, chunk_size, params, batch, frozen)
        return {"pairs": jnp.sum(valid), **masked_sums({"loss": loss, **metrics}, valid)}

    return eval_fn


# ------------------------------------------------------------------------------------------- reference
def reference_config(config: ConfigDict, dpo: ConfigDict, policy_config: ModelConfig) -> ModelConfig | None:
    """The reference's ModelConfig (``dpo.reference_path``'s config.json, else the policy's); None when the
    step runs no reference (a reference-free loss, or reference log-probs precomputed into the batches)."""
    if dpo.loss_type in REFERENCE_FREE:
        return None
    if not dpo.reference_path:
        return policy_config
    ref_config = ModelConfig.from_hf(dpo.reference_path, **run_options(config.model))
    if ref_config.vocab_size != policy_config.vocab_size:
        raise UserError(f"reference vocab_size {ref_config.vocab_size} != policy vocab_size {policy_config.vocab_size}")
    return ref_config


def reference_loader(config: ConfigDict, dpo: ConfigDict, ref_config: ModelConfig, mesh: Mesh, initial: InitialPolicy):
    """``load()`` -> the reference params on their shardings (``dpo.reference_path``, else the policy's initial
    weights)."""
    shardings = param_shardings(abstract_params(ref_config), mesh, rules_of(config))
    if dpo.reference_path:
        return lambda: load_hf(dpo.reference_path, shardings=shardings, **run_options(config.model))[1]
    return lambda: initial.load(shardings)


def precompute_reference(
    ref_config: ModelConfig,
    ref_params: Any,
    pair_sets: list[list[Pair]],
    batch_size: int,
    seq_len: int,
    pad_id: int,
    mesh: Mesh,
    chunk_size: int,
) -> None:
    """Adds ``row_ref_logps = [ref log p(chosen), ref log p(rejected)]`` to every pair, in place."""
    fn = jax.jit(
        lambda p, b: sequence_logprobs(ref_config, p, b, chunk_size), in_shardings=(None, batch_sharding(mesh))
    )
    for pairs in pair_sets:
        batches = fixed_preference_batches(pairs, batch_size, seq_len, pad_id, shared_prompt=True)
        for k, batch in enumerate(batches):
            lp = np.asarray(jax.device_get(fn(ref_params, shard_batch(batch, mesh))), np.float32)
            for i, pair in enumerate(pairs[k * batch_size : (k + 1) * batch_size]):
                pair["row_ref_logps"] = np.asarray([lp[i], lp[batch_size + i]], np.float32)


# ----------------------------------------------------------------------------------------------- build
def step_spec(config: ConfigDict, model_config: ModelConfig, mesh: Mesh) -> StepSpec:
    """The DPO step from the config alone: shared-prompt pairs (``planned_pair_batch``) and, unless the loss is
    reference-free or its log-probs are precomputed (``ref_logps`` in the batch), the reference forward."""
    dpo = with_defaults(config.get("dpo"), defaults().dpo, "dpo")
    kwargs = loss_kwargs(dpo)
    ref_config = reference_config(config, dpo, model_config)
    in_step = ref_config is not None and not dpo.precompute_reference
    batch, layout = planned_pair_batch(config)
    if ref_config is not None and dpo.precompute_reference:
        batch["ref_logps"] = np.zeros(2 * config.train.batch_size, np.float32)
    per_token = train_flops_per_token(model_config, config.data.seq_len)
    if in_step:
        per_token += forward_flops_per_token(ref_config, config.data.seq_len)
    chunk = config.train.loss_chunk_size
    return StepSpec(
        loss_fn=make_loss_fn(model_config, ref_config, kwargs, chunk),
        abstract_params=abstract_params(model_config),
        batch=shapes_of(batch),
        layout=layout + (", reference log-probs precomputed" if ref_config and not in_step else ""),
        flops=per_token * batch_tokens(batch, padded=True),
        frozen=abstract_params(ref_config) if in_step else None,
    )


def build(config: ConfigDict, model_config: ModelConfig, tokenizer: Any, mesh: Mesh) -> AlgorithmParts:
    check_batch_layout(config)
    spec = step_spec(config, model_config, mesh)
    d = config.data
    dpo = with_defaults(config.get("dpo"), defaults().dpo, "dpo")
    kwargs = loss_kwargs(dpo)
    tokenizer = preference_tokenizer(config, tokenizer, model_config)
    pad = tokenizer.pad_token_id or 0
    b = config.train.batch_size
    chunk = config.train.loss_chunk_size
    train = load_pairs(d.train, tokenizer, d)
    held_out = load_pairs(d.eval, tokenizer, d, split=d.eval_split) if d.eval else []

    initial = InitialPolicy(config, model_config)
    ref_config = reference_config(config, dpo, model_config)
    load_reference = reference_loader(config, dpo, ref_config, mesh, initial) if ref_config else None
    frozen = None
    if ref_config and dpo.precompute_reference:
        ref_params = load_reference()
        precompute_reference(ref_config, ref_params, [train, held_out], b, d.seq_len, pad, mesh, chunk)
        del ref_params
    elif dpo.reference_path:
        frozen = lambda params: load_reference()  # noqa: E731  (the given model, never the policy)
    elif ref_config:
        frozen = initial.reference  # the initial policy: a copy on a fresh start, re-created on a resume

    train_iter = PreferenceDataIterator(
        train, b, d.seq_len, seed=config.seed, shuffle=True, pad_id=pad, shared_prompt=True
    )
    eval_batches = fixed_preference_batches(held_out, b, d.seq_len, pad, shared_prompt=True) if held_out else []

    def export(params, out_dir):
        save_hf(model_config, params, out_dir, tokenizer=tokenizer)

    per_token = train_flops_per_token(model_config, d.seq_len)
    if frozen is not None:  # the reference forward runs in the step too
        per_token += forward_flops_per_token(ref_config, d.seq_len)

    return AlgorithmParts(
        train_iter=train_iter,
        eval_batches=eval_batches,
        loss_fn=spec.loss_fn,
        eval_fn=make_eval_fn(model_config, ref_config, kwargs, chunk),
        summarize=summarize_pairs,
        abstract_params=spec.abstract_params,
        init_params=initial.init,
        frozen=frozen,
        tokens_in_batch=batch_tokens,
        flops_in_batch=lambda batch: batch_tokens(batch) * per_token,
        export=export,
    )
