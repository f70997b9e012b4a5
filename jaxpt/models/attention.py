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
# From this many queries on, the XLA path's causal blocks recompute their probabilities in the backward pass,
# one block at a time, instead of keeping every block's float32 scores and probabilities alive at once (GiBs a
# layer for one 8192-token Llama-3.1-8B row). Shorter rows (CPU training, tests) keep autodiff's residuals:
# no recompute.
REMAT_BLOCKS_FROM = 2048
REMAT_BLOCK = 512  # queries per block there

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
    bench-small SFT step, measured. From ``REMAT_BLOCKS_FROM`` queries on (training rows), blocks of
    ``REMAT_BLOCK`` queries go through :func:`_recomputed_causal_attention`, whose backward pass recomputes one
    block's probabilities at a time instead of keeping every block's (autodiff's residuals).

    The query groups of a KV head are folded into one matmul row block, so both products are plain batched
    matmuls over (batch, kv_head). The KV cache keeps keys transposed: then ``q @ k`` needs no packing of
    the keys on every decode step (measured ~2x faster for that product on CPU). Scores and softmax are in
    float32; rows with nothing to attend to (padding queries) come out uniform, not NaN.
    """
    b, t, h, d = q.shape
    kv_heads, s = v.shape[1], v.shape[2]
    if causal and not keys_transposed and t >= REMAT_BLOCKS_FROM and t % REMAT_BLOCK == 0:
        return _recomputed_causal_attention(q, k, v, mask, scale, REMAT_BLOCK)
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
    probs = _probs(_fold(q, kv_heads), k, mask, scale, keys_transposed)
    return _unfold(jnp.einsum("bkqs,bksd->bkqd", probs.astype(v.dtype), v), t)


def _fold(x: Array, kv_heads: int) -> Array:
    """[B, T, H, D] -> [B, K, G*T, D]: a KV head's query groups as one matmul row block."""
    b, t, h, d = x.shape
    return x.reshape(b, t, kv_heads, h // kv_heads, d).transpose(0, 2, 3, 1, 4).reshape(b, kv_heads, -1, d)


def _unfold(x: Array, t: int) -> Array:
    """[B, K, G*T, D] -> [B, T, H, D] (the inverse of :func:`_fold`)."""
    b, kv_heads, _, d = x.shape
    return x.reshape(b, kv_heads, -1, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, -1, d)


def _probs(q: Array, k: Array, mask: Array, scale: float, keys_transposed: bool = False) -> Array:
    """Float32 softmax probabilities [B, K, G*T, S] of folded queries q [B, K, G*T, D] over the keys."""
    b, kv_heads, gt, _ = q.shape
    t = mask.shape[1]
    spec = "bkqd,bkds->bkqs" if keys_transposed else "bkqd,bksd->bkqs"
    scores = jnp.einsum(spec, q, k, preferred_element_type=jnp.float32) * scale
    scores = scores.reshape(b, kv_heads, gt // t, t, -1)
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores, axis=-1).reshape(b, kv_heads, gt, -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _recomputed_causal_attention(q: Array, k: Array, v: Array, mask: Array, scale: float, size: int) -> Array:
    """Causal attention in query blocks of ``size``, each against the key slots it can see, whose backward pass
    recomputes one block's probabilities at a time (flash attention's memory order, in plain XLA ops): only
    q, k, v, the mask and the output are kept from the forward pass. Same values and gradients as autodiff."""
    return _recomputed_forward(q, k, v, mask, scale, size)[0]


def _recomputed_forward(q, k, v, mask, scale, size):
    t, s, kv_heads = q.shape[1], k.shape[2], k.shape[1]
    outs = []
    for i in range(t // size):
        rows, end = slice(i * size, (i + 1) * size), s - t + (i + 1) * size
        probs = _probs(_fold(q[:, rows], kv_heads), k[:, :, :end], mask[:, rows, :end], scale)
        outs.append(_unfold(jnp.einsum("bkqs,bksd->bkqd", probs.astype(v.dtype), v[:, :, :end]), size))
    return jnp.concatenate(outs, axis=1), (q, k, v, mask)


def _after(xs: tuple[Array, ...], deps: tuple[Array, ...]) -> tuple[Array, ...]:
    """``xs`` unchanged, but computed from ``deps``: ops reading them wait for ``deps``. A data dependency (adding
    0 times one element of each), since XLA:CPU drops ``optimization_barrier`` before scheduling; XLA does not
    fold ``x * 0`` for floats, and the cost is one scalar per array."""
    zero = sum(jnp.ravel(d)[0].astype(jnp.float32) for d in deps) * 0.0
    return tuple(x + zero.astype(x.dtype) for x in xs)


def _recomputed_backward(scale, size, residuals, d_out):
    q, k, v, mask = residuals
    t, s, kv_heads = q.shape[1], k.shape[2], k.shape[1]
    dk, dv, dqs = jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32), []
    for i in reversed(range(t // size)):
        rows, end = slice(i * size, (i + 1) * size), s - t + (i + 1) * size
        # one block after the other: without the dependency XLA may schedule every block's scores at once
        q_i, do_i = _after((q[:, rows], d_out[:, rows]), (dk, dv, *dqs[-1:]))
        q_f, do_f, k_i, v_i = _fold(q_i, kv_heads), _fold(do_i, kv_heads), k[:, :, :end], v[:, :, :end]
        probs = _probs(q_f, k_i, mask[:, rows, :end], scale)
        d_probs = jnp.einsum("bkqd,bksd->bkqs", do_f, v_i, preferred_element_type=jnp.float32)
        d_scores = probs * (d_probs - jnp.sum(d_probs * probs, axis=-1, keepdims=True)) * scale
        d_scores = d_scores.astype(q.dtype)
        dqs.append(_unfold(jnp.einsum("bkqs,bksd->bkqd", d_scores, k_i, preferred_element_type=jnp.float32), size))
        dk = dk.at[:, :, :end].add(jnp.einsum("bkqs,bkqd->bksd", d_scores, q_f, preferred_element_type=jnp.float32))
        dv = dv.at[:, :, :end].add(
            jnp.einsum("bkqs,bkqd->bksd", probs.astype(v.dtype), do_f, preferred_element_type=jnp.float32)
        )
    dq = jnp.concatenate(dqs[::-1], axis=1)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_recomputed_causal_attention.defvjp(_recomputed_forward, _recomputed_backward)


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
