"""GRPO on the shared loop: rollouts sample from the current weights, sampler log-probs line up with the
training rows, the three loss aggregations are exact under micro-batching, runs log / checkpoint / export."""

import functools
import json
import os

import jax
import numpy as np
import pytest

from jaxpt.algorithms import grpo
from jaxpt.algorithms.common import rollout as rollout_lib
from jaxpt.algorithms.common.rollout import (
    PromptIterator,
    Samples,
    minibatches,
    response_logprobs,
    shared_prompt_rows,
    training_rows,
)
from jaxpt.algorithms.grpo import make_grpo_loss_fn
from jaxpt.config import load_config
from jaxpt.data.tokenizer import build_char_tokenizer
from jaxpt.losses.lm import token_logprobs
from jaxpt.losses.rl import GRPO_LOSS_TYPES, grpo_loss
from jaxpt.models.config import ModelConfig
from jaxpt.models.decoder import Decoder
from jaxpt.models.factory import model_config_from
from jaxpt.models.hf import load_hf, save_hf
from jaxpt.models.orbax_io import load_orbax
from tests.rl_helpers import random_decoder_params, train_recording_sampler, trees_equal

TINY = "configs/grpo/arithmetic.py:tiny"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two GRPO steps of the :tiny preset on the 8-device mesh, from a HF checkpoint, every sampler call spied."""
    tmp = tmp_path_factory.mktemp("grpo")
    tokenizer = build_char_tokenizer()
    config = load_config(TINY)
    model_config = model_config_from(config.model, tokenizer)
    policy_dir = str(tmp / "policy")  # a seed the run would not draw itself: the weights really are loaded
    save_hf(model_config, random_decoder_params(model_config, 7), policy_dir, tokenizer=tokenizer)
    config.model.path = policy_dir
    config.tokenizer.path, config.tokenizer.builtin = policy_dir, ""
    config.data.eval = ""
    config.train.update(dict(steps=2, checkpoint_every=1, peak_flops=1e12))
    config.grpo.mini_batch_size = 32  # 8 prompts per minibatch: shared-prompt rows on the 8-device mesh

    workdir = str(tmp / "run")
    result, calls = train_recording_sampler(config, workdir, outputs=True)
    return dict(config=config, model_config=model_config, policy_dir=policy_dir, workdir=workdir, calls=calls) | {
        "result": result
    }


def test_rollouts_sample_from_the_current_weights(run):
    calls = run["calls"]
    assert len(calls) == 2 and all(c["sampling"].temperature == 1.0 for c in calls)
    _, loaded = load_hf(run["policy_dir"])
    assert trees_equal(calls[0]["params"], loaded)  # step 1 samples from the loaded checkpoint
    _, after_step1, _ = load_orbax(run["workdir"], step=1)
    assert trees_equal(calls[1]["params"], after_step1)  # step 2 from the weights the step-1 updates produced
    assert not trees_equal(calls[1]["params"], calls[0]["params"])
    final = jax.device_get(run["result"]["state"].params)
    assert not trees_equal(final, after_step1)
    # G=4 completions per prompt, rows of a prompt contiguous
    tokens = calls[0]["tokens"]
    assert tokens.shape[0] == 8 * 4 and all(np.array_equal(tokens[i], tokens[i - i % 4]) for i in range(32))


def test_sampler_logprobs_match_the_scoring_pass(run):
    """The [prompt | completion] training rows put each sampled token where the sampler generated it."""
    p = run["config"].rollout.max_prompt_len
    score = jax.jit(response_logprobs, static_argnums=(0, 3, 4))
    for call in run["calls"]:
        out = call["out"]
        s = Samples(
            prompt_tokens=call["tokens"],
            prompt_mask=call["mask"],
            tokens=np.asarray(out.tokens),
            logprobs=np.asarray(out.logprobs),
            mask=np.asarray(out.mask, np.float32),
            lengths=np.asarray(out.lengths),
            finished=np.zeros(len(out.lengths), bool),
            completions=[],
            records=[],
            prompts=[],
        )
        rows = training_rows(s)
        assert (call["mask"] == 0).any()  # left prompt padding occurs
        logp, _ = score(run["model_config"], call["params"], rows, p, 1.0)
        np.testing.assert_allclose(np.asarray(logp) * s.mask, s.logprobs * s.mask, atol=2e-4)
        # the same with each prompt stored once (rows reordered sample-major)
        shared, order = shared_prompt_rows(s, 4)
        assert shared["prompt_tokens"].shape[0] == 8 and sorted(order) == list(range(32))
        logp, _ = score(run["model_config"], call["params"], shared, p, 1.0)
        np.testing.assert_allclose(np.asarray(logp) * s.mask[order], (s.logprobs * s.mask)[order], atol=2e-4)


def test_training_rows_layout():
    """Left-padded prompt, completion stopped at EOS: positions run on, padding is segment 0, the targets
    at inputs P-1 .. P+N-2 are the sampled tokens."""
    s = Samples(
        prompt_tokens=np.array([[0, 0, 1, 5, 6], [1, 7, 8, 9, 10]], np.int32),
        prompt_mask=np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], np.int32),
        tokens=np.array([[11, 2, 0], [12, 13, 14]], np.int32),  # row 0: EOS (2) then pad
        logprobs=np.zeros((2, 3), np.float32),
        mask=np.array([[1, 1, 0], [1, 1, 1]], np.float32),
        lengths=np.array([2, 3]),
        finished=np.array([True, False]),
        completions=[],
        records=[],
        prompts=[],
    )
    rows = training_rows(s)
    np.testing.assert_array_equal(rows["inputs"], [[0, 0, 1, 5, 6, 11, 2], [1, 7, 8, 9, 10, 12, 13]])
    np.testing.assert_array_equal(rows["targets"][:, 4:], s.tokens)
    np.testing.assert_array_equal(rows["segment_ids"], [[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(rows["positions"], [[0, 0, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 6]])
    np.testing.assert_array_equal(rows["response_mask"], s.mask)


def test_run_logs_checkpoints_and_exports(run):
    lines = [json.loads(x) for x in open(os.path.join(run["workdir"], "metrics.jsonl"))]
    steps = [x for x in lines if "train/reward" in x]
    assert [x["step"] for x in steps] == [1, 2]
    for key in (
        "reward",
        "reward/arithmetic",
        "reward/format",
        "kl",
        "clip_ratio",
        "entropy",
        "response_length",
        "loss",
        "grad_norm",
    ):
        assert all(np.isfinite(x[f"train/{key}"]) for x in steps), key
    assert abs(steps[0]["train/kl"]) < 1e-4  # the first rollout comes from the reference itself
    assert steps[0]["train/entropy"] > 0
    # updates per step: num_iterations (2) x rows (8 prompts x G=4) / mini_batch_size (32)
    assert run["result"]["final_step"] == 2 * 2 * (32 // 32)
    assert os.path.exists(os.path.join(run["result"]["export_dir"], "model.safetensors"))


@functools.cache
def _loss_model():
    config = ModelConfig.from_hf(
        dict(
            model_type="llama",
            vocab_size=40,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=64,
        )
    )
    return config, random_decoder_params(config, 0)


def _loss_case(loss_type):
    config, params = _loss_model()
    rng = np.random.default_rng(0)
    r, p, n = 4, 3, 5
    prompt_mask = np.ones((r, p), np.int32)
    prompt_mask[1, 0] = 0
    lengths = np.array([5, 2, 4, 1])
    mask = (np.arange(n)[None] < lengths[:, None]).astype(np.float32)
    s = Samples(
        prompt_tokens=rng.integers(3, 40, (r, p)).astype(np.int32) * prompt_mask,
        prompt_mask=prompt_mask,
        tokens=rng.integers(3, 40, (r, n)).astype(np.int32),
        logprobs=np.zeros((r, n), np.float32),
        mask=mask,
        lengths=lengths,
        finished=np.zeros(r, bool),
        completions=[],
        records=[],
        prompts=[],
    )
    batch = training_rows(s) | {
        "old_logprobs": (rng.normal(size=(r, n)) * 0.1 - 3.5).astype(np.float32) * mask,
        "ref_logprobs": (rng.normal(size=(r, n)) * 0.1 - 3.5).astype(np.float32) * mask,
        "advantages": rng.normal(size=(r,)).astype(np.float32),
    }
    g = grpo.grpo_config(load_config(TINY))
    g.update(dict(loss_type=loss_type, beta=0.1, epsilon_low=0.1, epsilon_high=0.3))
    return config, params, batch, g, p, n


def test_shared_prompt_rows_give_the_flat_rows_loss_and_gradient():
    """Two prompts x G=2 (one left-padded, completions of different lengths): the loss and its gradient on
    shared-prompt rows equal those on the flat rows, also as 2 strided micro-batches; minibatches keep groups."""
    config, params = _loss_model()
    rng = np.random.default_rng(1)
    g_size, p, n = 2, 3, 5
    prompt_mask = np.repeat(np.array([[0, 1, 1], [1, 1, 1]], np.int32), g_size, axis=0)
    lengths = np.array([5, 2, 4, 1])
    mask = (np.arange(n)[None] < lengths[:, None]).astype(np.float32)
    s = Samples(
        prompt_tokens=np.repeat(rng.integers(3, 40, (2, p)).astype(np.int32), g_size, axis=0) * prompt_mask,
        prompt_mask=prompt_mask,
        tokens=rng.integers(3, 40, (4, n)).astype(np.int32),
        logprobs=np.zeros((4, n), np.float32),
        mask=mask,
        lengths=lengths,
        finished=np.zeros(4, bool),
        completions=[],
        records=[],
        prompts=[],
    )
    per_row = {
        "old_logprobs": (rng.normal(size=(4, n)) * 0.1 - 3.5).astype(np.float32) * mask,
        "ref_logprobs": (rng.normal(size=(4, n)) * 0.1 - 3.5).astype(np.float32) * mask,
        "advantages": rng.normal(size=(4,)).astype(np.float32),
    }
    flat = training_rows(s) | per_row
    shared, order = shared_prompt_rows(s, g_size)
    shared |= {k: v[order] for k, v in per_row.items()}
    g = grpo.grpo_config(load_config(TINY))
    g.update(dict(beta=0.1))
    loss_fn = make_grpo_loss_fn(config, g, p, n, 0.7)

    def loss(q, b):
        total, weight, _ = loss_fn(q, b, None, None)
        return total / weight

    (a, ga), (b, gb) = (jax.jit(jax.value_and_grad(loss))(params, x) for x in (flat, shared))
    np.testing.assert_allclose(a, b, rtol=1e-5)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(y))))
    # strided micro-batches of shared rows (prompts m, m + 2, ...; rows m, m + 2, ...) keep each row's prompt
    halves = [{k: v[i::2] for k, v in shared.items()} for i in range(2)]
    parts = [jax.jit(loss_fn)(params, h, None, None) for h in halves]
    np.testing.assert_allclose(sum(x[0] for x in parts) / sum(x[1] for x in parts), a, rtol=1e-5)
    # minibatches of whole groups, still sample-major: row r continues prompt r % prompts
    for mb in minibatches(shared, 2, 2, seed=0, step=0):
        assert mb["prompt_tokens"].shape[0] == 1 and mb["completion_tokens"].shape[0] == 2
        home = [i for i in range(2) if np.array_equal(shared["prompt_tokens"][i], mb["prompt_tokens"][0])]
        want = {tuple(shared["completion_tokens"][k]) for k in range(4) if k % 2 == home[0]}
        assert {tuple(r) for r in mb["completion_tokens"]} == want
    with pytest.raises(ValueError, match="whole groups"):
        minibatches(shared, 3, 1, seed=0, step=0)


@pytest.mark.parametrize("loss_type", GRPO_LOSS_TYPES)
def test_loss_fn_is_grpo_loss_and_exact_under_micro_batching(loss_type):
    config, params, batch, g, p, n = _loss_case(loss_type)
    temperature = 0.7
    loss_fn = jax.jit(make_grpo_loss_fn(config, g, p, n, temperature))
    loss_sum, weight, metrics = loss_fn(params, batch, None, None)
    # independent log-probs: full logits of the rows, completion positions P-1 .. P+N-2
    forward = jax.jit(lambda q, b: Decoder(config).apply({"params": q}, b["inputs"], b["positions"], b["segment_ids"]))
    logits, _ = forward(params, batch)
    logp = token_logprobs(logits[:, p - 1 :] / temperature, batch["targets"][:, p - 1 :])
    want, _ = grpo_loss(
        logp,
        batch["old_logprobs"],
        batch["ref_logprobs"],
        batch["advantages"],
        batch["response_mask"],
        epsilon_low=0.1,
        epsilon_high=0.3,
        beta=0.1,
        loss_type=loss_type,
        max_completion_length=n,
    )
    np.testing.assert_allclose(loss_sum / weight, want, rtol=1e-5)
    assert 0 < float(metrics["entropy"]) <= np.log(40) + 1e-4
    # two micro-batches: sum of loss sums / sum of weights is the full-batch loss (what grad accumulation does)
    halves = [{k: v[i::2] for k, v in batch.items()} for i in range(2)]
    parts = [loss_fn(params, h, None, None) for h in halves]
    combined = sum(x[0] for x in parts) / sum(x[1] for x in parts)
    np.testing.assert_allclose(combined, loss_sum / weight, rtol=1e-5)


def test_prompt_iterator_resumes_with_its_extra_state():
    records = [{"prompt": f"{i}+1="} for i in range(10)]
    it = PromptIterator(records, 4, seed=3)
    first = [next(it) for _ in range(2)]
    it.extra["kl_coef"] = 0.123
    state = json.loads(json.dumps(it.get_state()))  # what the checkpoint stores (JSON)
    rest = [next(it) for _ in range(3)]
    again = PromptIterator(records, 4, seed=3)
    again.set_state(state)
    assert again.extra == {"kl_coef": 0.123}
    assert [next(again) for _ in range(3)] == rest
    seen = [r["prompt"] for b in first + rest[:1] for r in b]  # 12 prompts: epoch 0 covers all 10
    assert set(seen[:10]) == {r["prompt"] for r in records}


def test_config_errors():
    config = load_config(TINY)
    config.grpo.loss_type = "nope"
    with pytest.raises(ValueError, match="loss_type"):
        grpo.grpo_config(config)
    config = load_config(TINY)
    config.grpo.typo = 1
    with pytest.raises(ValueError, match="unknown config field 'grpo.typo'"):
        grpo.grpo_config(config)
    config = load_config(TINY)
    config.rollout.temprature = 1.0
    with pytest.raises(
        ValueError, match="unknown config field 'rollout.temprature'; did you mean 'rollout.temperature'"
    ):
        rollout_lib.rollout_config(config)
