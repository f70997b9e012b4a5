"""TensorBoard scalar logging that needs only the ``tensorboard`` package (no TensorFlow, no torch).

``tensorboard`` ships its own event-file writer and protobufs; this wraps them in a tiny writer so training
loops and evaluation reports can log scalars, and ``read_scalars`` reads them back (tests, report tools).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class SummaryWriter:
    """Appends scalar summaries to a fresh ``events.out.tfevents.*`` file under ``logdir``.

    Values are stored as ``simple_value`` scalars, which both the TensorBoard UI and
    ``EventAccumulator.Scalars`` understand. Use as a context manager or call ``close()``.
    """

    def __init__(self, logdir: str | os.PathLike, flush_secs: int = 30, max_queue: int = 100):
        self.logdir = os.fspath(logdir)
        os.makedirs(self.logdir, exist_ok=True)
        _after_existing_files(self.logdir)
        self._writer = EventFileWriter(self.logdir, max_queue_size=max_queue, flush_secs=flush_secs)

    def scalar(self, tag: str, value: float, step: int | None = None) -> None:
        """Log one scalar; ``step=None`` is logged as step 0."""
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=float(value))])
        self._add(summary, step)

    def scalars(self, values: Mapping[str, float], step: int | None = None) -> None:
        """Log several scalars as one event (all share ``step`` and wall time)."""
        summary = summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=str(k), simple_value=float(v)) for k, v in values.items()]
        )
        self._add(summary, step)

    def session_start(self, step: int) -> None:
        """Mark a restart at ``step``: TensorBoard then drops this run's earlier events at steps >= ``step``
        (a resumed run logs those steps again; ``SessionLog.START`` is how TensorFlow marks a restart)."""
        event = event_pb2.Event(
            wall_time=time.time(), step=int(step), session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)
        )
        self._writer.add_event(event)

    def _add(self, summary: summary_pb2.Summary, step: int | None) -> None:
        event = event_pb2.Event(wall_time=time.time(), step=int(step or 0), summary=summary)
        self._writer.add_event(event)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> SummaryWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _after_existing_files(logdir: str) -> None:
    """Waits (under a second) until a new event file's name sorts after those already in ``logdir``: TensorBoard
    reads files in name order, and names are ``<second>.<host>.<pid>.<writer count>``, so two writers opened in
    one second sort by the count as text ("10" before "9") and a later writer's events could be read first."""
    seconds = [
        int(name.split(".")[3])
        for name in os.listdir(logdir)
        if name.startswith("events.out.tfevents.") and name.split(".")[3].isdigit()
    ]
    if seconds and max(seconds) >= int(time.time()):
        time.sleep(max(seconds) + 1 - time.time())


def read_scalars(logdir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Read every scalar in the event files directly under ``logdir``: ``{tag: [(step, value), ...]}``.

    Uses TensorBoard's own ``EventAccumulator`` (no size limit), so it checks what TensorBoard would show.
    """
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(os.fspath(logdir), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [(int(e.step), float(e.value)) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
