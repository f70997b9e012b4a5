"""MetricsLogger: metrics.jsonl lines and TensorBoard scalars read back; disabled loggers write nothing."""

import json
import math

import jax.numpy as jnp
import numpy as np

from jaxpt.training.logging import MetricsLogger, rewind_metrics
from jaxpt.utils.tensorboard import read_scalars


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_and_tensorboard(tmp_path):
    with MetricsLogger(tmp_path, total_steps=4) as logger:
        for step in range(1, 5):
            logger.advance()
            logger.log(step, {"loss": 1.0 / step, "lr": jnp.asarray(1e-3), "grad_norm": np.float32(0.5)})
        logger.log(4, {"loss": 0.7, "accuracy": 0.25, "note": "ok"}, prefix="eval")
        assert logger._bar.n == 4
        assert logger._postfix == {"loss": "0.25", "eval_loss": "0.7"}

    lines = _lines(tmp_path / "metrics.jsonl")
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 4]
    assert all(isinstance(line["time"], float) for line in lines)
    assert lines[0]["train/loss"] == 1.0 and lines[1]["train/loss"] == 0.5
    assert math.isclose(lines[2]["train/lr"], 1e-3, rel_tol=1e-6)
    assert lines[4] == {
        "step": 4,
        "time": lines[4]["time"],
        "eval/loss": 0.7,
        "eval/accuracy": 0.25,
        "eval/note": "ok",
    }

    scalars = read_scalars(tmp_path / "tensorboard")
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [1, 0.5, 1 / 3, 0.25], rtol=1e-6)
    assert scalars["eval/loss"] == [(4, 0.699999988079071)]  # float32 in the event file
    assert "eval/note" not in scalars  # non-numeric values only go to jsonl


def test_resume_appends_and_nan_is_kept(tmp_path):
    with MetricsLogger(tmp_path, total_steps=10, progress_bar=False) as logger:
        logger.log(1, {"loss": 2.0})
    with MetricsLogger(tmp_path, total_steps=10, progress_bar=False) as logger:
        logger.advance(1)  # resumed at step 1
        logger.log(2, {"loss": float("nan")})
    lines = _lines(tmp_path / "metrics.jsonl")
    assert [line["step"] for line in lines] == [1, 2]
    assert math.isnan(lines[1]["train/loss"])


def test_rewind_metrics_cuts_back_to_the_restored_step(tmp_path):
    with MetricsLogger(tmp_path, total_steps=10, progress_bar=False) as logger:
        logger.log(0, {"params": 10}, prefix="")
        for step in range(1, 8):
            logger.log(step, {"loss": 1.0 / step})
        logger.log(4, {"loss": 0.5}, prefix="eval")
    path = tmp_path / "metrics.jsonl"
    before = path.read_text().splitlines(keepends=True)
    with open(path, "a") as f:
        f.write('{"step": 8, "train/lo')  # torn by a crash mid-write
    assert rewind_metrics(tmp_path, 4) == 4  # steps 5, 6, 7 and the torn line
    assert path.read_text() == "".join(line for line in before if json.loads(line)["step"] <= 4)  # kept verbatim
    assert not list(tmp_path.glob("*.tmp"))
    assert rewind_metrics(tmp_path, 7) == 0 and rewind_metrics(tmp_path / "none", 3) == 0
    # a logger resumed from step 4 does the same cut itself, then logs the re-run steps: each (step, metric) once,
    # in TensorBoard too (it drops the old events after step 4 at the restart marker)
    with MetricsLogger(tmp_path, total_steps=10, progress_bar=False, resume_from=4) as logger:
        for step in range(5, 8):
            logger.log(step, {"loss": 2.0 / step})
    lines = _lines(path)
    assert [line["step"] for line in lines] == [0, 1, 2, 3, 4, 4, 5, 6, 7]
    assert lines[-1]["train/loss"] == 2.0 / 7
    losses = read_scalars(tmp_path / "tensorboard")["train/loss"]
    np.testing.assert_allclose(losses, [(s, 1.0 / s) for s in range(1, 5)] + [(s, 2.0 / s) for s in range(5, 8)])


def test_disabled_writes_nothing(tmp_path):
    logger = MetricsLogger(tmp_path / "run", total_steps=3, enabled=False)
    logger.advance()
    logger.log(1, {"loss": 1.0})
    logger.close()
    logger.close()  # idempotent
    assert not (tmp_path / "run").exists()


def test_a_later_writer_is_read_after_an_earlier_one(tmp_path, monkeypatch):
    """TensorBoard reads event files in name order; writer number 9 and 10 of a process opened in one second
    would sort "10" first. A new writer waits for the next second when its directory has a file of this one."""
    from tensorboard.summary.writer import event_file_writer

    from jaxpt.utils.tensorboard import SummaryWriter

    monkeypatch.setattr(event_file_writer, "_global_uid", event_file_writer.AtomicCounter(9))
    for step in (1, 2):
        with SummaryWriter(tmp_path) as w:
            w.scalar("x", float(step), step)
    assert read_scalars(tmp_path)["x"] == [(1, 1.0), (2, 2.0)]
