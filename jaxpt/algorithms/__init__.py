"""Algorithms share one loop and differ in their batch and their step; ``get_algorithm`` picks one by name."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING

from ml_collections import ConfigDict

from jaxpt.config import ConfigError, with_defaults
from jaxpt.errors import UserError
from jaxpt.training.defaults import OPEN_FIELDS

if TYPE_CHECKING:
    from jax.sharding import Mesh

    from jaxpt.algorithms.base import StepSpec
    from jaxpt.models.config import ModelConfig

ALGORITHMS = {
    "sft": "jaxpt.algorithms.sft",
    "rm": "jaxpt.algorithms.reward_model",
    "dpo": "jaxpt.algorithms.dpo",
    "ppo": "jaxpt.algorithms.ppo",
    "grpo": "jaxpt.algorithms.grpo",
}


def _module(name: str) -> ModuleType:
    if name not in ALGORITHMS:
        raise UserError(f"unknown algorithm {name!r}; available: {', '.join(sorted(ALGORITHMS))}")
    return importlib.import_module(ALGORITHMS[name])


def get_algorithm(name: str) -> Callable:
    """The ``build(config, model_config, tokenizer, mesh)`` function of algorithm ``name``."""
    return _module(name).build


def step_spec(config: ConfigDict, model_config: ModelConfig, mesh: Mesh) -> StepSpec:
    """Algorithm ``config.algorithm``'s ``StepSpec`` (its step from the config alone; ``jaxpt plan`` compiles it)."""
    return _module(config.algorithm).step_spec(config, model_config, mesh)


def resolve_config(config: ConfigDict) -> ConfigDict:
    """``config`` read through its algorithm's ``defaults()``: every field present, and a field the defaults
    do not have is a ``ConfigError`` naming it (with the closest known fields), before anything runs."""
    if "algorithm" not in config:
        raise ConfigError("the config has no 'algorithm' field (sft, rm, dpo, ppo, grpo)")
    return with_defaults(config, _module(config.algorithm).defaults(), open_fields=OPEN_FIELDS)
