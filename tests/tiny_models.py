"""Tiny random-initialised Hugging Face models saved with ``save_pretrained``: the parity reference."""

from __future__ import annotations

import os

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
