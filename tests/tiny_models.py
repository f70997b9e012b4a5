"""Tiny models and runs the tests share: random-initialised Hugging Face models saved with ``save_pretrained``
(the parity reference), a tiny jaxpt ``ModelConfig``, the tiny SFT run config and a sharded SFT step on it."""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import numpy as np

from jaxpt.algorithms.sft import make_loss_fn
from jaxpt.config import load_config
from jaxpt.data.sft import make_batch
from jaxpt.models.config import ModelConfig
from jaxpt.models.decoder import abstract_params, init_params
from jaxpt.sharding import DEFAULT_RULES
from jaxpt.training.optimizer import make_optimizer
from jaxpt.training.state import create_state, state_shardings
from jaxpt.training.step import make_train_step

SFT_TINY = "configs/sft/quickstart.py:tiny"
FAMILIES = ("llama", "llama3", "mistral", "qwen2", "qwen3", "gpt2")
VOCAB = 97


def hf_config(family: str):
    import transformers

    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if family == "llama":  # Llama 2 style, untied, explicit head_dim
        return transformers.LlamaConfig(**common, head_dim=16)
    if family == "llama3":  # Llama 3.1 RoPE scaling, tied
        return transformers.LlamaConfig(
            **common,
            rope_theta=500000.0,
            tie_word_embeddings=True,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        )
    if family == "mistral":
        return transformers.MistralConfig(**common, sliding_window=6)
    if family == "qwen2":  # QKV bias
        return transformers.Qwen2Config(**common)
    if family == "qwen3":  # q/k RMSNorm, head_dim != hidden/heads, tied
        return transformers.Qwen3Config(**common, head_dim=32, tie_word_embeddings=True)
    if family == "gpt2":
        return transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128, bos_token_id=1, eos_token_id=2
        )
    raise ValueError(family)


def make_tiny_hf(family: str, directory: str, seed: int = 0, tokenizer=None):
    """Builds, perturbs (so outputs are not degenerate) and saves a tiny HF causal LM; returns it."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(family)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    os.makedirs(directory, exist_ok=True)
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return model


def tiny_llama_config(**kw) -> ModelConfig:
    """A 2-layer, 64-wide Llama (vocab 96, untied) as jaxpt parses it; ``kw``: run options such as scan_layers."""
    hf = dict(
        model_type="llama",
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return ModelConfig.from_hf(hf, **kw)


def run_config(spec: str, **overrides):
    """``load_config(spec)`` with dotted-key overrides: ``run_config(SFT_TINY, **{"train.steps": 3})``."""
    c = load_config(spec)
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def sft_run_config(**overrides):
    """The quickstart's ``:tiny`` SFT run (8 steps of 8 rows, char tokenizer, from scratch) at seq_len 64."""
    return run_config(SFT_TINY, **{"data.seq_len": 64, **overrides})


def sft_setup(mesh, config, grad_accum=1, trainable=None):
    """A sharded SFT state and its jitted step (``trainable``: a mask, jaxpt/training/trainable.py)."""
    tx, schedule = make_optimizer(load_config(SFT_TINY).optimizer, total_steps=10, trainable=trainable)
    rules = DEFAULT_RULES
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = abstract_params(config)
        shardings = state_shardings(boxed, tx, mesh, rules)
        params = init_params(config, jax.random.key(0))
        state = create_state(jax.device_get(params), tx, shardings, seed=0)
        step_fn = make_train_step(make_loss_fn(config, 64), tx, schedule, grad_accum, trainable)
        step = jax.jit(step_fn, donate_argnums=0)
    return state, step, shardings


def sft_batches(examples, n=2, rows=8):
    """``n`` packed batches of ``rows`` rows at seq_len 64, two examples a row, in order."""
    out = []
    for k in range(n):
        idx = list(range(k * rows * 2, (k + 1) * rows * 2))
        out.append(make_batch(examples, [idx[i : i + 2] for i in range(0, len(idx), 2)], 64, 0))
    return out


def char_model_config(tokenizer, hidden=32) -> ModelConfig:
    """A 2-layer Llama over ``tokenizer``'s vocabulary (eval / data-generation tests)."""
    return ModelConfig.from_hf(
        dict(
            model_type="llama",
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def far_random_params(init_fn, seed, scale=0.3):
    """Random params with the shapes ``init_fn`` would create (no compilation: shapes via ``eval_shape``), far
    enough from a fresh init that logits are not flat; norm scales stay near 1."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        is_norm = any("norm" in str(getattr(k, "key", "")) for k in path)
        return 1.0 + 0.1 * noise if is_norm else scale * noise

    return jax.tree_util.tree_map_with_path(draw, jax.eval_shape(init_fn))
