"""Trainable-parameter masks (train.trainable / train.frozen): frozen leaves get no gradient and no optimizer
state and stay bit-identical, the loss is the unmasked one, masked runs resume exactly (8 CPU devices)."""

import json
import math

import jax
import numpy as np
import optax
import pytest

from jaxpt.algorithms.sft import make_loss_fn
from jaxpt.models.decoder import abstract_params
from jaxpt.sharding import make_mesh, shard_batch, unbox
from jaxpt.training.loop import train
from jaxpt.training.trainable import count_params, mask_from_config, param_paths, trainable_mask
from tests.tiny_models import sft_batches, sft_run_config, sft_setup, tiny_llama_config

MESH = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}  # sharded params and optimizer state
QUIET = {"data.eval": "", "train.export_hf": False, "train.peak_flops": 1e12, "train.log_every": 1}


def _run(workdir, steps=4, **overrides):
    return train(sft_run_config(**MESH, **QUIET, **{"train.steps": steps, **overrides}), str(workdir))


def _leaves(params) -> dict[str, np.ndarray]:
    return dict(zip(param_paths(params), jax.tree.leaves(jax.device_get(params)), strict=True))


def _losses(workdir) -> dict[int, float]:
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def _moments(opt_state) -> list[int]:
    """Sizes of the optimizer state's array leaves (Adam's moments; the scalar counts left out)."""
    return [x.size for x in jax.tree.leaves(opt_state) if x.ndim]


@pytest.fixture(scope="module")
def initial(tmp_path_factory):
    """The params a run starts from (the loop's own init, unchanged: no step taken)."""
    out = train(sft_run_config(**MESH, **QUIET), str(tmp_path_factory.mktemp("init")), stop_after=0)
    return _leaves(out["state"].params)


@pytest.fixture(scope="module")
def unmasked_losses(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("unmasked")
    _run(workdir, **{"train.grad_accum_steps": 2})
    return _losses(workdir)


def _check_frozen(out, initial, frozen: set[str]):
    final = _leaves(out["state"].params)
    assert set(final) == set(initial) and frozen < set(final)
    for path in final:
        if path in frozen:
            assert final[path].tobytes() == initial[path].tobytes(), f"{path} changed"  # bit-identical
        else:
            assert not np.array_equal(final[path], initial[path]), f"{path} did not train"
    trained = sum(v.size for k, v in final.items() if k not in frozen)
    moments = _moments(out["state"].opt_state)
    assert len(moments) == 2 * (len(final) - len(frozen)) and sum(moments) == 2 * trained  # none for frozen leaves


EMBED_FROZEN = {"train.frozen": ("embed/.*",), "train.grad_accum_steps": 2}


@pytest.fixture(scope="module")
def embed_frozen(tmp_path_factory):
    """4 steps with the (tied) embeddings frozen, gradient accumulation over 2 micro-batches."""
    workdir = tmp_path_factory.mktemp("embed_frozen")
    return _run(workdir, **EMBED_FROZEN), workdir


def test_frozen_embeddings_stay_bit_identical(initial, unmasked_losses, embed_frozen):
    out, workdir = embed_frozen
    _check_frozen(out, initial, {"embed/embedding"})
    # the first step's loss is the loss of the same params unmasked; later ones differ (embeddings do not move)
    losses, ref = _losses(workdir), unmasked_losses
    np.testing.assert_allclose(losses[1], ref[1], rtol=1e-6)
    assert losses[4] != ref[4]
    n_params = sum(v.size for v in initial.values())
    trained = n_params - initial["embed/embedding"].size
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert rows[0]["trainable_params"] == trained and rows[0]["total_params"] == n_params


def test_masked_run_resumes_exactly(tmp_path, initial, embed_frozen, capsys):
    full, full_dir = embed_frozen
    cfg = sft_run_config(**MESH, **QUIET, **EMBED_FROZEN, **{"train.steps": 4})
    train(cfg, str(tmp_path), stop_after=2)  # "preempted" after 2 of 4 steps (checkpointed there)
    resumed = train(cfg, str(tmp_path), resume=True)
    assert resumed["final_step"] == full["final_step"] == 4
    a, b = _losses(full_dir), _losses(tmp_path)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert a == b
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(full["state"]), jax.device_get(resumed["state"]))
    n_params = sum(v.size for v in initial.values())
    trained = n_params - initial["embed/embedding"].size
    assert f"parameters: {trained:,} of {n_params:,} train ({100 * trained / n_params:.3g}%)" in capsys.readouterr().out


def test_only_one_layer_trains(tmp_path, initial):
    out = _run(tmp_path, steps=3, **{"train.trainable": ("layers_1/.*",)})
    _check_frozen(out, initial, {p for p in initial if not p.startswith("layers_1/")})


def test_grad_norm_and_loss_count_only_what_trains(tiny_sft_examples):
    """One step on one device against ``jax.grad`` of the whole loss: the loss is the unmasked loss, grad_norm
    is the norm of the trainable leaves' gradients only."""
    config = tiny_llama_config()
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    batch = sft_batches(tiny_sft_examples, n=1)[0]
    mask = trainable_mask(unbox(abstract_params(config)), trainable=("layers_0/mlp/.*", "final_norm/.*"))
    state, step, _ = sft_setup(mesh, config, trainable=mask)
    params = jax.device_get(state.params)
    loss_fn = make_loss_fn(config, 64)
    loss_sum, weight, _ = jax.jit(loss_fn)(params, batch, None, None)
    grads = jax.jit(jax.grad(lambda p: loss_fn(p, batch, None, None)[0] / weight))(params)
    expected = optax.tree.norm([g for g, m in zip(jax.tree.leaves(grads), jax.tree.leaves(mask), strict=True) if m])
    with jax.set_mesh(mesh):
        _, metrics = step(state, shard_batch(batch, mesh), None)
    np.testing.assert_allclose(float(metrics["loss"]), float(loss_sum / weight), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["grad_norm"]), float(expected), rtol=1e-5)
    assert float(metrics["grad_norm"]) < float(optax.tree.norm(grads))


# --------------------------------------------------------------------------------------------- the mask itself


def _abstract(**kw):
    return unbox(abstract_params(tiny_llama_config(**kw)))


def _flags(params, mask) -> dict[str, bool]:
    return dict(zip(param_paths(params), jax.tree.leaves(mask), strict=True))


def test_patterns_match_whole_paths_and_frozen_wins():
    params = _abstract()
    mask = _flags(params, trainable_mask(params, ("layers_.*",), (".*/attn/.*",)))
    assert mask["layers_0/mlp/up/kernel"] and mask["layers_1/input_norm/scale"]
    assert not mask["layers_0/attn/q/kernel"] and not mask["embed/embedding"] and not mask["lm_head/kernel"]
    trained, total = count_params(params, trainable_mask(params, ("lm_head/kernel",)))
    assert trained == 64 * 96 and total == sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    # the defaults train everything: no mask at all (optimizer and step unmasked, as before)
    assert mask_from_config(sft_run_config().train, params) is None


def test_a_pattern_that_matches_nothing_is_named_with_real_paths(tmp_path):
    with pytest.raises(ValueError, match=r"train.frozen pattern 'embedding/.\*' matches no parameter.*embed/embedding"):
        _run(tmp_path, **{"train.frozen": ("embedding/.*",)})
    params = _abstract(scan_layers=True)  # stacked layers: a per-layer pattern says why it cannot match
    with pytest.raises(ValueError, match=r"'layers_0/.\*' matches no parameter \(model.scan_layers stacks"):
        trainable_mask(params, ("layers_0/.*",))
    assert jax.tree.leaves(trainable_mask(params, ("layers/mlp/.*",))).count(True) == 3
    with pytest.raises(ValueError, match="no parameter trains"):
        trainable_mask(params, (".*",), (".*",))
    with pytest.raises(ValueError, match="must be a list of regexes"):
        trainable_mask(params, "embed/.*")
    with pytest.raises(ValueError, match=r"train.trainable: 'embed\[' is not a regular expression"):
        trainable_mask(params, ("embed[",))


def test_an_algorithm_mask_may_be_a_prefix_and_the_config_narrows_it():
    """E.g. PPO's {"policy": …, "value": …}: the algorithm allows the value model only, the config freezes
    its embeddings on top."""
    params = {"policy": _abstract(), "value": _abstract()}
    allowed = lambda p: {"policy": False, "value": True}  # noqa: E731
    mask = trainable_mask(params, (".*",), ("value/embed/.*",), allowed=allowed)
    flags = _flags(params, mask)
    assert not any(v for k, v in flags.items() if k.startswith("policy/"))
    assert flags["value/lm_head/kernel"] and not flags["value/embed/embedding"]
