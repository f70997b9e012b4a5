"""The decoder: Llama 2/3/3.1, Mistral, Qwen2/2.5, Qwen3 and GPT-2 in one readable file.

One ``Decoder`` covers every family; ``ModelConfig`` switches the few places where they differ (norm type,
learned vs rotary positions, gated vs plain MLP, biases, q/k norm, tied head). The module is pure Flax linen:
``Decoder(config).apply({"params": params}, tokens, ...)`` is a pure function of a params pytree.

Every parameter carries logical axis names and key activations are constrained by logical names, so the
sharding rules table in the config decides the layout (see ``jaxpt/sharding.py``).

Attention takes ``segment_ids`` (0 = padding) and per-token ``positions``; this one mechanism serves
right-padded training rows, left-padded generation prompts and packed documents (no attention across
segments, positions restart per document). For generation, a preallocated KV cache is passed in and
returned updated (``init_cache`` builds it).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.ad_checkpoint import checkpoint_name

from jaxpt.models.attention import SPLASH_BLOCK, AttentionMask, attention, resolve_backend
from jaxpt.models.config import ModelConfig
from jaxpt.models.matmul import matmul, softcap
from jaxpt.sharding import unbox

Array = jax.Array
Cache = dict[str, Any]

# Activations tagged with ``checkpoint_name`` (what the ``offload`` policy moves to host memory between the
# forward and the backward pass, as MaxText's Llama recipes do: the layer input and q/k/v/out projections).
OFFLOADED = ("decoder_layer_input", "query_proj", "key_proj", "value_proj", "out_proj")

_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "offload": jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=[],
        names_which_can_be_offloaded=list(OFFLOADED),
        offload_src="device",
        offload_dst="pinned_host",
    ),
}


def _init(stddev: float, axes: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(stddev), axes)


def _constant(value: float, axes: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.constant(value), axes)


def _constrain(x: Array, axes: tuple[str, ...]) -> Array:
    return nn.with_logical_constraint(x, axes)


# ---------------------------------------------------------------------------------------------- RoPE
def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """Inverse frequencies, incl. Llama-3.1 ("llama3") and linear scaling, as transformers computes them."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    scaling = config.rope_scaling_dict
    if scaling is None:
        return inv_freq.astype(np.float32)
    kind = scaling.get("rope_type", "default")
    if kind == "linear":
        return (inv_freq / scaling["factor"]).astype(np.float32)
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise ValueError(f"unsupported rope_type {kind!r}")


def apply_rope(x: Array, positions: Array, inv_freq: np.ndarray) -> Array:
    """Rotary embedding in the "rotate half" layout used by HF Llama-family checkpoints."""
    freqs = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)  # [B, T, D/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(emb), jnp.sin(emb)
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


# --------------------------------------------------------------------------------------------- norms
class RMSNorm(nn.Module):
    eps: float
    dtype: Any
    param_dtype: Any
    axis_name: str = "norm"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", _constant(1.0, (self.axis_name,)), (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        x32 = x32 * lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (scale * x32.astype(x.dtype)).astype(self.dtype)


class LayerNorm(nn.Module):
    eps: float
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", _constant(1.0, ("norm",)), (x.shape[-1],), self.param_dtype)
        bias = self.param("bias", _constant(0.0, ("norm",)), (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * lax.rsqrt(var + self.eps) * scale + bias
        return y.astype(self.dtype)


def _norm(config: ModelConfig, name: str) -> nn.Module:
    cls = RMSNorm if config.norm_type == "rms" else LayerNorm
    return cls(eps=config.norm_eps, dtype=config.dtype, param_dtype=config.param_dtype, name=name)


class Projection(nn.Module):
    """``x[..., *in] @ kernel[*in, *features] (+ bias)``: multi-dim projections with logical names per dim.

    (flax's DenseGeneral initialises a flat kernel and reshapes it, which breaks logical-axis boxes under a
    mesh; this keeps the kernel in its real shape from the start.)
    """

    features: tuple[int, ...]
    in_dims: int
    axes: tuple[str, ...]
    use_bias: bool
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape = (*x.shape[x.ndim - self.in_dims :], *self.features)
        kernel = self.param("kernel", _init(0.02, self.axes), shape, self.param_dtype)
        y = matmul(x.astype(self.dtype), kernel.astype(self.dtype), self.in_dims)
        if self.use_bias:
            bias = self.param("bias", _constant(0.0, self.axes[self.in_dims :]), self.features, self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


class Attention(nn.Module):
    config: ModelConfig
    backend: str = "xla"  # resolved by the Decoder (jaxpt/models/attention.py)

    @nn.compact
    def __call__(self, x, positions, mask, layer_cache, cache_index):
        c = self.config

        def proj(name, heads, bias):
            head_axis = "heads" if name == "q" else "kv_heads"
            return Projection(
                (heads, c.head_dim),
                1,
                ("embed", head_axis, "head_dim"),
                bias,
                c.dtype,
                c.param_dtype,
                name=name,
            )(x)

        q = proj("q", c.num_heads, c.qkv_bias)
        k = proj("k", c.num_kv_heads, c.qkv_bias)
        v = proj("v", c.num_kv_heads, c.qkv_bias)
        if c.qk_norm:
            norm = dict(eps=c.norm_eps, dtype=c.dtype, param_dtype=c.param_dtype, axis_name="head_dim")
            q = RMSNorm(**norm, name="q_norm")(q)
            k = RMSNorm(**norm, name="k_norm")(k)
        if c.position_type == "rope":
            inv_freq = rope_inv_freq(c)
            q = apply_rope(q, positions, inv_freq)
            k = apply_rope(k, positions, inv_freq)
        q = checkpoint_name(_constrain(q, ("act_batch", "act_length", "act_heads", None)), "query_proj")
        k = checkpoint_name(_constrain(k, ("act_batch", "act_length", "act_kv_heads", None)), "key_proj")
        v = checkpoint_name(_constrain(v, ("act_batch", "act_length", "act_kv_heads", None)), "value_proj")

        new_cache = None
        if layer_cache is None:
            k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # head-major [B, K, T, D]
        else:  # cache: keys [B, K, D, S], values [B, K, S, D]
            k = lax.dynamic_update_slice(
                layer_cache["k"], k.transpose(0, 2, 3, 1).astype(layer_cache["k"].dtype), (0, 0, 0, cache_index)
            )
            v = lax.dynamic_update_slice(
                layer_cache["v"], v.transpose(0, 2, 1, 3).astype(layer_cache["v"].dtype), (0, 0, cache_index, 0)
            )
            new_cache = {"k": k, "v": v}
            k, v = k.astype(c.dtype), v.astype(c.dtype)
            # the slots the mask covers: only the filled ones when the offset is static (a prefill); taken from
            # the mask's shape, which stays static under remat / scan, where ``cache_index`` is traced
            k, v = k[..., : mask.dense.shape[-1]], v[:, :, : mask.dense.shape[-1]]
        out = attention(
            self.backend,
            q,
            k,
            v,
            mask,
            c.head_dim**-0.5,
            keys_transposed=layer_cache is not None,
            sliding_window=c.sliding_window,
        )
        out = Projection(
            (c.hidden_size,), 2, ("heads", "head_dim", "embed"), c.o_bias, c.dtype, c.param_dtype, name="o"
        )(out)
        return checkpoint_name(out, "out_proj"), new_cache


class MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        c = self.config

        def dense(name, features, axes):
            return Projection((features,), 1, axes, c.mlp_bias, c.dtype, c.param_dtype, name=name)

        if c.activation == "silu":  # Llama-family gated MLP
            h = nn.silu(dense("gate", c.intermediate_size, ("embed", "mlp"))(x))
            h = h * dense("up", c.intermediate_size, ("embed", "mlp"))(x)
        else:  # GPT-2: gelu (tanh approximation, "gelu_new")
            h = nn.gelu(dense("fc", c.intermediate_size, ("embed", "mlp"))(x), approximate=True)
        h = _constrain(h, ("act_batch", "act_length", "act_mlp"))
        return dense("down", c.hidden_size, ("mlp", "embed"))(h)


class Block(nn.Module):
    """Pre-norm transformer block; ``(x, …) -> (x, new_layer_cache)`` so it can be scanned."""

    config: ModelConfig
    backend: str = "xla"

    @nn.compact
    def __call__(self, x, positions, mask, layer_cache, cache_index):
        c = self.config
        x = checkpoint_name(x, "decoder_layer_input")
        h, new_cache = Attention(c, self.backend, name="attn")(
            _norm(c, "input_norm")(x), positions, mask, layer_cache, cache_index
        )
        x = x + h
        x = x + MLP(c, name="mlp")(_norm(c, "post_attn_norm")(x))
        x = _constrain(x, ("act_batch", "act_length", "act_embed"))
        return x, new_cache


class Decoder(nn.Module):
    """Causal LM. Returns ``(logits or final hidden states, updated cache or None)``.

    ``last_logits_only`` projects only the last position onto the vocabulary (a generation prefill needs
    nothing else: for a 128-token prompt that skips 99% of the LM-head work). Logits are soft-capped when
    ``final_logit_softcapping`` is set. Auxiliary losses go into the ``"aux_loss"`` collection (``self.sow``;
    ``jaxpt.models.logprobs.decoder_forward`` collects them; scanned layers stack them).
    """

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens: Array,
        positions: Array | None = None,
        segment_ids: Array | None = None,
        cache: Cache | None = None,
        cache_index: Array | int | None = None,
        return_hidden: bool = False,
        last_logits_only: bool = False,
    ) -> tuple[Array, Cache | None]:
        c = self.config
        b, t = tokens.shape
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))

        embed = nn.Embed(
            c.vocab_size,
            c.hidden_size,
            dtype=c.dtype,
            param_dtype=c.param_dtype,
            embedding_init=_init(0.02, ("vocab", "embed")),
            name="embed",
        )
        x = embed(tokens)
        if c.position_type == "learned":
            x = x + nn.Embed(
                c.max_position_embeddings,
                c.hidden_size,
                dtype=c.dtype,
                param_dtype=c.param_dtype,
                embedding_init=_init(0.01, ("norm", "embed")),
                name="position_embed",
            )(positions)
        x = _constrain(x, ("act_batch", "act_length", "act_embed"))

        # One mask for all layers: same segment, key not padding, causal (by slot), optional sliding window.
        if cache is None:
            key_segments = segment_ids
            q_idx = jnp.arange(t)
            k_idx = jnp.arange(t)
        else:
            key_segments = lax.dynamic_update_slice(cache["segment_ids"], segment_ids, (0, cache_index))
            q_idx = cache_index + jnp.arange(t)
            k_idx = jnp.arange(cache_index + t if isinstance(cache_index, int) else key_segments.shape[1])
        backend = resolve_backend(c.attention)
        if backend == "splash" and (cache is not None or t % SPLASH_BLOCK) and c.attention == "auto":
            backend = "xla"  # the kernel serves training rows of whole blocks; auto falls back, 'splash' says why
        if backend == "splash" and cache is None:
            mask = AttentionMask(None, segment_ids)
        else:
            causal = k_idx[None, :] <= q_idx[:, None]
            if c.sliding_window:
                causal &= q_idx[:, None] - k_idx[None, :] < c.sliding_window
            keys = key_segments[:, None, : k_idx.shape[0]]
            mask = AttentionMask((segment_ids[:, :, None] == keys) & (keys != 0) & causal[None], None)

        block = Block
        if c.remat != "none":
            block = nn.remat(Block, policy=_REMAT_POLICIES[c.remat], prevent_cse=not c.scan_layers)
        layer_caches = None if cache is None else cache["layers"]
        if c.scan_layers:
            stack = nn.scan(
                block,
                variable_axes={"params": 0, "aux_loss": 0},  # what layers sow (jaxpt/models/logprobs.py)
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast),
                length=c.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, new_layers = stack(c, backend, name="layers")(x, positions, mask, layer_caches, cache_index)
        else:
            new_layers = []
            for i in range(c.num_layers):
                lc = None if layer_caches is None else layer_caches[i]
                x, nc = block(c, backend, name=f"layers_{i}")(x, positions, mask, lc, cache_index)
                new_layers.append(nc)
        x = _norm(c, "final_norm")(x)

        new_cache = None
        if cache is not None:
            new_cache = {"layers": new_layers, "segment_ids": key_segments}
        if return_hidden:
            return x, new_cache
        if last_logits_only:
            x = x[:, -1:]
        if c.tie_word_embeddings:
            logits = embed.attend(x)
        else:
            logits = nn.Dense(
                c.vocab_size,
                use_bias=False,
                dtype=c.dtype,
                param_dtype=c.param_dtype,
                kernel_init=_init(0.02, ("embed", "vocab")),
                name="lm_head",
            )(x)
        logits = softcap(logits, c.final_logit_softcapping)
        logits = _constrain(logits, ("act_batch", "act_length", "act_vocab"))
        return logits, new_cache


# ------------------------------------------------------------------------------------------- helpers
def init_cache(config: ModelConfig, batch: int, max_length: int, dtype: Any = None) -> Cache:
    """Preallocated KV cache, per layer keys [B, K, D, S] and values [B, K, S, D] (stacked [L, ...] when
    layers are scanned)."""
    dtype = dtype or config.dtype
    kv, d, s = config.num_kv_heads, config.head_dim, max_length
    lead = (config.num_layers, batch) if config.scan_layers else (batch,)

    def layer() -> dict[str, Array]:
        return {"k": jnp.zeros((*lead, kv, d, s), dtype), "v": jnp.zeros((*lead, kv, s, d), dtype)}

    layers: Any = layer() if config.scan_layers else [layer() for _ in range(config.num_layers)]
    return {"layers": layers, "segment_ids": jnp.zeros((batch, max_length), jnp.int32)}


def head_kernel(config: ModelConfig, params: dict[str, Any]) -> Array:
    """The [embed, vocab] output projection (the transposed embedding when tied), for chunked losses."""
    if config.tie_word_embeddings:
        return params["embed"]["embedding"].T
    return params["lm_head"]["kernel"]


def init_params(config: ModelConfig, rng: Array, boxed: bool = False) -> dict[str, Any]:
    """Random parameters (unboxed by default; ``boxed`` keeps the logical-axis metadata)."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    # Always under jit: activation constraints then also work when a mesh is in context. The parameters do not
    # depend on the attention backend; a one-token init is not a shape the splash kernel takes.
    variables = jax.jit(Decoder(config.replace(attention="xla")).init)(rng, tokens)
    return variables["params"] if boxed else unbox(variables["params"])


def abstract_params(config: ModelConfig) -> dict[str, Any]:
    """Shapes, dtypes and logical axis names of the parameters, without allocating them."""
    return jax.eval_shape(lambda: init_params(config, jax.random.key(0), boxed=True))


def positions_from_mask(mask: Array) -> Array:
    """Positions for left- or right-padded rows: count of real tokens before each one (0 on padding)."""
    mask = mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0) * mask
