"""Byte and FLOP accounting for MFU / MBU: counts written out by hand for the decoder's parameter shapes."""

import math

import pytest

from jaxpt.models.config import ModelConfig
from jaxpt.utils.flops import decode_bytes_per_step, measure_read_bandwidth, train_flops_per_token

LLAMA = dict(
    model_type="llama",
    vocab_size=96,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    tie_word_embeddings=False,
)
GPT2 = dict(model_type="gpt2", vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64)


@pytest.mark.parametrize(
    "param_dtype,dtype", [("float32", "float32"), ("bfloat16", "bfloat16"), ("float32", "bfloat16")]
)
def test_decode_bytes_llama_untied(param_dtype, dtype):
    config = ModelConfig.from_hf(LLAMA, param_dtype=param_dtype, dtype=dtype)
    e, m, v, h, kv, d, layers = 32, 48, 96, 4, 2, 8, 2
    per_layer = e * h * d + 2 * e * kv * d + h * d * e + 3 * e * m + 2 * e  # q, k, v, o, gate/up/down, 2 norms
    weights = layers * per_layer + e + e * v  # + final norm + LM head; the embedding table is only looked up
    batch, slots = 3, 20
    cache = 2 * layers * batch * kv * d * slots  # keys and values
    weight_size = 2 if param_dtype == "bfloat16" else 4
    cache_size = 2 if dtype == "bfloat16" else 4  # the cache holds keys and values in the compute dtype
    expected = weights * weight_size + cache * cache_size + batch * slots * 4  # + its int32 segment ids
    assert decode_bytes_per_step(config, batch, slots) == expected


def test_decode_bytes_gpt2_tied_learned_positions():
    config = ModelConfig.from_hf(GPT2)
    e, m, v, layers = 32, 4 * 32, 96, 2
    attn = 4 * (e * e + e)  # q, k, v, o with biases
    mlp = e * m + m + m * e + e  # fc and down with biases
    per_layer = attn + mlp + 2 * 2 * e  # two LayerNorms (scale and bias)
    weights = layers * per_layer + 2 * e + v * e  # final LayerNorm; the tied head reads the embedding table
    batch, slots = 2, 10
    cache = 2 * layers * batch * e * slots  # 4 heads of 8 = e per position, keys and values
    assert decode_bytes_per_step(config, batch, slots) == 4 * (weights + cache) + batch * slots * 4


def test_read_bandwidth_is_a_rate():
    bw = measure_read_bandwidth(mib=4, repeats=2)
    assert math.isfinite(bw) and bw > 1e8  # bytes/s: any machine reads 4 MiB in well under 40 ms


def test_train_flops_count_the_vocabulary_projection_once():
    """MaxText's count: 6 FLOPs per matmul weight per token (forward + backward) plus causal attention; an
    untied input embedding is only looked up, so the untied and tied models cost the same."""
    e, m, v, h, d, layers, seq = 32, 48, 96, 4, 8, 2, 64
    per_layer = e * h * d + 2 * e * 2 * d + h * d * e + 3 * e * m + 2 * e  # q, k, v (2 KV heads), o, MLP, norms
    attention = 6 * layers * seq * h * d
    expected = 6 * (layers * per_layer + e + e * v) + attention  # + final norm + the vocabulary projection
    untied = ModelConfig.from_hf(LLAMA)
    tied = ModelConfig.from_hf({**LLAMA, "tie_word_embeddings": True})
    assert train_flops_per_token(untied, seq) == expected
    assert train_flops_per_token(tied, seq) == expected


def test_train_flops_leave_out_learned_positions():
    config = ModelConfig.from_hf(GPT2)
    e, m, v, layers, seq = 32, 4 * 32, 96, 2, 64
    per_layer = 4 * e * e + 2 * e * m + 2 * e  # q, k, v, o; fc and down; the count's two norm scales
    expected = 6 * (layers * per_layer + e + v * e) + 6 * layers * seq * 4 * 8  # the tied table is the head
    assert train_flops_per_token(config, seq) == expected
