"""The resumable epoch iterator every training data stream derives from (SFT rows, preference pairs, RL prompts)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


class EpochIterator:
    """Infinite, deterministic stream of per-epoch *units* (rows, pairs), batched across epoch boundaries.

    Epoch ``e`` orders the data with ``np.random.default_rng(seed + e)`` (or keeps it in order without
    shuffling). The state is just ``(epoch, position)`` of the next unit, so a restored iterator recomputes
    the epoch's layout and yields exactly the same batches. A batch that reaches the end of an epoch continues
    with the next one, so every batch has the same shape and nothing is dropped.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, shuffle: bool):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_items < 1:
            raise ValueError("cannot iterate over an empty dataset")
        self.num_items, self.batch_size, self.seed, self.shuffle = num_items, batch_size, seed, shuffle
        self.epoch, self.position = 0, 0
        self._cache: tuple[int, list[Any]] | None = None

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_items)
        return np.random.default_rng(self.seed + epoch).permutation(self.num_items)

    def _layout(self, epoch: int) -> list[Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def units(self, epoch: int) -> list[Any]:
        """The epoch's units in yield order (cached for the current epoch)."""
        if self._cache is None or self._cache[0] != epoch:
            units = self._layout(epoch)
            if not units:
                raise ValueError("an epoch has no usable units (all examples too short?)")
            self._cache = (epoch, units)
        return self._cache[1]

    def _take(self) -> list[Any]:
        out: list[Any] = []
        while len(out) < self.batch_size:
            units = self.units(self.epoch)
            k = min(self.batch_size - len(out), len(units) - self.position)
            out += units[self.position : self.position + k]
            self.position += k
            if self.position >= len(units):
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_state(self) -> dict[str, int]:
        """JSON-able position of the next batch."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_items": self.num_items,
        }

    def set_state(self, state: dict[str, int]) -> None:
        """Resumes from :meth:`get_state` output; refuses a state taken on different data or seed."""
        for key, value in (("seed", self.seed), ("num_items", self.num_items)):
            if key in state and int(state[key]) != value:
                raise ValueError(f"iterator state has {key}={state[key]}, this iterator has {key}={value}")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < max(len(self.units(epoch)), 1):
            raise ValueError(f"invalid iterator state {state}")
        self.epoch, self.position = epoch, position
