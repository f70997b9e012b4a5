"""Checkpoints of the train state plus the data iterator state, on top of ``orbax.checkpoint``.

One step directory holds two items: ``state`` (any pytree of arrays: params, optimizer state, step, PRNG
keys — saved sharded, restored onto whatever shardings the caller asks for, so a run can resume on a
different mesh) and ``data`` (a small JSON dict: where the data iterator is). Saving them together is what
makes resume exact: the model never sees a batch twice or skips one.

Retention ("keep last K and best N"): a step directory is kept while it is among the ``keep`` most recent
checkpoints **or** among the ``keep_best`` best by ``best_metric`` — Orbax's ``AnyPreservationPolicy`` of
``LatestN`` and ``BestN``, in one directory. So at most ``keep + keep_best`` checkpoints exist; a
checkpoint saved without that metric (e.g. not an eval step) is only kept while it is recent; the best ones
survive any number of later saves, and ranks persist across restarts (Orbax stores the metrics per step).

Resume (``restore_for_resume``) takes the newest checkpoint that restores. A newer one that does not (a crash or a
full disk mid-write) is renamed ``<step>.corrupt-<time>``: kept for inspection, never deleted, and out of Orbax's
sight so the resumed run can write that step number again.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import AnyPreservationPolicy, BestN, LatestN

__all__ = ["CheckpointError", "Checkpointer", "Restored", "SetAside"]

log = logging.getLogger(__name__)


class _DropNoMetricsWarning(logging.Filter):
    """Orbax warns on every save without metrics; here that is normal (only eval steps carry the metric)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in str(record.msg)


logging.getLogger("absl").addFilter(_DropNoMetricsWarning())


class CheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be restored (corrupt, partial, or a different state layout)."""


@dataclasses.dataclass(frozen=True)
class SetAside:
    """A step directory moved out of the way of a resumed run (kept, never deleted)."""

    step: int
    path: Path  # where it is now: ``<dir>/<step>.corrupt-<time>`` or ``<dir>/<step>.superseded-<time>``
    reason: str


@dataclasses.dataclass(frozen=True)
class Restored:
    """What ``restore_for_resume`` restored, and which newer step directories it set aside."""

    step: int
    state: Any
    data_state: dict[str, Any]
    set_aside: tuple[SetAside, ...] = ()


def _drop_closed_loop_noise() -> None:
    """After a failed read, tensorstore's other in-flight reads complete into Orbax's already closed event loop
    and each prints an "Event loop is closed" traceback (dozens of lines that bury the real message): drop just
    those, pass everything else to the previous hook. Idempotent; installed before the first restore, since the
    callbacks can fire before the failure reaches us."""
    previous = sys.unraisablehook
    if getattr(previous, "_jaxpt_drops_closed_loop", False):
        return

    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        previous(unraisable)

    hook._jaxpt_drops_closed_loop = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _reason(error: CheckpointError) -> str:
    """The underlying read error in one short line (tensorstore messages run to many lines)."""
    cause = error.__cause__
    text = f"{type(cause).__name__}: {cause}" if cause is not None else str(error)
    text = " ".join(text.split())
    return text if len(text) <= 400 else text[:399] + "…"


def _to_float(name: str, value: Any) -> float:
    try:
        return float(np.asarray(value))
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint metric {name!r} must be a scalar number, got {value!r}") from e


class Checkpointer:
    """Periodic, retention-managed, optionally asynchronous checkpoints of ``(state, data_state)``.

    Args:
      directory: where step directories (``<dir>/<step>/``) live; created if missing.
      save_every: ``maybe_save`` saves when ``step % save_every == 0`` (or forced, or on preemption).
      keep: how many of the most recent checkpoints to keep (>= 1, so resume always has one).
      keep_best: additionally keep this many best checkpoints by ``best_metric`` (None: no best tracking).
      best_metric: key of the ``metrics`` dict passed to ``maybe_save`` used to rank checkpoints.
      best_mode: "min" (e.g. eval loss) or "max" (e.g. accuracy).
      async_save: write in a background thread (only the device->host copy blocks the train loop).
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        save_every: int,
        keep: int,
        keep_best: int | None = None,
        best_metric: str | None = None,
        best_mode: str = "min",
        async_save: bool = True,
    ):
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        if keep < 1:
            raise ValueError(f"keep must be >= 1 (the latest checkpoint is what resume uses), got {keep}")
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
        if keep_best is not None and keep_best < 1:
            raise ValueError(f"keep_best must be None or >= 1, got {keep_best}")
        if (keep_best is None) != (best_metric is None):
            raise ValueError("keep_best and best_metric must be given together")
        self.directory = Path(directory).absolute()
        self.save_every = save_every
        self.keep = keep
        self.keep_best = keep_best
        self.best_metric = best_metric
        self.best_mode = best_mode

        policies: list[Any] = [LatestN(n=keep)]
        best_fn = None
        if best_metric is not None:
            worst = math.inf if best_mode == "min" else -math.inf

            def best_fn(metrics: Mapping[str, Any]) -> float:
                value = float(metrics[best_metric])
                return worst if math.isnan(value) else value  # a NaN eval never counts as "best"

            # BestN sorts ascending and keeps the tail: reverse for "min" so the smallest values are kept.
            policies.append(
                BestN(
                    get_metric_fn=best_fn,
                    reverse=best_mode == "min",
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=AnyPreservationPolicy(policies),
            best_fn=best_fn,  # only for best_step() and to make Orbax record the metrics
            best_mode=best_mode,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    # ------------------------------------------------------------------------------------------ queries

    def all_steps(self) -> list[int]:
        """Steps with a (committed or in-flight) checkpoint, ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """Best step by ``best_metric`` among kept checkpoints with that metric (latest if not tracking)."""
        return self._manager.best_step()

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def should_save(self, step: int, force: bool = False) -> bool:
        """Whether ``maybe_save(step)`` writes: due, forced or preempted, and newer than the latest."""
        latest = self.latest_step()
        if latest is not None and step <= latest:
            return False
        return force or step % self.save_every == 0 or self._manager.reached_preemption(step)

    # ------------------------------------------------------------------------------------------- saving

    def maybe_save(
        self,
        step: int,
        state: Any,
        data_state: Mapping[str, Any],
        metrics: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Save if due (see ``should_save``); returns whether a save was started.

        A step at or before the latest saved step is never saved (e.g. the final forced save right after a
        scheduled one at the same step, or a resumed run re-reaching its restore step). ``metrics`` rank the
        checkpoint for ``keep_best``; without ``best_metric`` in them it is kept only while recent.
        """
        step = int(step)
        if not self.should_save(step, force):
            return False
        orbax_metrics = None
        if self.best_metric is not None and metrics is not None and self.best_metric in metrics:
            orbax_metrics = {k: _to_float(k, v) for k, v in metrics.items()}
        data = ocp.args.JsonSave(dict(data_state))
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=data)
        saved = self._manager.save(step, args=args, metrics=orbax_metrics, force=True)
        if saved:
            log.info("checkpoint: saving step %d to %s", step, self.step_dir(step))
        return bool(saved)

    def wait(self) -> None:
        """Block until in-flight async saves are committed (call before reading them or exiting)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release Orbax's threads."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------- restoring

    def restore_for_resume(self, abstract_state: Any, step: int | None = None) -> Restored:
        """Restore the newest checkpoint that restores (or exactly ``step``) for a run to continue from it.

        Newer checkpoints that fail are renamed ``<step>.corrupt-<time>`` with a warning naming them: kept, but
        out of Orbax's sight, since the resumed run will save those step numbers again. With ``step``, only that
        checkpoint is tried and valid newer ones are renamed ``<step>.superseded-<time>`` for the same reason.
        Raises ``CheckpointError`` (naming every step tried and why it failed, or the available steps) when there
        is nothing to resume from; nothing is moved then.
        """
        self._manager.wait_until_finished()
        steps = self.all_steps()
        if step is not None:
            step = int(step)
            if step not in steps:
                raise CheckpointError(
                    f"cannot resume from step {step}: no checkpoint {self.step_dir(step)} "
                    f"(available steps: {steps or 'none'})"
                )
            try:
                state, data_state = self.restore(step, abstract_state)
            except CheckpointError as e:
                others = [s for s in steps if s != step]
                raise CheckpointError(
                    f"cannot resume from step {step}: checkpoint {self.step_dir(step)} does not restore "
                    f"({_reason(e)}); it was left as it is. Other steps: {others or 'none'} (pass one to "
                    "--resume-step, or leave --resume-step out to resume from the newest one that restores)"
                ) from e
            newer = [s for s in steps if s > step]
            moved = [SetAside(s, self._set_aside(s, "superseded"), f"newer than resume step {step}") for s in newer]
            for m in moved:
                log.warning(
                    "checkpoint: step %d is newer than the requested resume step %d; kept it as %s so the run can "
                    "save step %d again",
                    m.step,
                    step,
                    m.path,
                    m.step,
                )
            return Restored(step, state, data_state, tuple(moved))

        failures: list[tuple[int, CheckpointError]] = []
        for candidate in reversed(steps):
            try:
                state, data_state = self.restore(candidate, abstract_state)
            except CheckpointError as e:
                failures.append((candidate, e))
                continue
            moved = [SetAside(s, self._set_aside(s, "corrupt"), _reason(e)) for s, e in failures]
            for m in moved:
                log.warning(
                    "checkpoint: step %d (%s) is corrupt or unreadable (%s); kept it as %s and resuming from "
                    "step %d, the newest checkpoint that restores",
                    m.step,
                    self.step_dir(m.step),
                    m.reason,
                    m.path,
                    candidate,
                )
            return Restored(candidate, state, data_state, tuple(moved))
        if not failures:
            raise CheckpointError(f"no checkpoint to resume from in {self.directory}")
        tried = "\n".join(f"  step {s}: {_reason(e)}" for s, e in failures)
        raise CheckpointError(
            f"no checkpoint in {self.directory} restores (nothing was moved or deleted):\n{tried}\n"
            "if every step fails the same way, the state layout probably changed (a different model, optimizer or "
            "trainable mask): resume with the original config, or start a new workdir"
        )

    def _set_aside(self, step: int, kind: str) -> Path:
        """Rename ``<dir>/<step>`` to ``<dir>/<step>.<kind>-<time>`` (Orbax lists integer names only)."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        dst, n = self.directory / f"{step}.{kind}-{stamp}", 1
        while dst.exists():
            dst, n = self.directory / f"{step}.{kind}-{stamp}-{n}", n + 1
        if jax.process_index() == 0:
            os.replace(self.step_dir(step), dst)
        if jax.process_count() > 1:
            ocp.multihost.sync_global_processes(f"jaxpt_checkpoint_set_aside_{step}")
        self._manager.reload()
        return dst

    def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Restore ``(state, data_state)`` at ``step`` (None: latest) onto ``abstract_state``'s layout.

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` whose ``.sharding`` says where each array
        goes (e.g. ``jax.eval_shape`` of the state init with shardings attached); concrete arrays are also
        accepted and only their shape/dtype/sharding is used. Raises ``FileNotFoundError`` if there is no
        such checkpoint and ``CheckpointError`` (naming the step directory) if it cannot be read.
        """
        self._manager.wait_until_finished()
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"no checkpoint to restore in {self.directory}")
            step = steps[-1]
        elif step not in steps:
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory} (available: {steps})")
        step_dir = self.step_dir(step)
        target = jax.tree.map(
            lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else ocp.utils.to_shape_dtype_struct(x),
            abstract_state,
        )
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
        _drop_closed_loop_noise()
        try:
            restored = self._manager.restore(step, args=args)
            state, data_state = restored["state"], restored["data"]
            jax.block_until_ready(state)  # surface read errors here, not at first use
        except Exception as e:
            raise CheckpointError(
                f"cannot restore checkpoint {step_dir} (corrupt, partially written, or saved with a "
                f"different state structure): {type(e).__name__}: {e}"
            ) from e
        _check_layout(step_dir, state, target)
        if data_state is None:
            raise CheckpointError(f"checkpoint {step_dir} has no data state (item 'data' missing)")
        return state, dict(data_state)


def _check_layout(step_dir: Path, state: Any, target: Any) -> None:
    """Orbax may silently cast or reshape on restore; insist on exactly the requested shapes and dtypes."""
    got = jax.tree_util.tree_flatten_with_path(state)[0]
    want = jax.tree_util.tree_flatten_with_path(target)[0]
    if len(got) != len(want):
        raise CheckpointError(f"checkpoint {step_dir}: restored {len(got)} arrays, expected {len(want)}")
    for (path, g), (_, w) in zip(got, want, strict=True):
        if tuple(g.shape) != tuple(w.shape) or g.dtype != w.dtype:
            raise CheckpointError(
                f"checkpoint {step_dir}: {jax.tree_util.keystr(path)} restored as {g.dtype}{list(g.shape)}, "
                f"expected {w.dtype}{list(w.shape)}"
            )
