"""Checkpointer (Orbax) round trips, sharded restore, retention, corruption; workdir guard."""

import json
import logging
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from jaxpt.sharding import DEFAULT_RULES, make_mesh, param_shardings, replicated
from jaxpt.training.checkpoint import Checkpointer, CheckpointError
from jaxpt.training.workdir import WorkdirError, checkpoint_dir, prepare_workdir


def _state(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {"dense": {"kernel": jax.random.normal(k1, (8, 4)), "bias": jnp.arange(4.0)}}
    opt = optax.adam(1e-2)
    opt_state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = opt.update(grads, opt_state, params)  # non-trivial mu / nu / count
    return {
        "params": params,
        "opt_state": opt_state,
        "step": jnp.asarray(7, jnp.int32),
        "rng": k2,  # typed PRNG key
        "rng_data": jax.random.key_data(k2),  # raw uint32 key
    }


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _assert_same(a, b):
    a_leaves, a_def = jax.tree.flatten(a)
    b_leaves, b_def = jax.tree.flatten(b)
    assert a_def == b_def
    for x, y in zip(a_leaves, b_leaves, strict=True):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("async_save", [True, False])
def test_round_trip(tmp_path, async_save):
    state = _state()
    data_state = {"epoch": 1, "position": 123, "shard": "train-00001"}
    with Checkpointer(tmp_path, save_every=5, keep=3, async_save=async_save) as ckpt:
        assert ckpt.latest_step() is None
        assert not ckpt.maybe_save(3, state, data_state)  # not due
        assert ckpt.maybe_save(5, state, data_state)
        ckpt.wait()
        assert ckpt.latest_step() == 5
    # a fresh Checkpointer (as after a restart) finds and restores it
    with Checkpointer(tmp_path, save_every=5, keep=3) as ckpt:
        restored, restored_data = ckpt.restore(None, _abstract(state))
    _assert_same(restored, state)
    assert isinstance(restored["opt_state"][0], optax.ScaleByAdamState)
    assert restored["step"].dtype == jnp.int32
    assert restored_data == data_state
    # the restored key generates the same numbers
    sample = lambda key: np.asarray(jax.random.uniform(key, (3,)))
    np.testing.assert_array_equal(sample(restored["rng"]), sample(state["rng"]))


def test_sharded_restore_onto_a_different_mesh(tmp_path):
    class Toy(nn.Module):
        @nn.compact
        def __call__(self, x):
            named = nn.with_logical_partitioning
            w = self.param("w", named(nn.initializers.normal(1.0), ("embed", "mlp")), (x.shape[-1], 16))
            b = self.param("b", named(nn.initializers.normal(1.0), ("mlp",)), (16,))
            return x @ w + b

    x = jnp.ones((1, 8))
    abstract_boxed = jax.eval_shape(Toy().init, jax.random.key(0), x)

    def init_on(mesh):
        shardings = param_shardings(abstract_boxed, mesh, DEFAULT_RULES)
        variables = jax.jit(Toy().init, out_shardings=shardings)(jax.random.key(0), x)
        return nn.meta.unbox(variables)["params"], nn.meta.unbox(shardings)["params"]

    saved, _ = init_on(make_mesh(8, 1, 1))
    state = {"params": saved, "step": jnp.asarray(10, jnp.int32)}
    with Checkpointer(tmp_path, save_every=10, keep=1) as ckpt:
        assert ckpt.maybe_save(10, state, {"position": 0})

    mesh = make_mesh(1, 4, 2)
    _, target_shardings = init_on(mesh)
    abstract = {
        "params": jax.tree.map(
            lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s), saved, target_shardings
        ),
        "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated(mesh)),
    }
    with Checkpointer(tmp_path, save_every=10, keep=1) as ckpt:
        restored, _ = ckpt.restore(10, abstract)
    w = restored["params"]["w"]
    assert w.sharding == NamedSharding(mesh, PartitionSpec("fsdp", "tensor"))
    assert {s.data.shape for s in w.addressable_shards} == {(2, 8)}
    assert restored["step"].sharding.is_fully_replicated
    _assert_same(restored, state)


def test_keep_last_k(tmp_path):
    state = {"w": jnp.ones(3)}
    with Checkpointer(tmp_path, save_every=2, keep=2) as ckpt:
        saved = [s for s in range(1, 10) if ckpt.maybe_save(s, state, {"position": s})]
        assert saved == [2, 4, 6, 8]
        assert ckpt.maybe_save(9, state, {"position": 9}, force=True)  # final save off the schedule
        assert not ckpt.maybe_save(9, state, {"position": 9}, force=True)  # never twice, never backwards
        assert not ckpt.maybe_save(4, state, {"position": 4}, force=True)
        ckpt.wait()
        assert ckpt.all_steps() == [8, 9]
        assert sorted(os.listdir(tmp_path)) == ["8", "9"]
        _, data_state = ckpt.restore(8, _abstract(state))
        assert data_state == {"position": 8}


def test_keep_last_k_and_best(tmp_path):
    state = {"w": jnp.ones(3)}
    eval_loss = {2: 5.0, 4: 1.0, 6: 3.0, 8: float("nan"), 10: 4.0}
    kept = {}
    with Checkpointer(tmp_path, save_every=2, keep=2, keep_best=1, best_metric="eval_loss") as ckpt:
        for step in range(2, 14, 2):
            metrics = {"eval_loss": eval_loss[step], "eval_acc": 0.5} if step in eval_loss else None
            assert ckpt.maybe_save(step, state, {"position": step}, metrics=metrics)
            ckpt.wait()
            kept[step] = ckpt.all_steps()
        assert ckpt.best_step() == 4
    # step 4 (best loss) survives; otherwise only the 2 latest; NaN is never "best"; 12 has no metric.
    assert kept[6] == [4, 6]
    assert kept[8] == [4, 6, 8]
    assert kept[10] == [4, 8, 10]
    assert kept[12] == [4, 10, 12]
    # the ranking survives a restart: a worse eval does not evict step 4, a better one does
    with Checkpointer(tmp_path, save_every=2, keep=2, keep_best=1, best_metric="eval_loss") as ckpt:
        assert ckpt.best_step() == 4
        ckpt.maybe_save(14, state, {}, metrics={"eval_loss": 2.0})
        ckpt.wait()
        assert ckpt.all_steps() == [4, 12, 14]
        ckpt.maybe_save(16, state, {}, metrics={"eval_loss": 0.5})
        ckpt.wait()
        assert ckpt.all_steps() == [14, 16]
        assert ckpt.best_step() == 16


def test_best_max_mode(tmp_path):
    state = {"w": jnp.ones(3)}
    kwargs = dict(save_every=1, keep=1, keep_best=2, best_metric="acc", best_mode="max")
    with Checkpointer(tmp_path, **kwargs) as ckpt:
        for step, acc in enumerate([0.3, 0.9, 0.1, 0.8, 0.2], start=1):
            ckpt.maybe_save(step, state, {}, metrics={"acc": acc})
            ckpt.wait()
        assert ckpt.all_steps() == [2, 4, 5]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="together"):
        Checkpointer(tmp_path, save_every=1, keep=1, keep_best=2)
    with pytest.raises(ValueError, match="keep must be >= 1"):
        Checkpointer(tmp_path, save_every=1, keep=0)


# A failed tensorstore read leaves callbacks that fire after Orbax's event loop closed: harmless noise.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_missing_and_corrupt_checkpoint(tmp_path):
    state = _state()
    with Checkpointer(tmp_path, save_every=1, keep=3, async_save=False) as ckpt:
        with pytest.raises(FileNotFoundError, match="no checkpoint to restore"):
            ckpt.restore(None, _abstract(state))
        ckpt.maybe_save(1, state, {"position": 1})
        ckpt.maybe_save(2, state, {"position": 2})
        with pytest.raises(FileNotFoundError, match=r"step 5 .*available: \[1, 2\]"):
            ckpt.restore(5, _abstract(state))
    # truncate every array data file of step 2 (a crash or a full disk mid-copy)
    truncated = 0
    for root, _, files in os.walk(tmp_path / "2" / "state"):
        if os.path.basename(root) == "d":
            for name in files:
                path = os.path.join(root, name)
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 2)
                truncated += 1
    assert truncated
    with Checkpointer(tmp_path, save_every=1, keep=3) as ckpt:
        with pytest.raises(CheckpointError, match=f"cannot restore checkpoint {tmp_path / '2'}"):
            ckpt.restore(2, _abstract(state))
        # metadata damage is reported the same way
        (tmp_path / "1" / "state" / "_METADATA").write_text("{not json")
        with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path / '1'}"):
            ckpt.restore(1, _abstract(state))


def _truncate_arrays(step_dir):
    """Truncate every array data file of a step (a crash or a full disk mid-copy)."""
    n = 0
    for root, _, files in os.walk(step_dir / "state"):
        if os.path.basename(root) == "d":
            for name in files:
                path = os.path.join(root, name)
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 2)
                n += 1
    assert n
    return n


def _two_checkpoints(directory, state):
    with Checkpointer(directory, save_every=4, keep=2, async_save=False) as ckpt:
        ckpt.maybe_save(4, state, {"position": 4})
        ckpt.maybe_save(8, state, {"position": 8})


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_resume_skips_a_corrupt_newest_checkpoint_and_keeps_it(tmp_path, caplog):
    state = _state()
    _two_checkpoints(tmp_path, state)
    _truncate_arrays(tmp_path / "8")
    sizes = {p.name: p.stat().st_size for p in (tmp_path / "8").rglob("*") if p.is_file()}
    with Checkpointer(tmp_path, save_every=4, keep=2) as ckpt, caplog.at_level(logging.WARNING):
        restored = ckpt.restore_for_resume(_abstract(state))
        assert restored.step == 4 and restored.data_state == {"position": 4}
        _assert_same(restored.state, state)
        (aside,) = restored.set_aside
        assert aside.step == 8 and aside.path.name.startswith("8.corrupt-") and "OUT_OF_RANGE" in aside.reason
        # the warning names the step, its directory, where it is kept and the step resumed from
        (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
        message = record.getMessage()
        assert f"step 8 ({tmp_path / '8'}) is corrupt" in message and str(aside.path) in message
        assert "resuming from step 4" in message
        # kept byte for byte, out of Orbax's sight: the resumed run saves step 8 again, retention ignores it
        assert {p.name: p.stat().st_size for p in aside.path.rglob("*") if p.is_file()} == sizes
        assert ckpt.all_steps() == [4]
        assert ckpt.maybe_save(8, state, {"position": 8})
        assert ckpt.maybe_save(12, state, {"position": 12})
        ckpt.wait()
        assert ckpt.all_steps() == [8, 12]
        assert ckpt.restore(8, _abstract(state))[1] == {"position": 8}
    assert sorted(os.listdir(tmp_path)) == ["12", "8", aside.path.name]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_resume_with_no_restorable_checkpoint_moves_nothing(tmp_path):
    state = _state()
    _two_checkpoints(tmp_path, state)
    _truncate_arrays(tmp_path / "8")
    (tmp_path / "4" / "state" / "_METADATA").write_text("{not json")
    with Checkpointer(tmp_path, save_every=4, keep=2) as ckpt:
        with pytest.raises(CheckpointError, match=r"restores \(nothing was moved or deleted\)") as info:
            ckpt.restore_for_resume(_abstract(state))
        assert ckpt.all_steps() == [4, 8]
    assert "\n  step 8: " in str(info.value) and "\n  step 4: " in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["4", "8"]
    with Checkpointer(tmp_path / "empty", save_every=4, keep=2) as ckpt:
        with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
            ckpt.restore_for_resume(_abstract(state))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_resume_from_an_explicit_step(tmp_path, caplog):
    state = _state()
    _two_checkpoints(tmp_path, state)
    with Checkpointer(tmp_path, save_every=4, keep=2) as ckpt:
        with pytest.raises(CheckpointError, match=r"step 6: no checkpoint .*available steps: \[4, 8\]"):
            ckpt.restore_for_resume(_abstract(state), step=6)
        # a valid newer step is set aside too (the resumed run writes step 8 again), never deleted
        with caplog.at_level(logging.WARNING):
            restored = ckpt.restore_for_resume(_abstract(state), step=4)
        assert restored.step == 4 and restored.data_state == {"position": 4}
        (aside,) = restored.set_aside
        assert aside.step == 8 and aside.path.name.startswith("8.superseded-")
        assert "newer than the requested resume step 4" in caplog.text
        assert ckpt.all_steps() == [4]
    # an explicitly requested corrupt step is an error naming the others; nothing moves
    _truncate_arrays(tmp_path / "4")
    with Checkpointer(tmp_path, save_every=4, keep=2) as ckpt:
        with pytest.raises(CheckpointError, match=r"step 4: checkpoint .* does not restore .*Other steps: none"):
            ckpt.restore_for_resume(_abstract(state), step=4)
    assert sorted(os.listdir(tmp_path)) == ["4", aside.path.name]


def test_restore_with_a_different_structure_names_the_step(tmp_path):
    with Checkpointer(tmp_path, save_every=1, keep=1) as ckpt:
        ckpt.maybe_save(1, {"w": jnp.ones(3)}, {})
        other = {"w": jax.ShapeDtypeStruct((3,), jnp.float32), "extra": jax.ShapeDtypeStruct((), jnp.int32)}
        with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path / '1'}"):
            ckpt.restore(1, other)


# ----------------------------------------------------------------------------------------------- workdir


def _config(**overrides):
    config = ml_collections.ConfigDict(
        {"total_steps": 100, "optimizer": {"lr": 1e-3}, "logging": {"every": 10}, "mesh": {"fsdp": -1}}
    )
    config.update(overrides)
    return config


def test_prepare_workdir_new_run(tmp_path):
    workdir = tmp_path / "run"
    assert prepare_workdir(workdir, _config(), resume=False) == workdir
    assert json.loads((workdir / "config.json").read_text())["optimizer"]["lr"] == 1e-3
    # --resume on a fresh workdir simply starts the run (one command line for launch and restarts)
    assert prepare_workdir(tmp_path / "fresh", _config(), resume=True).joinpath("config.json").exists()


def test_prepare_workdir_refuses_to_overwrite(tmp_path):
    prepare_workdir(tmp_path, _config(), resume=False)
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(WorkdirError, match="already holds a run.*--resume.*new workdir"):
        prepare_workdir(tmp_path, _config(total_steps=5), resume=False)
    assert (tmp_path / "config.json").read_text() == before
    # checkpoints alone also count as a run
    other = tmp_path / "other"
    checkpoint_dir(other).joinpath("10").mkdir(parents=True)
    with pytest.raises(WorkdirError, match="already holds a run"):
        prepare_workdir(other, _config(), resume=False)


def test_prepare_workdir_resume(tmp_path):
    prepare_workdir(tmp_path, _config(), resume=False)
    # allowed changes: total steps, logging
    config = _config(total_steps=200)
    config.logging.every = 1
    prepare_workdir(tmp_path, config, resume=True)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["total_steps"] == 200 and saved["logging"]["every"] == 1
    # a change to what is computed is refused, listing each field
    config = _config()
    config.optimizer.lr = 3e-4
    config.mesh.fsdp = 4
    with pytest.raises(WorkdirError, match="cannot resume") as info:
        prepare_workdir(tmp_path, config, resume=True)
    assert "optimizer.lr: 0.001 -> 0.0003" in str(info.value)
    assert "mesh.fsdp: -1 -> 4" in str(info.value)
    assert "total_steps" not in str(info.value)
