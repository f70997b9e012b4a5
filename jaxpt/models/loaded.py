"""A model from disk, ready to run: config, params and tokenizer (what eval, judges and data generation load)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from jaxpt.data.tokenizer import load_tokenizer
from jaxpt.errors import UserError
from jaxpt.models.config import ModelConfig
from jaxpt.models.hf import load_hf
from jaxpt.models.orbax_io import load_any, load_orbax


@dataclasses.dataclass
class LoadedModel:
    """A model ready to run: its config, params, tokenizer and where it came from (for provenance)."""

    config: ModelConfig
    params: Any
    tokenizer: Any
    path: str = ""


def load_model(path: str, tokenizer_path: str = "") -> LoadedModel:
    """A causal LM from a HF dir, an Orbax params dir or a run workdir (``load_any``), with its tokenizer."""
    config, params, tok_dir = load_any(path)
    return LoadedModel(config, params, load_tokenizer(tokenizer_path or tok_dir), os.fspath(path))


def load_reward_model(path: str, tokenizer_path: str = "") -> LoadedModel:
    """A reward model: a HF ``*ForSequenceClassification`` dir (``num_labels=1``) or an Orbax params dir /
    run workdir whose params are ``{"decoder": ..., "score": ...}``."""
    if any(f.endswith((".safetensors", ".safetensors.index.json")) for f in os.listdir(path)):
        config, params = load_hf(path, head="score")
        tok_dir = path
    else:
        config, params, tok_dir = load_orbax(path)
        if "score" not in params:
            raise UserError(f"{path} holds a causal LM, not a reward model (no 'score' head in its params)")
    return LoadedModel(config, params, load_tokenizer(tokenizer_path or tok_dir), os.fspath(path))
