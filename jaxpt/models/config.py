"""Model configuration, read from a Hugging Face ``config.json``.

Sizes always come from the checkpoint's own config, never from presets: ``ModelConfig.from_hf`` is the
only way architecture facts enter jaxpt, and ``to_hf`` writes them back for export.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from typing import Any

from jaxpt.errors import PathNotFound, UserError

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gpt2")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "offload")
ATTENTION_BACKENDS = ("auto", "xla", "splash")  # jaxpt/models/attention.py


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of one decoder plus how we run it (dtypes, remat, scan)."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    norm_eps: float
    # Architecture switches (derived from model_type + config.json).
    norm_type: str = "rms"  # "rms" | "layernorm"
    position_type: str = "rope"  # "rope" | "learned"
    activation: str = "silu"  # "silu" (gated MLP) | "gelu_new" (GPT-2 MLP)
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # frozen dict items
    sliding_window: int | None = None
    final_logit_softcapping: float | None = None  # LM-head logits -> cap * tanh(logits / cap) (Gemma's name)
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    # Execution.
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = False
    attention: str = "xla"  # "auto" | "xla" | "splash" (jaxpt/models/attention.py)
    # The original config.json, so export writes back every field we do not model.
    hf_config: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise UserError(
                f"num_attention_heads={self.num_heads} is not a multiple of num_key_value_heads={self.num_kv_heads}"
            )
        if self.remat not in REMAT_POLICIES:
            raise UserError(f"remat={self.remat!r}; expected one of {REMAT_POLICIES}")
        if self.attention not in ATTENTION_BACKENDS:
            raise UserError(f"attention={self.attention!r}; expected one of {ATTENTION_BACKENDS}")

    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        return _thaw(self.rope_scaling) if self.rope_scaling else None

    @property
    def position_limit(self) -> int:
        """Positions the model was trained for: ``max_position_embeddings`` (GPT-2's ``n_positions``), or, for
        RoPE, as far as its scaling stretches them (``original_max_position_embeddings * factor``)."""
        limit = self.max_position_embeddings
        scaling = self.rope_scaling_dict
        if self.position_type == "rope" and scaling and scaling.get("factor"):
            base = scaling.get("original_max_position_embeddings") or self.max_position_embeddings
            limit = max(limit, int(base * float(scaling["factor"])))
        return limit

    def check_positions(self, needed: int, what: str, fix: str) -> None:
        """``needed`` positions (``0 .. needed - 1``) past :attr:`position_limit`: an error for learned position
        embeddings (there is no embedding to look up: XLA's gather returns NaN), a warning for RoPE (it
        extrapolates, with quality that usually degrades). ``what`` says what needs them, ``fix`` how to fit."""
        limit = self.position_limit
        if needed <= limit:
            return
        if self.position_type == "learned":
            raise UserError(
                f"{what} needs {needed} positions, but this {self.model_type} model has {limit} learned position "
                f"embeddings (n_positions={limit}); {fix}"
            )
        scaled = " with its rope scaling" if self.rope_scaling else ""
        _warn_once(
            f"{what} needs {needed} positions, past the {limit} this {self.model_type} model covers{scaled} "
            f"(max_position_embeddings={self.max_position_embeddings}); RoPE extrapolates, quality may drop"
        )

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return tuple(self.eos_token_id)

    def replace(self, **kwargs: Any) -> ModelConfig:
        return dataclasses.replace(self, **kwargs)

    def num_params(self) -> int:
        """Parameter count (embeddings included), used by FLOP/MFU accounting."""
        e, m, v = self.hidden_size, self.intermediate_size, self.vocab_size
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        attn = e * q + 2 * e * kv + q * e
        mlp = (3 if self.activation == "silu" else 2) * e * m
        per_layer = attn + mlp + 2 * e
        total = v * e + self.num_layers * per_layer + e
        if not self.tie_word_embeddings:
            total += e * v
        if self.position_type == "learned":
            total += self.max_position_embeddings * e
        return total

    # ------------------------------------------------------------------ HF config.json
    @classmethod
    def from_hf(cls, hf: dict[str, Any] | str | os.PathLike, **overrides: Any) -> ModelConfig:
        """Builds a config from a ``config.json`` dict, file or model directory."""
        where = ""
        if not isinstance(hf, dict):
            path = os.fspath(hf)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            if not os.path.exists(path):
                raise PathNotFound(f"no config.json at {path} (expected a Hugging Face model directory)")
            with open(path) as f:
                try:
                    hf = json.load(f)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path} is not valid JSON: {e}") from e
            where = f"{path}: "
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            archs = hf.get("architectures")
            raise UserError(
                f"{where}unsupported architecture: model_type={model_type!r} (architectures={archs}); "
                f"jaxpt supports {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        common = dict(
            model_type=model_type,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=_as_tuple_or_int(hf.get("eos_token_id")),
            pad_token_id=hf.get("pad_token_id"),
            final_logit_softcapping=hf.get("final_logit_softcapping"),
            hf_config=_freeze(hf),
        )
        if model_type == "gpt2":
            for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
                if hf.get(flag):
                    raise UserError(f"unsupported GPT-2 option {flag}=True")
            if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
                raise UserError(f"unsupported GPT-2 activation {hf.get('activation_function')!r}")
            e, h = hf["n_embd"], hf["n_head"]
            kw = dict(
                vocab_size=hf["vocab_size"],
                hidden_size=e,
                intermediate_size=hf.get("n_inner") or 4 * e,
                num_layers=hf["n_layer"],
                num_heads=h,
                num_kv_heads=h,
                head_dim=e // h,
                max_position_embeddings=hf["n_positions"],
                norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                norm_type="layernorm",
                position_type="learned",
                activation="gelu_new",
                qkv_bias=True,
                o_bias=True,
                mlp_bias=True,
                tie_word_embeddings=hf.get("tie_word_embeddings", True),
            )
        else:
            if hf.get("hidden_act", "silu") != "silu":
                raise UserError(f"unsupported hidden_act {hf.get('hidden_act')!r} for {model_type}")
            h = hf["num_attention_heads"]
            rope = _rope_parameters(hf)
            attention_bias = hf.get("attention_bias", False)
            window = None
            if model_type == "mistral":
                window = hf.get("sliding_window")
            elif model_type in ("qwen2", "qwen3") and hf.get("use_sliding_window"):
                raise UserError(f"{model_type} with use_sliding_window=True is not supported")
            kw = dict(
                vocab_size=hf["vocab_size"],
                hidden_size=hf["hidden_size"],
                intermediate_size=hf["intermediate_size"],
                num_layers=hf["num_hidden_layers"],
                num_heads=h,
                num_kv_heads=hf.get("num_key_value_heads") or h,
                head_dim=hf.get("head_dim") or hf["hidden_size"] // h,
                max_position_embeddings=hf.get("max_position_embeddings", 2048),
                norm_eps=hf.get("rms_norm_eps", 1e-6),
                qkv_bias=True if model_type == "qwen2" else attention_bias,
                o_bias=False if model_type == "qwen2" else attention_bias,
                mlp_bias=hf.get("mlp_bias", False),
                qk_norm=model_type == "qwen3",
                tie_word_embeddings=hf.get("tie_word_embeddings", False),
                rope_theta=rope.pop("rope_theta", 10000.0),
                rope_scaling=_freeze(rope) if rope.get("rope_type", "default") != "default" else None,
                sliding_window=window,
            )
        kw.update(common)
        kw.update(overrides)
        return cls(**kw)

    def to_hf(self) -> dict[str, Any]:
        """The config.json to export: the original one, with our token ids and sizes written back."""
        hf = _thaw(self.hf_config)
        if not hf:
            raise ValueError("this ModelConfig was not built from a HF config; cannot export config.json")
        hf["vocab_size"] = self.vocab_size
        hf["tie_word_embeddings"] = self.tie_word_embeddings
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, key)
            hf[key] = list(value) if isinstance(value, tuple) else value
        if self.final_logit_softcapping:
            hf["final_logit_softcapping"] = self.final_logit_softcapping
        else:
            hf.pop("final_logit_softcapping", None)
        hf["torch_dtype"] = hf.pop("torch_dtype", None) or self.param_dtype
        return hf


def _rope_parameters(hf: dict[str, Any]) -> dict[str, Any]:
    """RoPE settings from either transformers v5 ``rope_parameters`` or v4 ``rope_theta``/``rope_scaling``."""
    params = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling")
    if legacy:
        params.update(legacy)
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params.pop("type")
    params.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    params.setdefault("rope_type", "default")
    if params["rope_type"] not in ("default", "linear", "llama3"):
        raise UserError(f"unsupported rope_type {params['rope_type']!r}; jaxpt supports default, linear, llama3")
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        raise UserError("partial_rotary_factor != 1 is not supported")
    return params


def _as_tuple_or_int(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _freeze(d: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple((k, json.dumps(v)) for k, v in sorted(d.items()))


def _thaw(items: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    return {k: json.loads(v) for k, v in items}


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)
