"""DPO through the shared loop: sharded == single-device, precomputed == in-step reference, loss family, export.

Single-device reference: ``make_mesh`` insists that a mesh uses every device, so the test swaps the loop's
``make_mesh`` for one that builds a (1, 1, 1) mesh on ``jax.devices()[:1]`` (monkeypatch). The *same* loop,
data order, init and optimizer then run on one device; the sharded runs must match it to float tolerance.

Runs skip checkpoint writing (``NoCheckpoints``; checkpointing has its own tests): saving sharded arrays costs
seconds of per-shard compilation on the fake 8-device CPU. Models are tiny random Llamas written with ``save_hf``
from numpy draws (no jitted init: XLA's CPU compile of the random initialisers alone takes seconds), loaded
through ``config.model.path`` as real runs do.
"""

import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpt.config import apply_overrides, load_config
from jaxpt.data.tokenizer import build_char_tokenizer
from jaxpt.losses.preference import DPO_LOSS_TYPES, dpo_loss
from jaxpt.models.decoder import Decoder
from jaxpt.models.factory import model_config_from
from jaxpt.models.hf import load_hf
from jaxpt.models.logprobs import sequence_logprobs
from jaxpt.sharding import make_mesh
from jaxpt.training import loop
from jaxpt.utils.flops import train_flops_per_token
from tests.test_algo_rm import NoCheckpoints, save_random_lm, synthetic_pairs

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(*overrides):
    c = load_config(str(ROOT / "configs/dpo/quickstart.py:tiny"))
    c.model.scratch.update(dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1))
    c.train.update(dict(steps=3, batch_size=8, log_every=1, eval_every=0, checkpoint_every=100, export_hf=False))
    c.optimizer.update(dict(lr=1e-2, warmup_steps=0))
    return apply_overrides(c, list(overrides))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("dpo")
    model_config = model_config_from(tiny_config().model, build_char_tokenizer())
    return dict(
        # a preference a tiny random model learns in a few steps (chosen from "abcde", rejected from "vwxyz")
        train=_write(d / "train.jsonl", synthetic_pairs(320, seed=0)),
        held_out=_write(d / "held_out.jsonl", synthetic_pairs(12, seed=1)),  # 12 pairs: the last batch is padded
        policy=save_random_lm(model_config, str(d / "policy"), seed=0),
        reference=save_random_lm(model_config, str(d / "reference"), seed=1),
    )


def _write(path: pathlib.Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _run(tmp_path, name, files, *overrides, held_out="", single_device=False):
    config = tiny_config(f"model.path={files['policy']}", *overrides)
    config.data.train, config.data.eval = files["train"], held_out
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "Checkpointer", NoCheckpoints)
        if single_device:
            mp.setattr(loop, "make_mesh", lambda d, f, t: make_mesh(1, 1, 1, devices=jax.devices()[:1]))
        result = loop.train(config, str(tmp_path / name))
    with open(tmp_path / name / "metrics.jsonl") as f:
        losses = [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]
    params = jax.tree.map(np.asarray, jax.device_get(result["state"].params))
    return result, losses, params


def _assert_trees_close(a, b, **tol):
    worst = max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    print("max |param difference|", worst)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, err_msg=jax.tree_util.keystr(path), **tol)


@pytest.fixture(scope="module")
def three_runs(files, tmp_path_factory):
    """Three equivalent runs of 3 steps, each with the initial policy as reference:

    - one device, reference = the initial policy re-created by ``AlgorithmParts.frozen``, in-step forward;
    - mesh (2, 2, 2), the same weights given as ``dpo.reference_path``, in-step forward, held-out eval, export;
    - mesh data=8, reference log-probs precomputed before training, 2 accumulated micro-batches of 4 pairs.
    """
    tmp_path = tmp_path_factory.mktemp("dpo_runs")
    assert jax.device_count() == 8
    # Adam's first update is lr * g / (|g| + eps): with the default eps=1e-8, float noise (reduction order differs
    # across meshes) in gradients of ~1e-8 becomes parameter differences of ~lr / 50; eps=1e-6 keeps it ~1e-7.
    common = ("dpo.beta=0.5", "optimizer.lr=3e-3", "optimizer.eps=1e-6", "train.peak_flops=1e12")
    _, single, single_params = _run(tmp_path, "single", files, *common, single_device=True)
    result, sharded, sharded_params = _run(
        tmp_path,
        "222",
        files,
        *common,
        "mesh.data=2",
        "mesh.fsdp=2",
        "mesh.tensor=2",
        f"dpo.reference_path={files['policy']}",
        "train.eval_every=3",
        "train.export_hf=True",
        held_out=files["held_out"],
    )
    _, pre, pre_params = _run(
        tmp_path, "dp8", files, *common, "mesh.data=8", "dpo.precompute_reference=True", "train.grad_accum_steps=2"
    )
    print("losses: single", single, "(2,2,2)", sharded, "data=8 precomputed+accum", pre)
    return (
        tmp_path,
        result,
        dict(single=(single, single_params), sharded=(sharded, sharded_params), pre=(pre, pre_params)),
    )


def test_sharded_and_precomputed_match_single_device_and_rewards_rise(files, three_runs):
    tmp_path, result, runs = three_runs
    (single, single_params), (sharded, sharded_params), (pre, pre_params) = runs["single"], runs["sharded"], runs["pre"]
    # MFU counts the reference forward when it runs in the step (train.peak_flops fixes the peak at 1e12)
    model_config, _ = load_hf(files["policy"])
    seq = tiny_config().data.seq_len
    for name, per_token in (
        ("single", train_flops_per_token(model_config, seq) * 4 / 3),
        ("dp8", train_flops_per_token(model_config, seq)),
    ):
        with open(tmp_path / name / "metrics.jsonl") as f:
            logged = [r for r in map(json.loads, f) if "train/mfu" in r]
        assert logged
        for r in logged:
            np.testing.assert_allclose(r["train/mfu"] * 1e12 / r["train/tokens_per_s"], per_token, rtol=1e-6)
    assert len(single) == 3 and len({round(x, 6) for x in single}) == 3  # the policy moved
    np.testing.assert_allclose(single[0], np.log(2.0), rtol=1e-6)  # policy == reference at step 1
    # Float-level differences only (reduction orders differ; Adam's first update, ~lr * sign(g), amplifies them).
    np.testing.assert_allclose(sharded, single, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(pre, single, rtol=1e-4, atol=1e-6)  # steps 2, 3: cached reference vs a moved policy
    _assert_trees_close(sharded_params, single_params, rtol=1e-4, atol=2e-5)  # atol = lr / 150
    _assert_trees_close(pre_params, single_params, rtol=1e-4, atol=2e-5)

    # Held-out pairs: zero implicit rewards before (policy == reference), chosen ahead after 3 steps.
    before, after = result["eval_before"], result["eval_after"]
    print("eval before", before, "\neval after ", after)
    assert before["rewards/accuracy"] == 0.0 and abs(before["rewards/margin"]) < 1e-6
    np.testing.assert_allclose(before["loss"], np.log(2.0), rtol=1e-6)
    assert after["rewards/margin"] > 0.1 and after["rewards/accuracy"] > 0.8 and after["loss"] < before["loss"]


@pytest.mark.requires_torch
def test_export_runs_in_transformers_with_the_same_logits(three_runs):
    """The (2, 2, 2) run's policy exports as a HF causal LM that transformers runs with the same logits."""
    import torch
    import transformers

    _, result, runs = three_runs
    sharded_params = runs["sharded"][1]
    hf = transformers.AutoModelForCausalLM.from_pretrained(result["export_dir"]).eval()
    config, exported = load_hf(result["export_dir"])
    _assert_trees_close(exported, sharded_params, rtol=0, atol=0)
    tokens = np.random.default_rng(0).integers(3, config.vocab_size, (2, 9))
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(tokens)).logits.numpy()
    got, _ = Decoder(config).apply({"params": sharded_params}, jnp.asarray(tokens))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)


def test_per_pair_losses_match_dpo_loss_and_padding_is_masked(files):
    """The step's per-pair evaluation equals ``dpo_loss`` on the real pairs for every loss type; padding pairs
    (an eval batch's tail) get weight 0 and finite values; the chunked vocabulary projection equals the plain
    one; precomputed reference log-probs equal the in-step ones for a reference != the policy."""
    from jaxpt.algorithms import dpo
    from jaxpt.algorithms.common.preference import load_pairs, pair_valid
    from jaxpt.data.preference import fixed_preference_batches

    c = tiny_config()
    tok = build_char_tokenizer()
    config, policy = load_hf(files["policy"])
    _, reference = load_hf(files["reference"])
    records = [json.loads(line) for line in open(files["held_out"])][:5]
    pairs0 = load_pairs(records, tok, c.data)
    batch = {k: jnp.asarray(v) for k, v in fixed_preference_batches(pairs0, 8, 16, 0)[0].items()}
    logps_fn = jax.jit(lambda p, chunk: sequence_logprobs(config, p, batch, chunk), static_argnums=1)
    logps, ref_logps = logps_fn(policy, 0), logps_fn(reference, 0)
    np.testing.assert_allclose(logps_fn(policy, 7), logps, rtol=1e-5)  # 7-token chunks, padded at the end
    # The shared-prompt layout (prompt once, completions on its KV cache): same log-probs, same gradient.
    shared = {k: jnp.asarray(v) for k, v in fixed_preference_batches(pairs0, 8, 16, 0, shared_prompt=True)[0].items()}
    assert shared["prompt_tokens"].shape[0] == 8 and shared["completion_tokens"].shape[0] == 16

    def weighted(p, b):
        return jnp.sum(sequence_logprobs(config, p, b, 0) * jnp.arange(1.0, 17.0))

    np.testing.assert_allclose(jax.jit(lambda p: sequence_logprobs(config, p, shared, 0))(policy), logps, rtol=1e-5)
    g_flat, g_shared = (jax.jit(jax.grad(weighted))(policy, b) for b in (batch, shared))
    for a, b in zip(jax.tree.leaves(g_flat), jax.tree.leaves(g_shared), strict=True):  # float32, other sum order
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(b))))
    # precompute_reference (on a data=8 mesh) caches exactly the in-step reference log-probs in the batches
    pairs = load_pairs(records, tok, c.data)
    mesh = make_mesh(8, 1, 1)
    with jax.set_mesh(mesh), nn.logical_axis_rules([tuple(r) for r in c.mesh.rules]):
        dpo.precompute_reference(config, reference, [pairs], 8, 16, 0, mesh, 0)
    cached = fixed_preference_batches(pairs, 8, 16, 0)[0]["ref_logps"]
    real_rows = [0, 1, 2, 3, 4, 8, 9, 10, 11, 12]
    np.testing.assert_allclose(cached[real_rows], np.asarray(ref_logps)[real_rows], rtol=1e-6)
    valid = pair_valid(batch)
    np.testing.assert_array_equal(valid, [1, 1, 1, 1, 1, 0, 0, 0])
    lengths = batch["completion_lengths"]
    all_kwargs = {}
    for loss_type in DPO_LOSS_TYPES:
        c.dpo.loss_type = loss_type
        c.dpo.label_smoothing = 0.1 if loss_type in ("sigmoid", "robust") else 0.0
        all_kwargs[loss_type] = dpo.loss_kwargs(c.dpo)

    @jax.jit  # one compilation for every loss type: per-pair losses, metrics and d(sum of real pairs)/d logps
    def per_pair(lp):
        out = {}
        for name, kw in all_kwargs.items():

            def total(x, kw=kw):
                return jnp.sum(jnp.where(valid > 0, dpo.pair_losses(x, ref_logps, lengths, kw, valid)[0], 0))

            out[name] = (*dpo.pair_losses(lp, ref_logps, lengths, kw, valid), jax.grad(total)(lp))
        return out

    for loss_type, (loss, metrics, grad) in per_pair(logps).items():
        want, want_metrics = dpo_loss(
            logps[:5],
            logps[8:13],
            ref_logps[:5],
            ref_logps[8:13],
            chosen_lengths=lengths[:5],
            rejected_lengths=lengths[8:13],
            **all_kwargs[loss_type],
        )
        # padding pairs too stay finite (ORPO's log(1 - p) at p = 1), with zero gradient
        assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad)), loss_type
        assert not np.any(np.asarray(grad)[[5, 6, 7, 13, 14, 15]]) and np.any(np.asarray(grad)[:5]), loss_type
        np.testing.assert_allclose(jnp.sum(loss * valid) / jnp.sum(valid), want, rtol=1e-5, err_msg=loss_type)
        for k, v in want_metrics.items():
            got = jnp.sum(metrics[k] * valid) / 5
            np.testing.assert_allclose(got, v, rtol=1e-5, atol=1e-6, err_msg=f"{loss_type} {k}")


def test_bad_dpo_config_fails_early(files, tmp_path):
    with pytest.raises(ValueError, match="loss_type"):
        _run(tmp_path, "bad", files, "dpo.loss_type=kto")
    with pytest.raises(ValueError, match="grad_accum_steps"):
        _run(tmp_path, "bad2", files, "train.grad_accum_steps=3")


def test_shared_prompt_layout_with_scanned_rematerialised_layers():
    """Shared-prompt log-probs and gradients equal the flat layout's with scan over layers and remat (the
    KV cache is stacked per layer; the prompt pass's cache offset is traced inside remat)."""
    from jaxpt.data.preference import fixed_preference_batches
    from jaxpt.models.config import ModelConfig
    from jaxpt.models.decoder import init_params

    rng = np.random.default_rng(0)
    keys = ("prompt_ids", "chosen_ids", "rejected_ids")
    pairs = [
        {k: rng.integers(3, 50, n).astype(np.int32) for k, n in zip(keys, lens, strict=True)}
        for lens in [(4, 3, 5), (1, 9, 2), (7, 8, 1), (2, 4, 6)]
    ]
    hf = dict(
        model_type="qwen3",
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
    )
    config = ModelConfig.from_hf(hf, scan_layers=True, remat="full")
    params = init_params(config, jax.random.key(0))
    batches = [fixed_preference_batches(pairs, 4, 12, 0, shared_prompt=s)[0] for s in (False, True)]

    def weighted(p, b):
        return jnp.sum(sequence_logprobs(config, p, b, 0) * jnp.arange(1.0, 9.0))

    (a, ga), (b, gb) = (jax.jit(jax.value_and_grad(weighted))(params, x) for x in batches)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(y))))
