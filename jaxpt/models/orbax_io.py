"""Orbax ⇄ Hugging Face: params-only Orbax checkpoints and run checkpoints, behind ``jaxpt convert``.

A params directory holds ``params/`` (Orbax), ``config.json`` (the HF config) and tokenizer files. A run
workdir holds ``model/`` (HF config + tokenizer, written at start) and ``checkpoints/<step>/state``.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import numpy as np
import orbax.checkpoint as ocp

from jaxpt.errors import PathNotFound
from jaxpt.models.config import ModelConfig
from jaxpt.models.hf import load_hf, save_hf

_TOKENIZER_PREFIXES = ("tokenizer", "special_tokens_map", "vocab", "merges", "chat_template")


def _require_empty(path: str) -> None:
    if os.path.exists(path) and os.listdir(path):
        raise FileExistsError(f"{path} is not empty; refusing to overwrite")


def copy_tokenizer_files(src: str, dst: str) -> None:
    os.makedirs(dst, exist_ok=True)
    for fname in os.listdir(src):
        if fname.startswith(_TOKENIZER_PREFIXES):
            shutil.copy(os.path.join(src, fname), dst)


def write_model_dir(config: ModelConfig, out_dir: str, tokenizer: Any = None) -> None:
    """config.json (+ tokenizer files): what a params checkpoint needs to be exported or sampled later."""
    import json

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config.to_hf(), f, indent=2, sort_keys=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)


def hf_to_orbax(hf_dir: str, out_dir: str, scan_layers: bool = False) -> None:
    _require_empty(out_dir)
    config, params = load_hf(hf_dir, scan_layers=scan_layers)
    os.makedirs(out_dir, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.abspath(os.path.join(out_dir, "params")), params)
    write_model_dir(config, out_dir)
    copy_tokenizer_files(hf_dir, out_dir)


def _latest_step(ckpt_dir: str) -> int:
    steps = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
    if not steps:
        raise PathNotFound(f"no checkpoints in {ckpt_dir} (the run saved none yet)")
    return steps[-1]


def load_orbax(src: str, step: int | None = None) -> tuple[ModelConfig, Any, str]:
    """(config, params as numpy, tokenizer dir) from a params dir or a run workdir."""
    src = os.path.abspath(src)
    if os.path.isdir(os.path.join(src, "checkpoints")):
        model_dir = os.path.join(src, "model")
        ckpt_dir = os.path.join(src, "checkpoints")
        step = _latest_step(ckpt_dir) if step is None else step
        with ocp.StandardCheckpointer() as ckptr:
            state = ckptr.restore(os.path.join(ckpt_dir, str(step), "state"))
        params = state["params"]
    elif os.path.isdir(os.path.join(src, "params")):
        model_dir = src
        with ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore(os.path.join(src, "params"))
    else:
        raise PathNotFound(
            f"{src} is neither a Hugging Face model dir (*.safetensors), an Orbax params dir (params/) nor a run "
            "(checkpoints/)"
        )
    scan = "layers" in params
    config = ModelConfig.from_hf(model_dir, scan_layers=scan)
    params = _to_numpy(params)
    return config, params, model_dir


def _to_numpy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)


def orbax_to_hf(src: str, out_dir: str, step: int | None = None, dtype: str | None = None) -> None:
    _require_empty(out_dir)
    config, params, model_dir = load_orbax(src, step)
    leaf = next(iter(_leaves(params)))
    config = config.replace(param_dtype=str(leaf.dtype))
    save_hf(config, params, out_dir, dtype=dtype)
    copy_tokenizer_files(model_dir, out_dir)


def _leaves(tree: Any):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree


def load_any(path: str) -> tuple[ModelConfig, Any, str]:
    """A HF directory, an Orbax params dir or a run workdir, as (config, params, tokenizer dir)."""
    if not os.path.isdir(path):
        what = "is not a directory" if os.path.exists(path) else "does not exist"
        raise PathNotFound(
            f"model directory {path!r} {what} (expected a Hugging Face model dir, an Orbax params dir or a run's "
            "workdir)"
        )
    if any(f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in os.listdir(path)):
        config, params = load_hf(path)
        return config, params, path
    return load_orbax(path)
