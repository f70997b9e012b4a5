"""Attention backends behind one function, :func:`attention`, chosen by ``ModelConfig.attention``.

* ``xla``: :func:`dot_product_attention`, plain XLA ops over a dense ``[B, T, S]`` mask (every layout: packed
  rows, left padding, the KV cache). The CPU default.
* ``splash``: the Pallas TPU splash-attention kernel (``jax.experimental.pallas.ops.tpu.splash_attention``):
  causal (or sliding-window) block masks plus **segment ids**, so packed documents never attend to each other
  and no ``[T, S]`` scores are materialised; GQA natively; under a mesh through ``shard_map`` over the batch
  axes and the heads' ``tensor`` axis. Training and scoring rows only (``T == S``, no KV cache; the cached
  prefill / decode path stays on ``xla``). On CPU it runs only inside :func:`interpret_kernels` (Pallas
  interpret mode, for tests).
* ``auto``: ``splash`` on TPU, ``xla`` elsewhere.

Both give the same values and gradients at every real (segment != 0) query; rows of padding queries, which no
loss reads and no real query attends to, may differ.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxpt.errors import UserError
from jaxpt.models.config import ATTENTION_BACKENDS

Array = jax.Array

SPLASH_BLOCK = 128  # the kernel's lane width: sequence lengths must be a multiple of it

_INTERPRET = [False]
_TARGET: list[str | None] = [None]  # the platform programs are compiled for, when not this host's (jaxpt plan)


class AttentionError(UserError):
    """The requested attention backend cannot run this shape, mask or device (the message says which)."""


@contextlib.contextmanager
def interpret_kernels() -> Iterator[None]:
    """Runs Pallas kernels in interpret mode (any backend, e.g. the TPU splash kernel on CPU in tests)."""
    _INTERPRET[0], old = True, _INTERPRET[0]
    try:
        yield
    finally:
        _INTERPRET[0] = old


@contextlib.contextmanager
def compiling_for(platform: str) -> Iterator[None]:
    """Traces programs for ``platform`` (e.g. ``"tpu"`` while ``jaxpt plan`` compiles for a slice from a CPU host)."""
    _TARGET[0], old = platform, _TARGET[0]
    try:
        yield
    finally:
        _TARGET[0] = old


def resolve_backend(name: str) -> str:
    """``auto`` -> the backend for this platform; an unknown name or ``splash`` off TPU is an error."""
    if name not in ATTENTION_BACKENDS:
        raise AttentionError(f"model.attention={name!r}; expected one of {ATTENTION_BACKENDS}")
    platform = _TARGET[0] or jax.default_backend()
    if name == "auto":
        return "splash" if platform == "tpu" else "xla"
    if name == "splash" and platform != "tpu" and not _INTERPRET[0]:
        raise AttentionError(
            f"model.attention='splash' is a TPU kernel and this backend is {platform!r}; use 'xla' or 'auto' "
            "(tests run it on CPU inside jaxpt.models.attention.interpret_kernels())"
        )
    return name


class AttentionMask(NamedTuple):
    """What the layers attend by: the dense mask (``xla``) or the rows' segment ids (``splash``)."""

    dense: Array | None  # [B, T, S] bool, True = attend
    segment_ids: Array | None  # [B, T] int, 0 = padding (``splash``: T == S, causal by slot)


def _causal_blocks(t: int, min_block: int = 64, max_blocks: int = 8) -> int:
    """How many query blocks a causal run of ``t`` queries is cut into (1: not cut)."""
    n = min(t // min_block, max_blocks)
    while n > 1 and t % n:
        n -= 1
    return max(n, 1)


def dot_product_attention(
    q: Array,
    k: Array,
    v: Array,
    mask: Array,
    scale: float,
    keys_transposed: bool = False,
    causal: bool = False,
) -> Array:
    """Grouped-query attention. q [B,T,H,D]; k head-major [B,K,S,D] (or [B,K,D,S] with
    ``keys_transposed``); v [B,K,S,D]; mask [B,T,S] (True = attend).

    ``causal``: the mask never lets query ``i`` see a key slot after ``S - T + i`` (the Decoder's masks: queries
    fill the last ``T`` of the ``S`` slots, or fewer when the cache is longer). Runs of 128+ queries are then
    cut into up to 8 blocks of at least 64 queries, each against only the key slots it can see: 4 blocks of a
    256-token sequence do 5/8 of the score and softmax work (the rest was masked out anyway); ~4% of the
    bench-small SFT step, measured.

    The query groups of a KV head are folded into one matmul row block, so both products are plain batched
    matmuls over (batch, kv_head). The KV cache keeps keys transposed: then ``q @ k`` needs no packing of
    the keys on every decode step (measured ~2x faster for that product on CPU). Scores and softmax are in
    float32; rows with nothing to attend to (padding queries) come out uniform, not NaN.
    """
    b, t, h, d = q.shape
    kv_heads, s = v.shape[1], v.shape[2]
    n_blocks = _causal_blocks(t) if causal else 1
    if n_blocks > 1:
        size, outs = t // n_blocks, []
        for i in range(n_blocks):
            rows, end = slice(i * size, (i + 1) * size), s - t + (i + 1) * size
            k_i = k[..., :end] if keys_transposed else k[:, :, :end]
            outs.append(
                dot_product_attention(q[:, rows], k_i, v[:, :, :end], mask[:, rows, :end], scale, keys_transposed)
            )
        return jnp.concatenate(outs, axis=1)
    g = h // kv_heads
    q = q.reshape(b, t, kv_heads, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kv_heads, g * t, d)
    spec = "bkqd,bkds->bkqs" if keys_transposed else "bkqd,bksd->bkqs"
    scores = jnp.einsum(spec, q, k, preferred_element_type=jnp.float32) * scale
    scores = scores.reshape(b, kv_heads, g, t, s)
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b, kv_heads, g * t, s)
    out = jnp.einsum("bkqs,bksd->bkqd", probs, v)
    return out.reshape(b, kv_heads, g, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def splash_attention(
    q: Array, k: Array, v: Array, segment_ids: Array, scale: float, sliding_window: int | None = None
) -> Array:
    """Causal splash attention with segment ids. q [B,T,H,D]; k, v head-major [B,K,T,D]; segment_ids [B,T]."""
    b, t, h, d = q.shape
    kv_heads = k.shape[1]
    if t % SPLASH_BLOCK:
        raise AttentionError(
            f"splash attention needs a sequence length that is a multiple of {SPLASH_BLOCK}, got {t}; "
            "set data.seq_len accordingly or use model.attention='xla'"
        )
    if k.shape[2] != t:
        raise AttentionError(f"splash attention runs on training rows only (keys {k.shape[2]} != queries {t})")
    block = next(n for n in (512, 256, 128) if t % n == 0)
    q = (q * scale).astype(q.dtype).transpose(0, 2, 1, 3)  # [B, H, T, D]
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        out = _splash(q, k, v, segment_ids, block, sliding_window)
    else:
        # the batch axes the rows split over evenly (rows that do not divide run replicated over the rest)
        batch = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
        while batch and b % int(np.prod([mesh.shape[a] for a in batch])):
            batch = batch[1:]
        batch = batch or None
        heads = "tensor" if "tensor" in mesh.axis_names else None
        tp = mesh.shape[heads] if heads else 1
        if h % tp or kv_heads % tp:
            raise AttentionError(f"splash attention: {h} query / {kv_heads} KV heads do not split over tensor={tp}")
        spec = P(batch, heads, None, None)
        run = functools.partial(_splash, block=block, sliding_window=sliding_window)
        out = jax.shard_map(run, in_specs=(spec, spec, spec, P(batch, None)), out_specs=spec, check_vma=False)(
            q, k, v, segment_ids
        )
    return out.transpose(0, 2, 1, 3)


def _splash(q: Array, k: Array, v: Array, segment_ids: Array, block: int, sliding_window: int | None) -> Array:
    """The kernel on one shard: q [b, h, T, D], k / v [b, k, T, D], built for the local head count."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    h, t = q.shape[1], q.shape[2]
    if sliding_window:
        one = sm.LocalMask((t, t), window_size=(sliding_window - 1, 0), offset=0)
    else:
        one = sm.CausalMask((t, t))
    sizes = sk.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        use_fused_bwd_kernel=True,
    )
    kernel = sk.make_splash_mha(
        sm.MultiHeadMask([one] * h), block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=_INTERPRET[0]
    )
    seg = segment_ids.astype(jnp.int32)
    return jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=sk.SegmentIds(s, s)))(q, k, v, seg)


def attention(
    backend: str,
    q: Array,
    k: Array,
    v: Array,
    mask: AttentionMask,
    scale: float,
    keys_transposed: bool = False,
    sliding_window: int | None = None,
) -> Array:
    """The one attention entry of the decoder: ``splash`` when asked and the rows allow it (no KV cache),
    else :func:`dot_product_attention` on the dense mask."""
    if backend == "splash" and mask.segment_ids is not None and not keys_transposed:
        return splash_attention(q, k, v, mask.segment_ids, scale, sliding_window)
    return dot_product_attention(q, k, v, mask.dense, scale, keys_transposed, causal=True)
