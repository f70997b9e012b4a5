"""The initial policy, for the trainable state and for the frozen reference (DPO, PPO, GRPO)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from jaxpt.models.config import ModelConfig
from jaxpt.models.factory import model_params_from


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
