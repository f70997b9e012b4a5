"""Hugging Face weights ⇄ jaxpt params: the one name map, ``load_hf`` and ``save_hf``.

Both directions stream tensor by tensor through safetensors files read with ``np.memmap`` and written with a
precomputed header, so host memory holds the model at most once (plus one tensor being converted) and no
torch is needed. bfloat16 is handled through ``ml_dtypes``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jaxpt.errors import UserError
from jaxpt.models.config import ModelConfig
from jaxpt.models.decoder import abstract_params
from jaxpt.models.reward import abstract_reward_params
from jaxpt.sharding import unbox

SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
# Buffers some checkpoints carry that are not parameters.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")
DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
_ARCH_PREFIX = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "gpt2": "GPT2"}
# transformers' causal-LM class per family (GPT-2's is the odd one out); used when the source config names none.
_CAUSAL_LM_CLASS = {t: f"{p}ForCausalLM" for t, p in _ARCH_PREFIX.items()} | {"gpt2": "GPT2LMHeadModel"}
# Names older jaxpt exports wrote that transformers has no class for.
_INVALID_ARCHITECTURES = frozenset({"GPT2ForCausalLM"})


class WeightsError(UserError):
    """A checkpoint does not match the architecture its config describes."""


# ------------------------------------------------------------------------------------ safetensors IO
def read_safetensors_header(path: str) -> tuple[dict[str, Any], int]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise WeightsError(f"{path}: not a safetensors file (truncated header)")
        (n,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise WeightsError(f"{path}: corrupt safetensors header ({e})") from None
    header.pop("__metadata__", None)
    return header, 8 + n


def iter_safetensors(path: str) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (name, array) lazily; arrays are read-only memory maps of the file."""
    header, offset = read_safetensors_header(path)
    size = os.path.getsize(path)
    for name, info in header.items():
        dtype = SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise WeightsError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        if offset + end > size:
            raise WeightsError(f"{path}: tensor {name} runs past the end of the file (truncated?)")
        shape = tuple(info["shape"])
        if int(np.prod(shape)) * dtype.itemsize != end - begin:
            raise WeightsError(f"{path}: tensor {name} byte size does not match shape {shape}")
        if end == begin:
            yield name, np.zeros(shape, dtype)
        else:
            yield name, np.memmap(path, dtype=dtype, mode="r", offset=offset + begin, shape=shape)


def write_safetensors(path: str, tensors: list[tuple[str, tuple[int, ...], np.dtype, Callable[[], np.ndarray]]]):
    """Writes tensors one at a time; each is produced by its callable only when its bytes are written."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    pos = 0
    for name, shape, dtype, _ in tensors:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        header[name] = {
            "dtype": _DTYPE_NAMES[np.dtype(dtype)],
            "shape": list(shape),
            "data_offsets": [pos, pos + n],
        }
        pos += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path + ".partial"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, dtype, produce in tensors:
            array = np.ascontiguousarray(produce(), dtype=dtype)
            if array.shape != tuple(shape):
                raise WeightsError(f"internal: {name} produced shape {array.shape}, header says {shape}")
            f.write(array.tobytes())
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ name map
@dataclasses.dataclass(frozen=True)
class Rule:
    """HF tensors ``hf`` ⇄ jaxpt leaves ``ours`` (paths), with the two conversions (``xp`` = np or jnp)."""

    hf: tuple[str, ...]
    ours: tuple[tuple[str, ...], ...]
    to_ours: Callable[..., tuple[Any, ...]]
    to_hf: Callable[..., tuple[Any, ...]]


def _same(xp, x):
    return (x,)


def _linear(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> tuple[Callable, Callable]:
    """torch Linear weight [out, in] ⇄ our kernel [*in_shape, *out_shape]."""
    n_in, n_out = int(np.prod(in_shape)), int(np.prod(out_shape))
    return (
        lambda xp, w: (w.T.reshape(*in_shape, *out_shape),),
        lambda xp, k: (k.reshape(n_in, n_out).T,),
    )


def _reshape(shape: tuple[int, ...]) -> tuple[Callable, Callable]:
    return (lambda xp, b: (b.reshape(shape),), lambda xp, b: (b.reshape(-1),))


def _llama_rules(c: ModelConfig) -> list[Rule]:
    e, h, k, d, m = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size
    rules = [Rule(("model.embed_tokens.weight",), (("embed", "embedding"),), _same, _same)]
    for i in range(c.num_layers):
        p, o = f"model.layers.{i}.", f"layers_{i}"

        def add(hf, ours, conv=(_same, _same), p=p, o=o):
            rules.append(Rule((p + hf,), ((o, *ours),), *conv))

        for name, heads in (("q", h), ("k", k), ("v", k)):
            add(f"self_attn.{name}_proj.weight", ("attn", name, "kernel"), _linear((e,), (heads, d)))
            if c.qkv_bias:
                add(f"self_attn.{name}_proj.bias", ("attn", name, "bias"), _reshape((heads, d)))
        add("self_attn.o_proj.weight", ("attn", "o", "kernel"), _linear((h, d), (e,)))
        if c.o_bias:
            add("self_attn.o_proj.bias", ("attn", "o", "bias"))
        if c.qk_norm:
            add("self_attn.q_norm.weight", ("attn", "q_norm", "scale"))
            add("self_attn.k_norm.weight", ("attn", "k_norm", "scale"))
        for name, shape in (("gate", ((e,), (m,))), ("up", ((e,), (m,))), ("down", ((m,), (e,)))):
            add(f"mlp.{name}_proj.weight", ("mlp", name, "kernel"), _linear(*shape))
            if c.mlp_bias:
                add(f"mlp.{name}_proj.bias", ("mlp", name, "bias"))
        add("input_layernorm.weight", ("input_norm", "scale"))
        add("post_attention_layernorm.weight", ("post_attn_norm", "scale"))
    rules.append(Rule(("model.norm.weight",), (("final_norm", "scale"),), _same, _same))
    if not c.tie_word_embeddings:
        rules.append(Rule(("lm_head.weight",), (("lm_head", "kernel"),), *_linear((e,), (c.vocab_size,))))
    return rules


def _gpt2_rules(c: ModelConfig) -> list[Rule]:
    e, h, d = c.hidden_size, c.num_heads, c.head_dim
    rules = [
        Rule(("transformer.wte.weight",), (("embed", "embedding"),), _same, _same),
        Rule(("transformer.wpe.weight",), (("position_embed", "embedding"),), _same, _same),
    ]

    def split_qkv_w(xp, w):  # Conv1D weight [E, 3E] -> three [E, H, D]
        return tuple(w[:, j * e : (j + 1) * e].reshape(e, h, d) for j in range(3))

    def join_qkv_w(xp, q, k, v):
        return (xp.concatenate([x.reshape(e, e) for x in (q, k, v)], axis=1),)

    def split_qkv_b(xp, b):
        return tuple(b[j * e : (j + 1) * e].reshape(h, d) for j in range(3))

    def join_qkv_b(xp, q, k, v):
        return (xp.concatenate([x.reshape(e) for x in (q, k, v)]),)

    conv1d_o = (lambda xp, w: (w.reshape(h, d, e),), lambda xp, k: (k.reshape(e, e),))
    for i in range(c.num_layers):
        p, o = f"transformer.h.{i}.", f"layers_{i}"

        def add(hf, ours, conv=(_same, _same), p=p, o=o):
            rules.append(Rule((p + hf,), ((o, *ours),), *conv))

        qkv = lambda leaf: tuple((o, "attn", n, leaf) for n in ("q", "k", "v"))  # noqa: B023
        rules.append(Rule((p + "attn.c_attn.weight",), qkv("kernel"), split_qkv_w, join_qkv_w))
        rules.append(Rule((p + "attn.c_attn.bias",), qkv("bias"), split_qkv_b, join_qkv_b))
        add("attn.c_proj.weight", ("attn", "o", "kernel"), conv1d_o)
        add("attn.c_proj.bias", ("attn", "o", "bias"))
        add("mlp.c_fc.weight", ("mlp", "fc", "kernel"))
        add("mlp.c_fc.bias", ("mlp", "fc", "bias"))
        add("mlp.c_proj.weight", ("mlp", "down", "kernel"))
        add("mlp.c_proj.bias", ("mlp", "down", "bias"))
        for hf_ln, ours in (("ln_1", "input_norm"), ("ln_2", "post_attn_norm")):
            add(f"{hf_ln}.weight", (ours, "scale"))
            add(f"{hf_ln}.bias", (ours, "bias"))
    rules.append(Rule(("transformer.ln_f.weight",), (("final_norm", "scale"),), _same, _same))
    rules.append(Rule(("transformer.ln_f.bias",), (("final_norm", "bias"),), _same, _same))
    if not c.tie_word_embeddings:
        rules.append(Rule(("lm_head.weight",), (("lm_head", "kernel"),), *_linear((e,), (c.vocab_size,))))
    return rules


HEADS = ("lm", "score")


def weight_rules(config: ModelConfig, head: str = "lm") -> list[Rule]:
    """The HF name map for ``config``'s architecture, on per-layer (unscanned) paths.

    ``head="lm"``: ``*ForCausalLM``. ``head="score"``: ``*ForSequenceClassification`` with one label (reward
    and value models): the decoder lives under ``decoder/`` and ``score.weight`` is the scalar head.
    """
    if head not in HEADS:
        raise ValueError(f"head={head!r}; expected one of {HEADS}")
    rules = _gpt2_rules(config) if config.model_type == "gpt2" else _llama_rules(config)
    if head == "lm":
        return rules
    rules = [
        dataclasses.replace(r, ours=tuple(("decoder", *p) for p in r.ours))
        for r in rules
        if r.hf != ("lm_head.weight",)
    ]
    rules.append(Rule(("score.weight",), (("score", "kernel"),), *_linear((config.hidden_size,), (1,))))
    return rules


def hf_tensor_shapes(config: ModelConfig, head: str = "lm") -> dict[str, tuple[int, ...]]:
    """Expected HF tensor shapes, derived from our own parameter shapes through the name map."""
    unscanned = config.replace(scan_layers=False)
    abstract = abstract_params(unscanned) if head == "lm" else abstract_reward_params(unscanned)
    ours = _flat(_unbox(abstract))
    shapes = {}
    for rule in weight_rules(config, head):
        outs = jax.eval_shape(lambda *a, r=rule: r.to_hf(jnp, *a), *[ours[p] for p in rule.ours])
        shapes.update({n: tuple(o.shape) for n, o in zip(rule.hf, outs, strict=True)})
    return shapes


# ------------------------------------------------------------------------------------------ load / save
def _unbox(tree):
    return unbox(tree)


def _flat(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def _checkpoint_files(model_dir: str) -> list[str]:
    index = os.path.join(model_dir, "model.safetensors.index.json")
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return [os.path.join(model_dir, name) for name in sorted(set(weight_map.values()))]
    if os.path.exists(single):
        return [single]
    if os.path.exists(os.path.join(model_dir, "pytorch_model.bin")):
        raise WeightsError(f"{model_dir} holds pytorch_model.bin only; jaxpt reads safetensors (re-save it)")
    raise WeightsError(f"no model.safetensors or model.safetensors.index.json in {model_dir}")


def _normalise_name(name: str, config: ModelConfig) -> str:
    if config.model_type == "gpt2" and not name.startswith(("transformer.", "lm_head.", "score.")):
        return "transformer." + name  # GPT2Model (no LM head) checkpoints
    return name


def load_hf(
    model_dir: str,
    *,
    param_dtype: str | None = None,
    shardings: Any = None,
    head: str = "lm",
    **config_overrides: Any,
) -> tuple[ModelConfig, dict[str, Any]]:
    """Loads a HF causal-LM directory (config.json + safetensors) as ``(ModelConfig, params)``.

    Tensors are converted one at a time; with ``shardings`` (a tree of ``jax.sharding.Sharding`` matching the
    params) each leaf goes straight to its devices, so the host never holds the whole model.
    ``head="score"`` reads a ``*ForSequenceClassification`` reward model (see ``weight_rules``).
    """
    if param_dtype is not None:
        config_overrides["param_dtype"] = param_dtype
    config = ModelConfig.from_hf(model_dir, **config_overrides)
    expected = hf_tensor_shapes(config, head)
    rules = weight_rules(config, head)
    owner: dict[str, Rule] = {}
    for rule in rules:
        owner.update({n: rule for n in rule.hf})

    pending: dict[Rule, dict[str, np.ndarray]] = {}
    flat_params: dict[tuple[str, ...], Any] = {}
    unexpected = []
    flat_shardings = _flat(shardings) if shardings is not None else None
    dtype = jnp.dtype(config.param_dtype)
    for path in _checkpoint_files(model_dir):
        for raw_name, array in iter_safetensors(path):
            name = _normalise_name(raw_name, config)
            if name.endswith(_IGNORED_SUFFIXES):
                continue
            if name == "lm_head.weight" and config.tie_word_embeddings:
                continue  # tied: the head is the embedding
            rule = owner.get(name)
            if rule is None:
                unexpected.append(raw_name)
                continue
            if tuple(array.shape) != expected[name]:
                raise WeightsError(
                    f"tensor {raw_name} has shape {tuple(array.shape)}, expected {expected[name]} from config.json"
                )
            got = pending.setdefault(rule, {})
            got[name] = array
            if len(got) == len(rule.hf):
                outs = rule.to_ours(np, *(got[n] for n in rule.hf))
                for p, value in zip(rule.ours, outs, strict=True):
                    value = np.asarray(value).astype(dtype)
                    if flat_shardings is not None:
                        value = jax.device_put(value, flat_shardings[_scan_path(config, p)[0]])
                    flat_params[p] = value
                del pending[rule]
    if unexpected:
        raise WeightsError(f"unexpected tensors for {config.model_type}: {sorted(unexpected)[:10]}")
    missing = sorted(set(owner) - {n for r in rules if r.ours[0] in flat_params for n in r.hf})
    if missing:
        raise WeightsError(f"missing tensors in {model_dir}: {missing[:10]}{' …' if len(missing) > 10 else ''}")
    params: dict[str, Any] = {}
    if config.scan_layers:
        _stack_layers(config, flat_params)
    for p, v in flat_params.items():
        _set(params, p, v)
    return config, params


def _scan_path(config: ModelConfig, path: tuple[str, ...]) -> tuple[tuple[str, ...], int | None]:
    """Maps a per-layer path to its scanned path (``layers``, leading layer axis) and layer index."""
    for j, part in enumerate(path):
        if config.scan_layers and part.startswith("layers_"):
            return (*path[:j], "layers", *path[j + 1 :]), int(part.split("_")[1])
    return path, None


def _stack_layers(config: ModelConfig, flat: dict[tuple[str, ...], Any]) -> None:
    grouped: dict[tuple[str, ...], list[Any]] = {}
    for p in [p for p in flat if _scan_path(config, p)[1] is not None]:
        sp, i = _scan_path(config, p)
        grouped.setdefault(sp, [None] * config.num_layers)[i] = flat.pop(p)
    for sp, leaves in grouped.items():
        flat[sp] = jnp.stack(leaves) if isinstance(leaves[0], jax.Array) else np.stack(leaves)


def export_architectures(model_type: str, source: Any, head: str = "lm") -> list[str]:
    """The ``architectures`` of an exported config.json: the source model's own names when they fit ``head``
    (a fine-tune exports as what it was loaded as), else transformers' class for the family (``GPT2LMHeadModel``,
    ``LlamaForCausalLM``, ``*ForSequenceClassification``), so ``from_pretrained`` builds the right model."""
    suffixes = ("ForSequenceClassification",) if head == "score" else ("ForCausalLM", "LMHeadModel")
    names = list(source) if isinstance(source, list | tuple) else []
    if names and all(isinstance(n, str) and n.endswith(suffixes) and n not in _INVALID_ARCHITECTURES for n in names):
        return names
    if head == "score":
        return [f"{_ARCH_PREFIX[model_type]}ForSequenceClassification"]
    return [_CAUSAL_LM_CLASS[model_type]]


def save_hf(
    config: ModelConfig,
    params: dict[str, Any],
    out_dir: str,
    *,
    tokenizer: Any = None,
    dtype: str | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
    head: str = "lm",
) -> None:
    """Writes config.json, safetensors (sharded with an index above ``max_shard_bytes``) and tokenizer files.

    Works from any params we hold, sharded or not: each leaf is fetched to host on its own when its bytes are
    written. ``tokenizer`` is a tokenizer object or a directory whose tokenizer files are copied.
    ``head="score"`` writes a ``*ForSequenceClassification`` (num_labels=1) reward model.
    """
    if os.path.exists(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} is not empty; refusing to overwrite (pass overwrite=True)")
    os.makedirs(out_dir, exist_ok=True)
    out_dtype = np.dtype(jnp.dtype(dtype or config.param_dtype))
    flat = _flat(params)
    tensors = []
    for rule in weight_rules(config, head):
        leaves = []
        for p in rule.ours:
            sp, i = _scan_path(config, p)
            if sp not in flat:
                raise WeightsError(f"params have no leaf {'/'.join(sp)} needed for {rule.hf}")
            leaves.append((flat[sp], i))
        abstract = [jax.ShapeDtypeStruct(x.shape[1:] if i is not None else x.shape, x.dtype) for x, i in leaves]
        shapes = jax.eval_shape(lambda *a, r=rule: r.to_hf(jnp, *a), *abstract)
        for j, (name, shape) in enumerate(zip(rule.hf, shapes, strict=True)):

            def produce(rule=rule, leaves=leaves, j=j):
                host = [np.asarray(jax.device_get(x if i is None else x[i])) for x, i in leaves]
                return np.asarray(rule.to_hf(np, *host)[j]).astype(out_dtype)

            tensors.append((name, tuple(shape.shape), out_dtype, produce))

    shards, current, size = [], [], 0
    for t in tensors:
        n = int(np.prod(t[1])) * out_dtype.itemsize
        if current and size + n > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(t)
        size += n
    shards.append(current)
    if len(shards) == 1:
        write_safetensors(os.path.join(out_dir, "model.safetensors"), shards[0])
    else:
        weight_map, total = {}, 0
        for k, shard in enumerate(shards):
            fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(os.path.join(out_dir, fname), shard)
            for name, shape, _, _ in shard:
                weight_map[name] = fname
                total += int(np.prod(shape)) * out_dtype.itemsize
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

    hf = config.to_hf()
    hf["torch_dtype"] = hf["dtype"] = str(jnp.dtype(out_dtype).name)
    hf["architectures"] = export_architectures(config.model_type, hf.get("architectures"), head)
    if head == "score":
        hf["num_labels"] = 1
        hf.pop("id2label", None)
        hf.pop("label2id", None)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf, f, indent=2, sort_keys=True)
    if tokenizer is not None:
        if isinstance(tokenizer, str | os.PathLike):
            for fname in os.listdir(tokenizer):
                if fname.startswith(("tokenizer", "special_tokens_map", "vocab", "merges", "chat_template")):
                    shutil.copy(os.path.join(tokenizer, fname), out_dir)
        else:
            tokenizer.save_pretrained(out_dir)
