"""Shared set-up of the online-RL tests (PPO, GRPO): numpy-drawn params and a training run whose sampler calls
are recorded."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxpt.generation import frontend
from jaxpt.models.decoder import init_params
from jaxpt.training.loop import train


def random_params(abstract, seed: int, std: float = 0.02):
    """Params of ``abstract``'s shapes drawn with numpy (norm scales at 1): no XLA compile of initializers."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if "norm" in jax.tree_util.keystr(path):
            return np.ones(leaf.shape, leaf.dtype)
        return (std * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract)


def random_decoder_params(config, seed: int):
    return random_params(jax.eval_shape(lambda: init_params(config, jax.random.key(0))), seed)


def trees_equal(a, b) -> bool:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in pairs)


def train_recording_sampler(config, workdir: str, outputs: bool = False):
    """``train(config, workdir)`` with every sampler call recorded (the params it sampled from, the prompt
    tokens and mask, the sampling config, and with ``outputs`` what it returned); returns (result, calls)."""
    calls = []
    real = frontend.generate

    def spy(cfg, params, tokens, mask, rng, sampling):
        out = real(cfg, params, tokens, mask, rng, sampling)
        call = dict(params=jax.device_get(params), tokens=np.asarray(tokens), mask=np.asarray(mask), sampling=sampling)
        calls.append(call | ({"out": jax.device_get(out)} if outputs else {}))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(frontend, "generate", spy)
        result = train(config, workdir)
    return result, calls
