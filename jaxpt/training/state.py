"""Train state and its sharded creation: params, optimizer state, step and rng laid out by logical rules."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxpt.sharding import param_shardings, replicated, unbox


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key data, so checkpoints hold a plain array


def state_shardings(abstract_boxed_params: Any, tx: optax.GradientTransformation, mesh: Mesh, rules: Any) -> TrainState:
    """Shardings for every leaf: optax keeps the logical boxes of the params, so its state follows them."""
    abstract_opt = jax.eval_shape(tx.init, abstract_boxed_params)
    return TrainState(
        step=replicated(mesh),
        params=param_shardings(abstract_boxed_params, mesh, rules),
        opt_state=param_shardings(abstract_opt, mesh, rules),
        rng=replicated(mesh),
    )


def create_state(params: Any, tx: optax.GradientTransformation, shardings: TrainState, seed: int) -> TrainState:
    """Puts (host or device) params on their shardings and builds the optimizer state there, in one jit."""
    params = jax.device_put(unbox(params), shardings.params)

    def init(params):
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=jax.random.key_data(jax.random.key(seed)),
        )

    return jax.jit(init, out_shardings=shardings)(params)


def abstract_state(shardings: TrainState, abstract_boxed_params: Any, tx: optax.GradientTransformation) -> Any:
    """ShapeDtypeStructs with shardings: the restore target for checkpoints."""
    params = unbox(abstract_boxed_params)
    shapes = jax.eval_shape(
        lambda p: TrainState(
            step=jnp.zeros((), jnp.int32),
            params=p,
            opt_state=tx.init(p),
            rng=jax.random.key_data(jax.random.key(0)),
        ),
        params,
    )
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
