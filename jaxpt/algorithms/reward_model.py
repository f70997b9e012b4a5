"""Reward models: the decoder + a scalar head trained with the Bradley-Terry pairwise loss.

    jaxpt train --config=configs/rm/quickstart.py --workdir=runs/rm

Initialisation (``config.model``):

- ``path`` is a causal LM (an SFT export, any ``*ForCausalLM``): its decoder is loaded, the LM head dropped
  and the scalar head drawn at random (std 0.02, as transformers / TRL);
- ``path`` is a ``*ForSequenceClassification`` checkpoint (``head="score"``, or ``head="auto"`` and its
  config.json ``architectures`` says so): decoder and head are both loaded;
- no ``path``: everything from scratch (``model.scratch``, seed ``config.seed``).

The reward of a row is the head's value at its last real token, over the *whole* sequence
``prompt + completion`` (the batch's ``inputs`` plus its final target), which is exactly what
``AutoModelForSequenceClassification`` scores on the exported checkpoint (``save_hf(..., head="score")``).

Loss (``config.rm``): ``-log sigmoid(r_c - r_r - margin) + center_coef (r_c + r_r)^2`` per pair
(``jaxpt.losses.preference.bradley_terry_loss``); ``margin`` comes from the data's ``rm.margin_column``
when the column exists. Metrics: ``rewards/{accuracy,margin,chosen,rejected}``.
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

from jaxpt.algorithms.base import AlgorithmParts, StepSpec, shapes_of
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
from jaxpt.data.preference import PreferenceDataIterator, fixed_preference_batches
from jaxpt.data.sft import batch_tokens
from jaxpt.errors import UserError
from jaxpt.losses.preference import bradley_terry_loss
from jaxpt.models.config import ModelConfig
from jaxpt.models.decoder import abstract_params
from jaxpt.models.factory import run_options
from jaxpt.models.hf import load_hf, save_hf
from jaxpt.models.logprobs import last_token_states
from jaxpt.models.reward import abstract_reward_params, init_reward_params, score_head
from jaxpt.sharding import param_shardings, rules_of
from jaxpt.training.defaults import base_config
from jaxpt.utils.flops import train_flops_per_token

Batch = dict[str, np.ndarray]


def defaults() -> ConfigDict:
    """Every field of a reward-model config with its default (``configs/rm/`` files start from this)."""
    c = base_config("rm")
    c.model.head = "auto"  # auto | lm (causal LM: new random head) | score (*ForSequenceClassification)
    c.data = preference_data_defaults()
    # center_coef: (r_c + r_r)^2 penalty; margin_column: a per-pair margin, used when the data has it
    c.rm = ConfigDict(dict(center_coef=0.0, margin_column="margin"))
    return c


# ---------------------------------------------------------------------------------------------- the model
def detect_head(model_cfg: ConfigDict) -> str:
    """``"score"`` for a ``*ForSequenceClassification`` checkpoint, ``"lm"`` for a causal LM (``head="auto"``)."""
    head = model_cfg.head or "auto"
    if head != "auto":
        if head not in ("lm", "score"):
            raise UserError(f"model.head={head!r}; expected auto, lm or score")
        return head
    if not model_cfg.path:
        return "lm"
    with open(os.path.join(model_cfg.path, "config.json")) as f:
        archs = json.load(f).get("architectures") or []
    return "score" if any(a.endswith("ForSequenceClassification") for a in archs) else "lm"


def init_reward_model(config: ConfigDict, model_config: ModelConfig, mesh: Mesh, shardings: Any) -> Any:
    """Reward-model params placed on ``shardings`` (see the module docstring for the three sources)."""
    m = config.model
    key = jax.random.key(config.seed)
    if not m.path:
        return jax.jit(lambda: init_reward_params(model_config, key), out_shardings=shardings)()
    if detect_head(m) == "score":
        _, params = load_hf(m.path, head="score", shardings=shardings, **run_options(m))
        return params
    lm_shardings = param_shardings(abstract_params(model_config), mesh, rules_of(config))
    _, lm = load_hf(m.path, shardings=lm_shardings, **run_options(m))
    score = jax.jit(lambda: random_head(model_config, key), out_shardings=shardings["score"])()
    return {"decoder": {k: v for k, v in lm.items() if k != "lm_head"}, "score": score}


def random_head(model_config: ModelConfig, key: jax.Array) -> dict[str, jax.Array]:
    """A random scalar head (normal, std 0.02, as ``init_reward_params``) without initialising a decoder."""
    shape = (model_config.hidden_size, 1)
    return {"kernel": (0.02 * jax.random.normal(key, shape, jnp.float32)).astype(model_config.param_dtype)}


def sequence_rewards(model_config: ModelConfig, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
    """``[2B]`` float32 rewards: the score head on each row's last real token's state
    (``jaxpt.models.logprobs.last_token_states``, flat or shared-prompt batches, ``jaxpt/data/preference.py``)."""
    states, _ = last_token_states(model_config, params["decoder"], batch)
    return score_head(model_config).apply({"params": params["score"]}, states)[..., 0].astype(jnp.float32)


def pair_terms(model_config: ModelConfig, center_coef: float, params: Any, batch: dict[str, jax.Array]):
    """Per-pair ``(loss [B], metrics {name: [B]}, valid [B])``."""
    r = sequence_rewards(model_config, params, batch)
    b = r.shape[0] // 2
    chosen, rejected = r[:b], r[b:]
    margin = batch["margin"][:b] if "margin" in batch else jnp.zeros_like(chosen)
    has_margin = "margin" in batch

    def one(c, rj, m):
        return bradley_terry_loss(c[None], rj[None], m[None] if has_margin else None, center_coef)

    loss, metrics = jax.vmap(one)(chosen, rejected, margin)
    return loss, metrics, pair_valid(batch)


def make_loss_fn(model_config: ModelConfig, center_coef: float):
    def loss_fn(params, batch, rng, frozen):
        loss, metrics, valid = pair_terms(model_config, center_coef, params, batch)
        return masked_sums({"loss": loss}, valid)["loss"], jnp.sum(valid), masked_means(metrics, valid)

    return loss_fn


def make_eval_fn(model_config: ModelConfig, center_coef: float):
    def eval_fn(params, batch, frozen):
        loss, metrics, valid = pair_terms(model_config, center_coef, params, batch)
        return {"pairs": jnp.sum(valid), **masked_sums({"loss": loss, **metrics}, valid)}

    return eval_fn


def step_spec(config: ConfigDict, model_config: ModelConfig, mesh: Mesh) -> StepSpec:
    """The reward-model step from the config alone (``planned_pair_batch``: no margin column)."""
    batch, layout = planned_pair_batch(config)
    return StepSpec(
        loss_fn=make_loss_fn(model_config, float(config.rm.center_coef)),
        abstract_params=abstract_reward_params(model_config),
        batch=shapes_of(batch),
        layout=layout,
        flops=train_flops_per_token(model_config, config.data.seq_len) * batch_tokens(batch, padded=True),
    )


def build(config: ConfigDict, model_config: ModelConfig, tokenizer: Any, mesh: Mesh) -> AlgorithmParts:
    check_batch_layout(config)
    spec = step_spec(config, model_config, mesh)
    d, rm = config.data, config.rm
    center_coef, margin_column = float(rm.center_coef), rm.margin_column
    tokenizer = preference_tokenizer(config, tokenizer, model_config)
    pad = tokenizer.pad_token_id or 0
    b = config.train.batch_size
    train = load_pairs(d.train, tokenizer, d, extra_columns=(margin_column,))
    train_iter = PreferenceDataIterator(
        train, b, d.seq_len, seed=config.seed, shuffle=True, pad_id=pad, shared_prompt=True
    )
    eval_batches = []
    if d.eval:
        held_out = load_pairs(d.eval, tokenizer, d, extra_columns=(margin_column,), split=d.eval_split)
        eval_batches = fixed_preference_batches(held_out, b, d.seq_len, pad, shared_prompt=True)

    def export(params, out_dir):
        save_hf(model_config, params, out_dir, head="score", tokenizer=tokenizer)

    return AlgorithmParts(
        train_iter=train_iter,
        eval_batches=eval_batches,
        loss_fn=spec.loss_fn,
        eval_fn=make_eval_fn(model_config, center_coef),
        summarize=summarize_pairs,
        abstract_params=spec.abstract_params,
        init_params=lambda shardings: init_reward_model(config, model_config, mesh, shardings),
        tokens_in_batch=batch_tokens,
        export=export,
    )
