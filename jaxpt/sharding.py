"""Device mesh, logical-axis rules and the shardings derived from them.

One 3-axis mesh ``(data, fsdp, tensor)`` serves every algorithm: the batch is split over ``data`` and
``fsdp``, parameters are split over ``fsdp`` (ZeRO-3 style) and ``tensor`` (Megatron style). Models only
name their axes logically (``embed``, ``heads``, …); ``config.mesh.rules`` maps those names onto mesh axes,
so changing the parallelism layout is a config change, never a model change.

Rule semantics (the same as ``flax.linen.logical_to_mesh_axes`` so parameters and the model's activation
constraints agree): rules are tried in order; a rule ``(name, mesh_axes)`` assigns ``mesh_axes`` to the
dimension called ``name`` if that dimension is still unassigned and none of ``mesh_axes`` is already used
by another dimension of the same array. A dimension whose every rule conflicts that way is replicated
(``None``): e.g. with ``heads -> tensor`` and ``mlp -> tensor`` an array ``(heads, mlp)`` shards ``heads``
(the earlier rule) and replicates ``mlp``. A name with no rule at all is an error, never a silent
replication.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxpt.errors import UserError

__all__ = [
    "BATCH_AXES",
    "DEFAULT_RULES",
    "MESH_AXES",
    "MeshAxes",
    "Rules",
    "batch_sharding",
    "logical_to_mesh_spec",
    "make_mesh",
    "normalize_rules",
    "param_shardings",
    "partition_spec_table",
    "replicated",
    "rules_of",
    "shard_batch",
    "spec_to_str",
]

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

MeshAxes = str | tuple[str, ...] | None
Rules = Sequence[tuple[str, MeshAxes]] | Sequence[Sequence[Any]]

DEFAULT_RULES: tuple[tuple[str, MeshAxes], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("norm", None),
    # activations
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


# ------------------------------------------------------------------------------------------------ mesh


def make_mesh(data: int, fsdp: int, tensor: int, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh; one size may be -1 meaning "all remaining devices".

    The product must equal the device count (all of ``jax.devices()`` unless ``devices`` is given): an
    idle device is almost always a config mistake. Axes are ``AxisType.Auto`` (classic GSPMD propagation,
    what ``jit(in_shardings=..., out_shardings=...)`` and flax logical constraints expect).
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    sizes = [int(data), int(fsdp), int(tensor)]
    desc = f"mesh (data={data}, fsdp={fsdp}, tensor={tensor})"
    fix = f"set config.mesh.data * fsdp * tensor to {n} (one of them may be -1: the remaining devices)"
    if sizes.count(-1) > 1:
        raise UserError(f"{desc}: at most one axis size may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise UserError(f"{desc}: sizes must be positive or -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n % known:
            raise UserError(f"{desc}: fixed sizes multiply to {known}, which does not divide {n} devices; {fix}")
        sizes[sizes.index(-1)] = n // known
    if math.prod(sizes) != n:
        raise UserError(f"{desc}: sizes multiply to {math.prod(sizes)} but there are {n} devices; {fix}")
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=axis_types, devices=devices)


# ----------------------------------------------------------------------------------------------- rules


def _normalize_axes(name: str, axes: Any) -> MeshAxes:
    if axes is None or isinstance(axes, str):
        return axes
    if isinstance(axes, Sequence):
        axes = tuple(axes)
        if not all(isinstance(a, str) for a in axes):
            raise UserError(f"rule for {name!r}: mesh axes must be strings, got {axes!r}")
        return axes if axes else None
    raise UserError(f"rule for {name!r}: mesh axes must be None, a string or a list of strings: {axes!r}")


def normalize_rules(rules: Rules) -> tuple[tuple[str, MeshAxes], ...]:
    """Rules as hashable ``((name, axes), ...)``, also accepting the list-of-lists form a config/JSON has."""
    out = []
    for rule in rules:
        if isinstance(rule, str) or len(rule) != 2:
            raise UserError(f"a sharding rule must be a (logical_name, mesh_axes) pair, got {rule!r}")
        name, axes = rule
        if not isinstance(name, str):
            raise UserError(f"a sharding rule's logical name must be a string, got {name!r}")
        out.append((name, _normalize_axes(name, axes)))
    return tuple(out)


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_mesh_spec(logical_spec: Sequence[str | None] | PartitionSpec, rules: Rules) -> PartitionSpec:
    """Map logical dimension names to a mesh ``PartitionSpec`` (see the module docstring for precedence).

    ``None`` entries stay ``None``. Raises ``ValueError`` for a name without any rule and for a name used
    by two dimensions of one array.
    """
    names = list(logical_spec)
    rules = normalize_rules(rules)
    known = {name for name, _ in rules}
    for name in names:
        if name is not None and not isinstance(name, str):
            raise ValueError(f"logical spec {tuple(names)!r}: entries must be names or None, got {name!r}")
        if name is not None and name not in known:
            raise ValueError(
                f"logical axis name {name!r} (in {tuple(names)!r}) has no sharding rule; add it to "
                f"config.mesh.rules (known names: {sorted(known)})"
            )
    dups = sorted({n for n in names if n is not None and names.count(n) > 1})
    if dups:
        raise ValueError(f"logical spec {tuple(names)!r} uses {dups} for more than one dimension")
    unassigned = object()
    result: list[Any] = [unassigned if n is not None else None for n in names]
    used: set[str] = set()
    for name, axes in rules:
        if name not in names:
            continue
        pos = names.index(name)
        mesh_axes = _as_tuple(axes)
        if result[pos] is unassigned and not used.intersection(mesh_axes):
            result[pos] = axes
            used.update(mesh_axes)
    return PartitionSpec(*[None if r is unassigned else r for r in result])


# ------------------------------------------------------------------------------------------ shardings


def _path_str(path: Sequence[Any]) -> str:
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(key.name)
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.FlattenedIndexKey):
            parts.append(str(key.key))
        else:
            parts.append(str(key))
    return "/".join(parts)


def _mesh_axes_size(mesh: Mesh, axes: MeshAxes) -> int:
    return math.prod(mesh.shape[a] for a in _as_tuple(axes))


def _is_leaf(x: Any) -> bool:
    return isinstance(x, nn.meta.AxisMetadata | PartitionSpec)


def param_shardings(
    tree: Any,
    mesh: Mesh,
    rules: Rules,
    *,
    fallbacks: list[str] | None = None,
) -> Any:
    """A tree of ``NamedSharding`` for a tree of logically-named parameters.

    ``tree`` is typically ``jax.eval_shape(module.init, ...)`` (or its ``["params"]``) with parameters created
    through ``nn.with_logical_partitioning`` — leaves are ``nn.LogicallyPartitioned`` boxes — or a tree of
    logical ``PartitionSpec`` (as from ``nn.get_partition_spec``). Boxed optimizer states work too (optax
    keeps the boxes). Scalars need no names and are replicated; any other leaf without logical names is a
    ``ValueError`` naming its path.

    A dimension whose size is not divisible by the product of its mesh axes is replicated instead of
    failing (e.g. a 97-token vocab on tensor=2): a layout choice should not make a small model unrunnable.
    Each such fallback is logged as a warning and, if ``fallbacks`` is a list, appended to it as a
    message. Shape checks need shapes, so they are skipped for bare ``PartitionSpec`` leaves.
    """
    rules = normalize_rules(rules)

    def one(path, leaf):
        where = _path_str(path)
        if isinstance(leaf, PartitionSpec):
            logical, shape = tuple(leaf), None
        elif isinstance(leaf, nn.meta.AxisMetadata):
            pspec = nn.get_partition_spec(leaf)
            logical = tuple(pspec)
            shape = getattr(leaf.value, "shape", None)  # not unbox(): that adds a constraint under a mesh
        elif hasattr(leaf, "shape"):
            if len(leaf.shape) == 0:
                return NamedSharding(mesh, PartitionSpec())
            raise ValueError(
                f"parameter {where!r} (shape {tuple(leaf.shape)}) has no logical axis names; create it with "
                "nn.with_logical_partitioning(...)"
            )
        else:
            raise ValueError(f"parameter {where!r}: unexpected leaf {type(leaf).__name__}")
        if shape is not None and len(logical) != len(shape):
            raise ValueError(f"parameter {where!r}: logical names {logical} do not match its shape {shape}")
        try:
            spec = list(logical_to_mesh_spec(logical, rules))
        except ValueError as e:
            raise ValueError(f"parameter {where!r}: {e}") from None
        if shape is not None:
            for dim, axes in enumerate(spec):
                size = _mesh_axes_size(mesh, axes)
                if axes is not None and shape[dim] % size:
                    msg = (
                        f"{where}: dim {dim} ({logical[dim]}={shape[dim]}) is not divisible by mesh axes "
                        f"{axes!r} (size {size}); replicated"
                    )
                    log.warning("sharding fallback: %s", msg)
                    if fallbacks is not None:
                        fallbacks.append(msg)
                    spec[dim] = None
        return NamedSharding(mesh, PartitionSpec(*spec))

    return jax.tree_util.tree_map_with_path(one, tree, is_leaf=_is_leaf)


def rules_of(config: Any) -> list[tuple]:
    """The logical-axis rules table of a run config (``config.mesh.rules``) as a list of tuples."""
    return [tuple(r) for r in config.mesh.rules]


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding (scalars, step counters, PRNG keys)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dim split over ``data`` and ``fsdp``, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host numpy batch -> global ``jax.Array``s split on the batch dim.

    Single process: ``batch`` is the global batch, placed with ``jax.device_put``. Several processes:
    ``batch`` is this process's share and the global array is assembled with
    ``jax.make_array_from_process_local_data`` (global batch = local batch x process count).
    """
    n = _mesh_axes_size(mesh, BATCH_AXES)
    sharding = batch_sharding(mesh)
    processes = jax.process_count()
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.ndim == 0 or (value.shape[0] * processes) % n:
            raise ValueError(
                f"batch[{key!r}] has shape {value.shape}: its leading (batch) dim"
                f"{f' x {processes} processes' if processes > 1 else ''} must be divisible by "
                f"data*fsdp = {n} (mesh {dict(mesh.shape)})"
            )
        if processes == 1:
            out[key] = jax.device_put(value, sharding)
        else:
            out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out


# ------------------------------------------------------------------------------------------- reporting


def spec_to_str(spec: PartitionSpec) -> str:
    """``PartitionSpec(('data', 'fsdp'), None)`` -> ``"[(data, fsdp), None]"`` (stable, diff-friendly)."""
    parts = []
    for axes in spec:
        if axes is None:
            parts.append("None")
        elif isinstance(axes, str):
            parts.append(axes)
        else:
            parts.append("(" + ", ".join(axes) + ")")
    return "[" + ", ".join(parts) + "]"


def partition_spec_table(shardings_tree: Any) -> dict[str, str]:
    """``{"layers/attn/q/kernel": "[fsdp, tensor, None]", ...}`` for a tree of ``NamedSharding``/specs."""
    is_leaf = lambda x: isinstance(x, NamedSharding | PartitionSpec)
    flat, _ = jax.tree_util.tree_flatten_with_path(shardings_tree, is_leaf=is_leaf)
    table = {}
    for path, leaf in flat:
        spec = leaf.spec if isinstance(leaf, NamedSharding) else leaf
        table[_path_str(path)] = spec_to_str(spec)
    return table


def unbox(tree: Any) -> Any:
    """Strips logical-axis boxes without ``nn.meta.unbox``'s side effect (a sharding constraint under a mesh)."""
    return jax.tree.map(lambda x: x.value if _is_leaf(x) else x, tree, is_leaf=_is_leaf)
