"""Algorithms share one loop and differ in their batch and their step; ``get_algorithm`` picks one by name."""

from __future__ import annotations

import importlib
from collections.abc import Callable

ALGORITHMS = {
    "sft": "jaxpt.algorithms.sft",
    "rm": "jaxpt.algorithms.reward_model",
    "dpo": "jaxpt.algorithms.dpo",
    "ppo": "jaxpt.algorithms.ppo",
    "grpo": "jaxpt.algorithms.grpo",
}


def get_algorithm(name: str) -> Callable:
    """The ``build(config, model_config, tokenizer, mesh)`` function of algorithm ``name``."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; available: {', '.join(sorted(ALGORITHMS))}")
    return importlib.import_module(ALGORITHMS[name]).build
