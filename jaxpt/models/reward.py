"""Reward / value model: the decoder with a scalar head read at each row's last real token.

Params are ``{"decoder": <decoder params, no LM head>, "score": {"kernel": [embed, 1]}}``, the same layout as
transformers' ``*ForSequenceClassification`` with ``num_labels=1`` (``model.*`` + ``score.weight``), so
reward models import from and export to Hugging Face (``load_hf_reward`` / ``save_hf_reward``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpt.models.config import ModelConfig
from jaxpt.models.decoder import Decoder, init_params
from jaxpt.sharding import unbox

Array = jax.Array


def score_head(config: ModelConfig) -> nn.Dense:
    """The ``[embed, 1]`` head (``params["score"]``); also applied on its own to the pooled hidden states of
    ``jaxpt.models.logprobs.last_token_states``."""
    return nn.Dense(
        1,
        use_bias=False,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed", None)),
        name="score",
    )


class ScalarHeadModel(nn.Module):
    """Decoder + linear head to one scalar per token (``per_token=True``, for PPO values) or per row."""

    config: ModelConfig

    @nn.compact
    def __call__(self, tokens, positions=None, segment_ids=None, per_token: bool = False):
        hidden, _ = Decoder(self.config, name="decoder")(tokens, positions, segment_ids, return_hidden=True)
        values = score_head(self.config)(hidden)[..., 0].astype(jnp.float32)
        if per_token:
            return values
        return last_token_value(values, segment_ids)


def last_token_value(values: Array, segment_ids: Array | None) -> Array:
    """``values[b, t_last(b)]`` where ``t_last`` is the rightmost non-padding token (HF's pooling rule);
    ``values`` is ``[B, T, ...]`` (per-token scores or hidden states)."""
    if segment_ids is None:
        return values[:, -1]
    t = jnp.arange(values.shape[1])[None, :]
    last = jnp.max(jnp.where(segment_ids > 0, t, 0), axis=1)
    index = last.reshape(-1, 1, *([1] * (values.ndim - 2)))
    return jnp.take_along_axis(values, index, axis=1)[:, 0]


def init_reward_params(config: ModelConfig, rng: Array, decoder_params: Any = None, boxed: bool = False) -> Any:
    """Random head (std 0.02, as TRL/transformers); the decoder from ``decoder_params`` when given."""
    variables = jax.jit(ScalarHeadModel(config.replace(attention="xla")).init)(rng, jnp.zeros((1, 1), jnp.int32))
    params = variables["params"] if boxed else unbox(variables["params"])
    if decoder_params is not None:
        params = dict(params)
        params["decoder"] = {k: v for k, v in decoder_params.items() if k != "lm_head"}
    return params


def abstract_reward_params(config: ModelConfig) -> Any:
    return jax.eval_shape(lambda: init_reward_params(config, jax.random.key(0), boxed=True))


__all__ = [
    "ScalarHeadModel",
    "abstract_reward_params",
    "init_params",
    "init_reward_params",
    "last_token_value",
    "score_head",
]
