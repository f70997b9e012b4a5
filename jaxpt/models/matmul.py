"""``x @ w`` for weights, with a backward pass whose weight gradient is a plain (untransposed) matmul.

The weight gradient of ``y = x @ w`` is ``dw = x^T @ dy``: a contraction over the token dimension, which is
the major dimension of both operands. Left to autodiff, XLA:CPU either hands that "transposed-A" product to
its generic Eigen dot (~70 GFLOP/s on bench-small shapes against ~130 for the same product in YNNPACK) or
lays ``dy`` out transposed, fusing the transpose into the elementwise code that makes ``dy`` (a SiLU
backward written column by column: 15 ms instead of 1.5). Here the backward pass copies the small operand
``x`` into ``[in, tokens]`` first, so ``dw`` is an ordinary ``[in, tokens] @ [tokens, out]`` matmul and
``dy`` stays in the layout it was made in (``docs/benchmarks.md`` has the measured steps).

Same values as ``jnp.tensordot`` (the gradients are the same sums, in another order); the dtype rules are
those of autodiff: cotangents in the operands' dtype, matmuls accumulating in float32.

The LM head's logits are made here too (``vocab_logits``), and soft-capped here (``softcap``), so that the
decoder, the blocked log-probs and the fused cross-entropy share one definition.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def transposed_copy(x: Array) -> Array:
    """``x.T`` of a 2-D array, materialised (the barrier keeps XLA from folding it into a consumer's layout)."""
    return jax.lax.optimization_barrier(jnp.transpose(x))


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def matmul(x: Array, w: Array, in_dims: int = 1, out_dtype: Any = None) -> Array:
    """``tensordot(x, w, in_dims)``: the last ``in_dims`` dims of ``x`` against the first of ``w`` (result in
    ``out_dtype`` when given, e.g. float32 logits from bfloat16 operands)."""
    return jnp.tensordot(x, w, axes=in_dims, preferred_element_type=out_dtype)


def _matmul_fwd(x: Array, w: Array, in_dims: int, out_dtype: Any):
    return matmul(x, w, in_dims, out_dtype), (x, w)


def _matmul_bwd(in_dims: int, out_dtype: Any, res, dy: Array):
    x, w = res
    k = math.prod(w.shape[:in_dims])
    n = math.prod(w.shape[in_dims:])
    w2 = w.reshape(k, n)
    dy2 = dy.reshape(-1, n).astype(x.dtype)
    dx = jnp.dot(dy2, w2.T, preferred_element_type=jnp.float32).astype(x.dtype).reshape(x.shape)
    dw = jnp.dot(transposed_copy(x.reshape(-1, k)), dy2, preferred_element_type=jnp.float32)
    return dx, dw.astype(w.dtype).reshape(w.shape)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def vocab_logits(h: Array, kernel: Array) -> Array:
    """float32 logits ``h [..., E] @ kernel [E, V]`` (the LM head, in ``h``'s compute dtype), with ``matmul``'s
    backward pass."""
    return matmul(h, kernel.astype(h.dtype), 1, jnp.float32)


def softcap(logits: Array, cap: float | None) -> Array:
    """``cap * tanh(logits / cap)`` (Gemma's ``final_logit_softcapping``), in ``logits``' dtype; unchanged when
    ``cap`` is None or 0. The one soft-capping of the LM head's logits: the decoder's, the blocked log-probs'
    and the cross-entropies' (``jaxpt.losses.lm``) all call it."""
    if not cap:
        return logits
    return cap * jnp.tanh(logits / cap)
