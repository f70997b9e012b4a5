"""Supervised fine-tuning: masked next-token cross-entropy (``jaxpt.models.logprobs.lm_loss``, chunked over the
vocabulary projection)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from ml_collections import ConfigDict

from jaxpt.algorithms.base import AlgorithmParts, StepSpec, shapes_of
from jaxpt.data.sft import (
    SFTDataIterator,
    batch_tokens,
    build_sft_dataset,
    fixed_batches,
    load_records,
    make_batch,
)
from jaxpt.evaluation.metrics import exact_match, lm_metrics
from jaxpt.generation.frontend import Sampler, sampling_config
from jaxpt.models.config import ModelConfig
from jaxpt.models.decoder import abstract_params
from jaxpt.models.factory import model_params_from
from jaxpt.models.hf import save_hf
from jaxpt.models.logprobs import lm_loss
from jaxpt.training.defaults import base_config
from jaxpt.utils.flops import train_flops_per_token


def defaults() -> ConfigDict:
    """Every field of an SFT config with its default (``configs/sft/`` files start from this)."""
    c = base_config("sft")
    c.data = ConfigDict(
        dict(
            train="",  # JSONL / Parquet / a save_to_disk dir: prompt + completion, or messages
            eval="",  # '' = no eval
            seq_len=128,
            packing=True,  # several examples per row (segment ids keep them apart)
            completion_only=True,  # loss on completion tokens (+ EOS) only
        )
    )
    # Greedy exact match on up to N held-out prompts after training (on top of loss/perplexity/accuracy).
    c.eval = ConfigDict(dict(exact_match_examples=0, max_new_tokens=32))
    return c


def loss_chunk_size(given: int, vocab_size: int, tokens: int) -> int:
    """Tokens per block of the vocabulary projection: ``given`` if set, else blocks of ~4M logits (16 MB in
    float32, cache-sized on CPU), and one block (plain logits) when the whole batch is no bigger than that."""
    if given:
        return int(given)
    auto = max(256, (1 << 22) // vocab_size)
    return auto if auto < tokens else tokens


def make_loss_fn(config: ModelConfig, chunk_size: int):
    def loss_fn(params, batch, rng, frozen):
        nll_sum, num_tokens, correct = lm_loss(config, params, batch, chunk_size)
        return nll_sum, num_tokens, {"token_accuracy": correct / jnp.maximum(num_tokens, 1.0)}

    return loss_fn


def make_eval_fn(config: ModelConfig, chunk_size: int):
    def eval_fn(params, batch, frozen):
        nll_sum, num_tokens, correct = lm_loss(config, params, batch, chunk_size, train=False)
        return {"nll_sum": nll_sum, "num_tokens": num_tokens, "correct": correct}

    return eval_fn


def generation_exact_match(
    model_config: ModelConfig, tokenizer: Any, records: list[dict], max_new_tokens: int, prompt_len: int = 64
):
    """``params -> {"exact_match": …}``: greedy completions of held-out prompts vs their reference completions."""
    prompts = [r["prompt"] for r in records]
    refs = [r["completion"] for r in records]
    sampler = Sampler(
        model_config, tokenizer, sampling_config(model_config, tokenizer, max_new_tokens), max_prompt_len=prompt_len
    )

    def run(params) -> dict[str, float]:
        return {"exact_match": exact_match(sampler(params, prompts, jax.random.key(0)).texts, refs)}

    return run


def config_chunk_size(config: ConfigDict, model_config: ModelConfig) -> int:
    """The loss block size a config's training uses (``jaxpt train`` and ``jaxpt plan`` alike)."""
    tokens = config.data.seq_len * config.train.batch_size
    return loss_chunk_size(config.train.loss_chunk_size, model_config.vocab_size, tokens)


def step_spec(config: ConfigDict, model_config: ModelConfig, mesh: Mesh) -> StepSpec:
    """The SFT step from the config alone: ``[batch_size, seq_len]`` rows (the iterator's layout)."""
    b, t = config.train.batch_size, config.data.seq_len
    return StepSpec(
        loss_fn=make_loss_fn(model_config, config_chunk_size(config, model_config)),
        abstract_params=abstract_params(model_config),
        batch=shapes_of(make_batch([], [[] for _ in range(b)], t)),
        layout=f"{b} rows of {t} tokens",
        flops=train_flops_per_token(model_config, t) * b * t,
    )


def build(config: ConfigDict, model_config: ModelConfig, tokenizer: Any, mesh: Mesh) -> AlgorithmParts:
    spec = step_spec(config, model_config, mesh)
    d = config.data
    seq_len = d.seq_len
    train = build_sft_dataset(d.train, tokenizer, seq_len, completion_only=d.completion_only)
    train_iter = SFTDataIterator(
        train,
        config.train.batch_size,
        seq_len,
        seed=config.seed,
        packing=d.packing,
        shuffle=True,
        pad_id=tokenizer.pad_token_id,
    )
    eval_batches = []
    if d.eval:
        examples = build_sft_dataset(d.eval, tokenizer, seq_len, completion_only=d.completion_only)
        eval_batches = fixed_batches(examples, config.train.batch_size, seq_len, d.packing, tokenizer.pad_token_id)
    chunk = config_chunk_size(config, model_config)

    after_eval = None
    em = config.eval.exact_match_examples
    if em and d.eval:
        records = [dict(r) for r in load_records(d.eval).select(range(em))]
        if "prompt" in records[0] and isinstance(records[0]["prompt"], str):
            after_eval = generation_exact_match(model_config, tokenizer, records, config.eval.max_new_tokens)

    def export(params, out_dir):
        save_hf(model_config, jax.device_get(params), out_dir, tokenizer=tokenizer)

    return AlgorithmParts(
        train_iter=train_iter,
        eval_batches=eval_batches,
        loss_fn=spec.loss_fn,
        eval_fn=make_eval_fn(model_config, chunk),
        summarize=lm_metrics,
        abstract_params=spec.abstract_params,
        init_params=lambda shardings: model_params_from(config.model, model_config, shardings, config.seed),
        tokens_in_batch=batch_tokens,
        export=export,
        after_eval=after_eval,
    )
