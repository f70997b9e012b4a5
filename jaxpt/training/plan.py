"""Plan a run on devices you do not have: compile an algorithm's programs ahead of time and read XLA's estimates.

    jaxpt plan --config=configs/sft/quickstart.py --topology=v5e:4x4 --config.mesh.fsdp=16

Nothing is allocated or run. Each algorithm describes its step from the config alone (``step_spec``: the
loss, the parameter shapes, one update's batch shapes, the frozen inputs such as a DPO reference, and the
other programs it runs: the RL sampler's prefill + decode over its KV cache, the scoring pass); ``jaxpt
train`` builds its step from the same spec. The train state, batch and frozen inputs are
``ShapeDtypeStruct``s with the shardings training gives them (the same mesh, logical-axis rules and jitted
step, ``jit_train_step``), so a program that compiles here compiles the same way on that slice, and XLA's
per-device memory (arguments, outputs, temporaries) says whether it fits before a pod is rented. Every
program is planned with the whole train state (params and optimizer state) and the frozen inputs among its
arguments: they stay in HBM while it runs. ``--topology`` names a TPU slice (``jax.experimental.topologies``;
compiling for it needs libtpu: ``pip install 'jaxpt[tpu]'``); without it the plan is for this host's devices.

Shapes the data would decide come from the config: a preference batch's prompt and completion lengths
(``data.max_prompt_length`` / ``max_completion_length``, else half of ``seq_len`` each); an RL rollout's
``rollout.max_prompt_len`` + ``max_new_tokens``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
from ml_collections import ConfigDict

from jaxpt.algorithms import resolve_config, step_spec
from jaxpt.algorithms.base import Program
from jaxpt.errors import UserError
from jaxpt.models.attention import compiling_for
from jaxpt.models.factory import model_config_from
from jaxpt.sharding import MESH_AXES, batch_sharding, make_mesh, normalize_rules, param_shardings, replicated, unbox
from jaxpt.training.optimizer import make_optimizer
from jaxpt.training.state import abstract_state, state_shardings
from jaxpt.training.step import jit_train_step, make_train_step
from jaxpt.training.trainable import count_params, mask_from_config

# Published HBM per chip, by JAX's device_kind (cloud.google.com/tpu/docs/system-architecture-tpu-vm).
TPU_HBM_GIB = {"TPU v4": 32, "TPU v5 lite": 16, "TPU v5": 95, "TPU v5p": 95, "TPU v6 lite": 32}
# Published peak bf16 FLOP/s and HBM bandwidth (bytes/s) per chip: cloud.google.com/tpu/docs/v4, /v5e
# (197 TFLOPs, 819 GBps), /v5p (459 TFLOPs, 2765 GBps), /v6e (918 TFLOPs, 1638 GBps).
TPU_PEAKS = {
    "TPU v4": (275e12, 1200e9),
    "TPU v5 lite": (197e12, 819e9),
    "TPU v5": (459e12, 2765e9),
    "TPU v5p": (459e12, 2765e9),
    "TPU v6 lite": (918e12, 1638e9),
}


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """XLA's estimates for one compiled program (the train step, the sampler, ...), per device."""

    name: str  # which program, and the batch it was compiled for
    device_kind: str
    num_devices: int
    mesh: dict[str, int]
    num_params: int
    trainable_params: int  # train.trainable / train.frozen: only these have optimizer state
    argument_bytes: int  # train state + frozen inputs + batch shard
    optimizer_bytes: int  # the optimizer state's part of argument_bytes (counted from its shapes and shardings)
    frozen_bytes: int  # the frozen inputs' part (a reference model), counted the same way
    output_bytes: int
    alias_bytes: int  # outputs written into donated arguments (the state)
    temp_bytes: int  # activations, gradients and other temporaries
    # per device, the count MFU uses (jaxpt.utils.flops): step time = this / (peak * MFU). (XLA's own cost
    # analysis is not reported: it counts a loop body once, e.g. one block of the fused loss.)
    model_flops: float  # 0: not counted (programs other than the train step)
    notes: tuple[str, ...] = ()

    @property
    def peak_bytes(self) -> int:
        """Arguments, new outputs and temporaries held at once (an upper bound on the step's live memory)."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    def roofline(self) -> tuple[float, float, float] | None:
        """``(compute s, memory s, MFU ceiling)`` per step on a chip with published peaks: the model FLOPs at
        the bf16 peak, and at least the state and batch read plus the outputs written at the HBM bandwidth
        (a lower bound: activations and temporaries come on top). The step takes at least the larger."""
        peaks = TPU_PEAKS.get(self.device_kind)
        if peaks is None or not self.model_flops:
            return None
        flops, bandwidth = peaks
        compute = self.model_flops / flops
        memory = (self.argument_bytes + self.output_bytes) / bandwidth
        return compute, memory, compute / max(compute, memory)

    @property
    def hbm_bytes(self) -> int | None:
        gib = TPU_HBM_GIB.get(self.device_kind)
        return None if gib is None else gib * 2**30


class DoesNotFit(ValueError):
    """XLA found the step too large for the devices' memory while compiling it."""


class TPUBusy(UserError, RuntimeError):
    """Another process holds libtpu (one libtpu process at a time per host: its lockfile)."""


def topology_devices(topology: str) -> list[Any]:
    """The devices of a TPU slice such as ``v5e:4x4`` or ``v4:2x2x2``, for compiling only."""
    from jax.experimental import topologies

    try:
        return list(topologies.get_topology_desc(topology, "tpu").devices)
    except Exception as e:  # libtpu missing, held by another process, or a name it does not know
        if "lockfile" in str(e):
            raise TPUBusy(
                f"libtpu is in use by another process (its lockfile /tmp/libtpu_lockfile): one libtpu process at "
                f"a time per host; wait for the other `jaxpt plan` (or TPU job) to finish, then retry ({e})"
            ) from e
        raise UserError(
            f"cannot describe TPU topology {topology!r}: {e}. Names look like 'v5e:4x4' or 'v4:2x2x2'; "
            "compiling for TPUs needs libtpu (pip install 'jaxpt[tpu]')"
        ) from e


def plan_steps(
    config: ConfigDict, devices: Sequence[Any] | None = None, tokenizer: Any = None
) -> list[StepPlan | DoesNotFit]:
    """Compiles ``config``'s train step and its algorithm's other programs (``StepSpec.programs``) for
    ``devices`` (default: this host's); one plan per program, or the ``DoesNotFit`` XLA raised for it.

    ``tokenizer`` only sizes the vocabulary of a from-scratch model (``config.model.scratch``); a model
    directory's ``config.json`` needs none.
    """
    config = resolve_config(config)
    m = config.mesh
    mesh = make_mesh(m.data, m.fsdp, m.tensor, devices)
    rules = normalize_rules(m.rules)
    model_config = model_config_from(config.model, tokenizer)
    platform = mesh.devices.flat[0].platform
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules), compiling_for(platform):
        spec = step_spec(config, model_config, mesh)
        boxed = spec.abstract_params
        trainable = mask_from_config(config.train, unbox(boxed), spec.trainable)
        tx, schedule = make_optimizer(config.optimizer, config.train.steps, trainable)
        shardings = state_shardings(boxed, tx, mesh, rules)
        step = make_train_step(spec.loss_fn, tx, schedule, config.train.grad_accum_steps, trainable)
        state = abstract_state(shardings, boxed, tx)
        frozen = None
        if spec.frozen is not None:
            frozen = jax.tree.map(
                lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                unbox(spec.frozen),
                param_shardings(spec.frozen, mesh, rules),
            )
        n_trainable, n_params = count_params(boxed, trainable)
        common = dict(
            device_kind=mesh.devices.flat[0].device_kind,
            num_devices=mesh.devices.size,
            mesh=dict(zip(MESH_AXES, mesh.devices.shape, strict=True)),
            num_params=n_params,
            trainable_params=n_trainable,
            optimizer_bytes=sum(_shard_bytes(x) for x in jax.tree.leaves(state.opt_state)),
            frozen_bytes=sum(_shard_bytes(x) for x in jax.tree.leaves(frozen)),
        )
        batch = {k: _on(v, batch_sharding(mesh)) for k, v in spec.batch.items()}
        # keep_unused: a frozen input the loss does not read (GRPO's reference) is still in HBM meanwhile
        update = jit_train_step(step, shardings, mesh, keep_unused=True)
        plans = [
            _compile(
                f"train step: {spec.layout}",
                lambda: update.lower(state, batch, frozen),
                mesh,
                common | dict(model_flops=spec.flops / mesh.devices.size),
            )
        ]
        for program in spec.programs:
            plans.append(_plan_program(program, state, frozen, mesh, common))
    return plans


def plan_sft_step(config: ConfigDict, devices: Sequence[Any] | None = None, tokenizer: Any = None) -> StepPlan:
    """The train step's plan alone (raises ``DoesNotFit`` when XLA refuses it)."""
    plan = plan_steps(config, devices, tokenizer)[0]
    if isinstance(plan, DoesNotFit):
        raise plan
    return plan


def _on(x: jax.ShapeDtypeStruct, sharding: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def _plan_program(program: Program, state: Any, frozen: Any, mesh: Any, common: dict) -> StepPlan | DoesNotFit:
    """``program`` with the whole train state and the frozen inputs as (kept) arguments; its arrays split over
    the batch axes when their rows divide (as the rollout puts them), else replicated."""
    shards = int(mesh.shape["data"] * mesh.shape["fsdp"])
    arrays = {
        k: _on(v, batch_sharding(mesh) if v.shape and v.shape[0] % shards == 0 else replicated(mesh))
        for k, v in program.arrays.items()
    }
    fn = jax.jit(lambda st, fr, a: program.fn(st.params, fr, a), keep_unused=True)
    return _compile(
        program.name, lambda: fn.lower(state, frozen, arrays), mesh, common | dict(model_flops=0.0, notes=program.notes)
    )


def _compile(name: str, lower: Any, mesh: Any, fields: dict) -> StepPlan | DoesNotFit:
    try:
        compiled = lower().compile()
    except jax.errors.JaxRuntimeError as e:  # XLA:TPU refuses a program that cannot fit in HBM
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        mesh_desc = ", ".join(f"{k}={v}" for k, v in zip(MESH_AXES, mesh.devices.shape, strict=True))
        kind = mesh.devices.flat[0].device_kind
        return DoesNotFit(f"{name}: does not fit on {kind} with mesh {mesh_desc}: {e}")
    memory = compiled.memory_analysis()
    return StepPlan(
        name=name,
        argument_bytes=int(memory.argument_size_in_bytes),
        output_bytes=int(memory.output_size_in_bytes),
        alias_bytes=int(memory.alias_size_in_bytes),
        temp_bytes=int(memory.temp_size_in_bytes),
        **fields,
    )


def _shard_bytes(x: jax.ShapeDtypeStruct) -> int:
    """Bytes of one device's shard of ``x`` (an even split: the shardings here divide their dimensions)."""
    return math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize


def format_plan(plan: StepPlan) -> str:
    """The plan as a few readable lines."""

    def gib(n: int) -> str:
        return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"

    mesh = ", ".join(f"{k}={v}" for k, v in plan.mesh.items())
    trained = plan.trainable_params
    frozen = f"; frozen inputs {gib(plan.frozen_bytes)}" if plan.frozen_bytes else ""
    lines = [
        f"[{plan.name}]",
        f"devices: {plan.num_devices} x {plan.device_kind}; mesh {mesh}; {plan.num_params / 1e6:,.1f} M parameters"
        + (f", {trained / 1e6:,.1f} M of them trained" if trained < plan.num_params else ""),
        f"per device: arguments {gib(plan.argument_bytes)} (train state + batch; optimizer state "
        f"{gib(plan.optimizer_bytes)}{frozen}), outputs {gib(plan.output_bytes)}"
        f" ({gib(plan.alias_bytes)} of them in donated buffers), temporaries {gib(plan.temp_bytes)}",
        f"peak per device: {gib(plan.peak_bytes)}"
        + (
            f" of {gib(plan.hbm_bytes)} HBM: {'fits' if plan.peak_bytes <= plan.hbm_bytes else 'does NOT fit'}"
            if plan.hbm_bytes
            else ""
        ),
    ]
    if plan.model_flops:
        lines.append(f"model FLOPs per device per step (the MFU count): {plan.model_flops:.3e}")
    lines.extend(plan.notes)
    roof = plan.roofline()
    if roof:
        compute, memory, ceiling = roof
        flops, bandwidth = TPU_PEAKS[plan.device_kind]
        lines.append(
            f"roofline: a step takes at least {max(compute, memory) * 1e3:.1f} ms (compute {compute * 1e3:.1f} ms "
            f"at {flops / 1e12:.0f} TFLOP/s bf16; state in and out {memory * 1e3:.1f} ms at {bandwidth / 1e9:.0f} "
            f"GB/s): MFU at most {100 * ceiling:.0f}%"
        )
    return "\n".join(lines)
