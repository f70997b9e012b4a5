"""FLOP and byte accounting with measured peaks: MFU for training steps, MBU for decoding.

Training FLOPs per token follow MaxText's count (``calculate_tflops_training_per_device``): ``6 * params``
for the parameters that take part in a matmul (forward + backward), the vocabulary projection counted once,
plus causal attention ``6 * layers * seq_len * heads * head_dim`` (QK^T and AV, forward + backward, halved
for the causal mask). Lookup tables do no matmul: an untied input embedding and learned position tables are
left out (a tied table is the LM head, counted once). Norm scales are counted; they are tiny.

A decode step is bound by memory traffic rather than FLOPs: model bandwidth utilisation (MBU, as defined in
Databricks' "LLM Inference Performance Engineering", 2023) is the bytes a step must read (weights and the KV
cache) per second, divided by the device's read bandwidth.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from jaxpt.models.config import ModelConfig
from jaxpt.models.decoder import abstract_params, init_cache
from jaxpt.sharding import unbox


def matmul_params(config: ModelConfig) -> int:
    """Parameters a token multiplies through: all but the lookup tables (module docstring)."""
    lookups = 0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size
    if config.position_type == "learned":
        lookups += config.max_position_embeddings * config.hidden_size
    return config.num_params() - lookups


def train_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    attention = 6 * config.num_layers * seq_len * config.num_heads * config.head_dim
    return 6.0 * matmul_params(config) + attention


def forward_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    return train_flops_per_token(config, seq_len) / 3.0


def measure_matmul_peak(n: int = 1024, dtype: str = "float32", repeats: int = 5) -> float:
    """FLOP/s of a square matmul on the default device: the "peak" that MFU is reported against."""
    return 2 * n**3 / _best_seconds(jax.jit(lambda x: x @ x), jnp.ones((n, n), dtype), repeats)


def decode_bytes_per_step(config: ModelConfig, batch: int, cache_length: int) -> int:
    """Bytes one decode step reads at least: every parameter once, except the embedding and learned-position
    tables, of which a step looks up one row per sequence (a tied LM head reads the embedding table in full),
    and the whole preallocated KV cache (``batch`` rows of ``cache_length`` slots)."""

    def read(path, leaf) -> int:
        table = path[0].key == "position_embed" or (path[0].key == "embed" and not config.tie_word_embeddings)
        return 0 if table else leaf.size * leaf.dtype.itemsize

    params = unbox(abstract_params(config))
    cache = jax.eval_shape(lambda: init_cache(config, batch, cache_length))
    weights = sum(jax.tree.leaves(jax.tree_util.tree_map_with_path(read, params)))
    return int(weights + sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache)))


def measure_read_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """Bytes/s of a jitted sum over a ``mib`` MiB float32 array on the default device: the peak MBU is
    reported against (as ``measure_matmul_peak`` is for MFU). Choose an array larger than the caches."""
    x = jnp.ones((mib * 2**20 // 4 // 256, 256), jnp.float32)
    return x.nbytes / _best_seconds(jax.jit(jnp.sum), x, repeats)


def _best_seconds(f, x, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls of ``f(x)`` after one untimed (compiling) call."""
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return best
