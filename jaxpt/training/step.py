"""The one train step every algorithm shares: ``step(state, batch, frozen) -> (state, metrics)``.

An algorithm only supplies a loss ``loss_fn(params, batch, rng, frozen) -> (loss_sum, weight, metrics)``:
the loss *summed* over its units (tokens, pairs, sequences) and how many units there were. Summing lets
gradient accumulation weight micro-batches exactly as one big batch would (``sum / total weight``).
``frozen`` carries non-trainable inputs such as a DPO reference model's params.

``trainable`` (a mask, ``jaxpt/training/trainable.py``) limits training to part of ``state.params``: the loss is
differentiated with respect to the trainable leaves only (the frozen ones enter it as constants, get no gradient
buffers, and come out of the step as they went in) and ``grad_norm`` is the trainable gradients' norm.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxpt.errors import UserError
from jaxpt.sharding import batch_sharding, replicated
from jaxpt.training.state import TrainState
from jaxpt.training.trainable import merge, partition

LossFn = Callable[[Any, dict[str, jax.Array], jax.Array, Any], tuple[jax.Array, jax.Array, dict[str, jax.Array]]]


def split_micro_batches(batch: dict[str, jax.Array], n: int) -> dict[str, jax.Array]:
    """[B, ...] -> [n, B/n, ...], strided (rows i, i+n, …) so every micro-batch spans all data shards."""

    def split(x):
        if x.shape[0] % n:
            raise UserError(f"batch size {x.shape[0]} is not divisible by grad_accum_steps={n}")
        return x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, batch)


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    grad_accum_steps: int = 1,
    trainable: Any = None,
) -> Callable[[TrainState, dict[str, jax.Array], Any], tuple[TrainState, dict[str, jax.Array]]]:
    """Builds the pure step function (the caller jits it with shardings). ``trainable``: the mask ``tx`` was
    made with (``make_optimizer``); None: every parameter trains."""

    def grads_of(mask, params, fixed, batch, rng, frozen):
        def objective(p):
            loss_sum, weight, metrics = loss_fn(merge(mask, p, fixed), batch, rng, frozen)
            return loss_sum, (weight, metrics)

        (loss_sum, (weight, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return grads, loss_sum, weight, metrics

    def step(state: TrainState, batch: dict[str, jax.Array], frozen: Any = None):
        mask = jax.tree.map(lambda _: True, state.params) if trainable is None else trainable
        params, fixed = partition(state.params, mask)  # fixed: the frozen leaves, constants of the loss
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        if grad_accum_steps == 1:
            grads, loss_sum, weight, metrics = grads_of(mask, params, fixed, batch, rng, frozen)
        else:
            micro = split_micro_batches(batch, grad_accum_steps)
            zeros = jax.tree.map(jnp.zeros_like, params)

            def body(carry, xs):
                acc, loss_acc, weight_acc = carry
                i, mb = xs
                g, loss_sum, weight, metrics = grads_of(mask, params, fixed, mb, jax.random.fold_in(rng, i), frozen)
                acc = jax.tree.map(jnp.add, acc, g)
                return (acc, loss_acc + loss_sum, weight_acc + weight), metrics

            init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
            (grads, loss_sum, weight), metrics = jax.lax.scan(body, init, (jnp.arange(grad_accum_steps), micro))
            metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
        weight = jnp.maximum(weight, 1.0)
        grads = jax.tree.map(lambda g: g / weight, grads)
        updates, opt_state = tx.update(grads, state.opt_state, params)
        params = merge(mask, optax.apply_updates(params, updates), fixed)
        metrics = {
            **metrics,
            "loss": loss_sum / weight,
            "grad_norm": optax.tree.norm(grads),
            "lr": schedule(state.step),
        }
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return step


def jit_train_step(step: Callable, shardings: TrainState, mesh: Mesh, keep_unused: bool = False) -> Any:
    """``step`` jitted as training runs it: the state on its shardings (and donated), the batch split over the
    data axes, ``frozen`` as given, metrics replicated. ``jaxpt plan`` compiles exactly this ahead of time
    (``keep_unused``: frozen inputs the loss does not read still count among the arguments)."""
    return jax.jit(
        step,
        in_shardings=(shardings, batch_sharding(mesh), None),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=(0,),
        keep_unused=keep_unused,
    )
