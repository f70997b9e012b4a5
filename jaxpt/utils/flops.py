"""FLOP accounting and a measured matmul peak, for MFU.

Training FLOPs per token follow MaxText's count: ``6 * params`` for the matmuls (forward + backward) plus
causal attention ``6 * layers * seq_len * heads * head_dim`` (QK^T and AV, forward + backward, halved for
the causal mask). Embedding lookups are counted in ``params`` as MaxText does; this slightly overstates.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from jaxpt.models.config import ModelConfig


def train_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    attention = 6 * config.num_layers * seq_len * config.num_heads * config.head_dim
    return 6.0 * config.num_params() + attention


def forward_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    return train_flops_per_token(config, seq_len) / 3.0


def measure_matmul_peak(n: int = 1024, dtype: str = "float32", repeats: int = 5) -> float:
    """FLOP/s of a square matmul on the default device: the "peak" that MFU is reported against."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best
