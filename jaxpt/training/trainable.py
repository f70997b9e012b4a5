"""Which parameters train: a mask over the params tree, from regexes over the parameters' '/'-joined paths.

    c.train.trainable = ("layers_1/.*", "final_norm/.*")  # only these train (``re.fullmatch`` on each path) ...
    c.train.frozen = ("layers_1/attn/.*",)                # ... except these

Paths are the params tree's keys joined by ``/``: ``embed/embedding``, ``layers_0/mlp/up/kernel``,
``final_norm/scale``, ``lm_head/kernel`` (untied models); PPO nests its two models, ``policy/embed/embedding``,
``value/score/kernel``. With ``model.scan_layers`` the layers are one stacked leaf per weight
(``layers/mlp/up/kernel``), so a pattern selects that weight in every layer; choosing single layers needs
``scan_layers=False``. A parameter trains when the algorithm's own mask (``AlgorithmParts.trainable``, e.g.
LoRA's adapters only) allows it, some ``trainable`` pattern matches it and no ``frozen`` pattern does. A
pattern that matches no parameter is an error (a typo must not silently train everything, or nothing).

The mask is a tree of Python bools in the params' structure (logical-axis boxes count as leaves, so one mask
serves the boxed abstract params and the arrays). The optimizer keeps state only for masked-in leaves
(``optax.masked``) and the train step differentiates only with respect to them (``partition`` / ``merge``).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import optax

from jaxpt.errors import UserError

__all__ = ["count_params", "mask_from_config", "merge", "param_paths", "partition", "trainable_mask"]

Mask = Any  # a tree of bools in the params' structure (or, from an algorithm, a prefix of it)


def _is_box(x: Any) -> bool:
    return isinstance(x, nn.meta.AxisMetadata)


def _flatten(params: Any) -> tuple[list[tuple[Any, Any]], Any]:
    return jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_box)


def param_paths(params: Any) -> list[str]:
    """``["embed/embedding", "final_norm/scale", …]``: every parameter's path, in tree order."""
    return [jax.tree_util.keystr(path, simple=True, separator="/") for path, _ in _flatten(params)[0]]


def _size(leaf: Any) -> int:
    return math.prod((leaf.value if _is_box(leaf) else leaf).shape)


def _compile(name: str, patterns: Sequence[str]) -> list[re.Pattern]:
    if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
        raise UserError(f"train.{name} must be a list of regexes, got {patterns!r}")
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise UserError(f"train.{name}: {p!r} is not a regular expression ({e})") from None
    return out


def _no_match(name: str, pattern: str, paths: list[str]) -> ValueError:
    close = difflib.get_close_matches(pattern, paths, n=5, cutoff=0.0)
    hint = ""
    if any(p.startswith("layers/") for p in paths) and re.search(r"layers_\d", pattern):
        hint = (
            " (model.scan_layers stacks the layers: one leaf per weight, 'layers/…'; per-layer masks need "
            "scan_layers=False)"
        )
    return ValueError(
        f"train.{name} pattern {pattern!r} matches no parameter{hint}; patterns match whole '/'-joined paths "
        f"(re.fullmatch), e.g. {', '.join(close)} ({len(paths)} parameters in all)"
    )


def trainable_mask(
    params: Any,
    trainable: Sequence[str] = (".*",),
    frozen: Sequence[str] = (),
    allowed: Callable[[Any], Mask] | None = None,
) -> Mask:
    """The bool mask of ``params`` (arrays, ``ShapeDtypeStruct``s or logical boxes): a leaf trains when
    ``allowed(params)`` (a mask or a prefix of one; None: all) lets it, a ``trainable`` regex fully matches its
    path and no ``frozen`` regex does. Raises ``ValueError`` for a pattern that matches no parameter and when
    nothing would train."""
    flat, treedef = _flatten(params)
    paths = param_paths(params)
    if allowed is None:
        base = [True] * len(flat)
    else:  # broadcast a prefix mask ({"policy": True, "value": False}) down to the leaves
        prefix = allowed(params)
        full = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: bool(m), sub, is_leaf=_is_box), prefix, params)
        base = treedef.flatten_up_to(full)
    matches = {}
    for name, patterns in (("trainable", trainable), ("frozen", frozen)):
        for regex in _compile(name, patterns):
            hit = [regex.fullmatch(p) is not None for p in paths]
            if not any(hit):
                raise _no_match(name, regex.pattern, paths)
            matches.setdefault(name, []).append(hit)
    train_hits = matches.get("trainable", [])
    frozen_hits = matches.get("frozen", [])
    mask = [
        bool(base[i]) and any(h[i] for h in train_hits) and not any(h[i] for h in frozen_hits)
        for i in range(len(paths))
    ]
    if not any(mask):
        raise UserError(f"no parameter trains with train.trainable={tuple(trainable)}, train.frozen={tuple(frozen)}")
    return treedef.unflatten(mask)


def mask_from_config(train: Any, params: Any, allowed: Callable[[Any], Mask] | None = None) -> Mask | None:
    """``trainable_mask`` from a config's ``train`` section (``train.trainable``, ``train.frozen``); None when
    every parameter trains (the optimizer and step then run unmasked, as they always did)."""
    mask = trainable_mask(params, tuple(train.trainable), tuple(train.frozen), allowed)
    return None if all(jax.tree.leaves(mask)) else mask


def count_params(params: Any, mask: Mask | None = None) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (``mask`` None: all train)."""
    sizes = [_size(leaf) for _, leaf in _flatten(params)[0]]
    keep = [True] * len(sizes) if mask is None else jax.tree.leaves(mask)
    return sum(s for s, m in zip(sizes, keep, strict=True) if m), sum(sizes)


def partition(tree: Any, mask: Mask) -> tuple[Any, Any]:
    """``(trainable, frozen)``: ``tree`` twice, each with ``optax.MaskedNode()`` (no leaves) in the other's places."""
    return (
        jax.tree.map(lambda m, x: x if m else optax.MaskedNode(), mask, tree),
        jax.tree.map(lambda m, x: optax.MaskedNode() if m else x, mask, tree),
    )


def merge(mask: Mask, trainable: Any, frozen: Any) -> Any:
    """The inverse of ``partition``."""
    return jax.tree.map(lambda m, t, f: t if m else f, mask, trainable, frozen)
