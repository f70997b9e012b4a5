"""Build a model from a config section: a HF directory to start from, or a from-scratch HF-style config."""

from __future__ import annotations

from typing import Any

import jax
from ml_collections import ConfigDict

from jaxpt.models.config import ModelConfig
from jaxpt.models.decoder import init_params
from jaxpt.models.hf import load_hf

RUN_OPTIONS = ("dtype", "param_dtype", "remat", "scan_layers", "attention")


def run_options(model_cfg: Any) -> dict[str, Any]:
    """The run-time options of ``config.model`` that ``ModelConfig.from_hf`` / ``load_hf`` take."""
    return {k: model_cfg[k] for k in RUN_OPTIONS if k in model_cfg}


def model_config_from(cfg: ConfigDict, tokenizer: Any = None) -> ModelConfig:
    """``cfg.path`` (HF dir) wins; otherwise ``cfg.scratch`` is a config.json-style dict for a new model."""
    run = run_options(cfg)
    if cfg.get("path"):
        return ModelConfig.from_hf(cfg.path, **run)
    scratch = cfg.scratch
    # to_dict: nested sections (Llama 3's rope_scaling) as plain dicts, as a config.json has them
    hf = scratch.to_dict() if isinstance(scratch, ConfigDict) else dict(scratch)
    if tokenizer is not None:
        hf["vocab_size"] = len(tokenizer)
        hf["bos_token_id"] = tokenizer.bos_token_id
        hf["eos_token_id"] = tokenizer.eos_token_id
        hf["pad_token_id"] = tokenizer.pad_token_id
    return ModelConfig.from_hf(hf, **run)


def model_params_from(cfg: ConfigDict, config: ModelConfig, shardings: Any, seed: int) -> Any:
    """Params placed on ``shardings``: streamed from the HF checkpoint, or initialised in a sharded jit."""
    if cfg.get("path"):
        run = run_options(cfg)
        _, params = load_hf(cfg.path, shardings=shardings, **run)
        return params
    return jax.jit(lambda: init_params(config, jax.random.key(seed)), out_shardings=shardings)()
