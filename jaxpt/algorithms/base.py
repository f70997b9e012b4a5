"""What an algorithm hands the shared training loop: its batches, its loss and its eval."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import jax

from jaxpt.training.step import LossFn


class DataIterator(Protocol):
    def __iter__(self) -> Iterator[dict]: ...
    def __next__(self) -> dict: ...
    def get_state(self) -> dict: ...
    def set_state(self, state: dict) -> None: ...


@dataclasses.dataclass(frozen=True)
class Program:
    """A jitted program an algorithm runs besides its update step (the sampler, a scoring pass), in the form
    ``jaxpt plan`` compiles it: ``fn(params, frozen, arrays)`` with the train state's params, the frozen
    inputs and ``arrays`` (a dict; rows split over the batch axes when they divide, as the rollout puts them)."""

    name: str
    fn: Callable[[Any, Any, dict[str, jax.Array]], Any]
    arrays: dict[str, jax.ShapeDtypeStruct]
    notes: tuple[str, ...] = ()  # extra plan lines (e.g. the KV cache's size)


@dataclasses.dataclass
class StepSpec:
    """An algorithm's train step from its config alone (no data, no weights): what ``build`` trains with and
    ``jaxpt plan`` compiles. ``batch`` is one update's batch as the config sizes it (unsharded shapes);
    ``frozen`` the boxed abstract params of the step's frozen input (a reference model) or None."""

    loss_fn: LossFn
    abstract_params: Any
    batch: dict[str, jax.ShapeDtypeStruct]
    layout: str  # what ``batch`` holds, in words ("8 pairs: prompt 512 + 2 x 512 completion tokens")
    flops: float  # model FLOPs of one update on ``batch`` (all devices; a frozen forward counted in)
    frozen: Any = None
    trainable: Callable[[Any], Any] | None = None
    programs: tuple[Program, ...] = ()


def shapes_of(batch: dict[str, Any]) -> dict[str, jax.ShapeDtypeStruct]:
    """Host arrays (a batch built from no data) -> their shapes and dtypes."""
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}


@dataclasses.dataclass
class AlgorithmParts:
    """Everything algorithm-specific; the loop (``jaxpt/training/loop.py``) does the rest.

    ``eval_fn(params, batch, frozen)`` returns per-batch *sums*; the loop adds them over the eval set and
    ``summarize`` turns the totals into metrics (so means are exact, whatever the batch split).
    ``abstract_params`` (boxed, with logical names) and ``init_params(shardings)`` let an algorithm add
    parameters to the decoder's (e.g. a reward model's score head).
    """

    train_iter: DataIterator
    eval_batches: list[dict]
    loss_fn: LossFn
    eval_fn: Callable[[Any, dict[str, jax.Array], Any], dict[str, jax.Array]]
    summarize: Callable[[dict[str, float]], dict[str, float]]
    abstract_params: Any
    init_params: Callable[[Any], Any]
    frozen: Callable[[Any], Any] | None = None  # params -> frozen inputs (e.g. a reference copy)
    # Which parameters may train: abstract params -> a tree of bools in their structure, or a prefix of it
    # (e.g. {"policy": True, "value": False}); the config's train.trainable / train.frozen narrow it further
    # (jaxpt/training/trainable.py). None: all (e.g. LoRA would let only its adapters train).
    trainable: Callable[[Any], Any] | None = None
    tokens_in_batch: Callable[[dict], int] | None = None
    # Model FLOPs of one step on a batch, for MFU; None: ``train_flops_per_token * tokens_in_batch`` (a step
    # that also runs a frozen model's forward, like DPO's reference, counts it here).
    flops_in_batch: Callable[[dict], float] | None = None
    export: Callable[[Any, str], None] | None = None  # (params, out_dir) -> writes a HF checkpoint
    after_eval: Callable[[Any], dict[str, float]] | None = None  # params -> extra eval metrics (e.g. sampling)
    # Online algorithms (PPO, GRPO): ``rollout(params, frozen, loop_step) -> (minibatches, metrics)`` samples
    # with the *current* params and returns the minibatches of this iteration's updates (one optimizer step
    # each). Offline algorithms leave it None and the loop takes one batch per step from ``train_iter``.
    rollout: Callable[[Any, Any, int], tuple[list[dict], dict[str, float]]] | None = None
    updates_per_step: int = 1  # optimizer updates per loop step (for the LR schedule length)
