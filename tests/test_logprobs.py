"""The model-running module: blocked log-probs == plain log-softmax (values, gradients, entropy, top-k), one
soft-capping (decoder logits, fused and chunked cross-entropy), shared-prompt == flat layout, aux losses."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpt.data.preference import fixed_preference_batches
from jaxpt.losses.lm import (
    chunked_cross_entropy,
    cross_entropy_loss,
    fused_cross_entropy,
    token_entropy,
    token_logprobs,
)
from jaxpt.models import decoder as decoder_lib
from jaxpt.models.config import ModelConfig
from jaxpt.models.decoder import Decoder, init_params
from jaxpt.models.logprobs import (
    batch_logprobs,
    decoder_forward,
    full_sequences,
    head_logprobs,
    hidden_states,
    last_token_states,
    lm_loss,
    sequence_logprobs,
    shared_prompt_forward,
)
from jaxpt.models.matmul import softcap
from tests.test_losses_lm import _all_avals, np_token_logprobs

VOCAB = 50
HF = dict(
    model_type="qwen3",
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=64,
)


def _head_data(seed=0, n=3, t=7, e=16, v=37):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.normal(size=(n, t, e)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(e, v)) / np.sqrt(e) * 3, jnp.float32)
    targets = jnp.asarray(rng.integers(0, v, size=(n, t)), jnp.int32)
    weights = jnp.asarray(rng.normal(size=(n, t)), jnp.float32)
    return hidden, kernel, targets, weights


# ------------------------------------------------------------------------------------ blocked log-probs
@pytest.mark.parametrize("chunk_size", [4, 7, 21])  # of 21 tokens: 4 leaves a padded last block, 21 is one
@pytest.mark.parametrize("temperature,cap", [(1.0, None), (0.7, 2.5)])
def test_blocked_logprobs_equal_full_log_softmax(chunk_size, temperature, cap):
    hidden, kernel, targets, weights = _head_data()
    k = 3

    def full_logits(h, w):
        return softcap(h @ w, cap) / temperature

    def blocked(h, w):
        return head_logprobs(h, w, targets, chunk_size, temperature=temperature, cap=cap, entropy=True, top_k=k)

    out = jax.jit(blocked)(hidden, kernel)
    logits = full_logits(hidden, kernel)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    want = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(out.logprobs, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.entropy, token_entropy(logits), rtol=1e-5, atol=1e-5)
    top_values, top_ids = jax.lax.top_k(log_probs, k)
    np.testing.assert_allclose(out.top_logprobs, top_values, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out.top_ids, top_ids)
    assert out.logprobs.shape == targets.shape and out.top_ids.shape == (*targets.shape, k)

    # gradients (log-probs and entropy) w.r.t. hidden states and kernel equal autodiff of the full logits
    def objective(fn):
        def f(h, w):
            lp, ent = fn(h, w)
            return jnp.sum(lp * weights) + 0.3 * jnp.sum(ent * weights[::-1])

        return f

    def plain(h, w):
        z = full_logits(h, w)
        return token_logprobs(z, targets), token_entropy(z)

    g_plain = jax.grad(objective(plain), argnums=(0, 1))(hidden, kernel)
    g_blocked = jax.jit(jax.grad(objective(lambda h, w: blocked(h, w)[:2]), argnums=(0, 1)))(hidden, kernel)
    for a, b in zip(g_blocked, g_plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_blocked_logprobs_never_hold_the_full_logits():
    n, t, e, v, chunk = 4, 16, 8, 256, 4  # N*T*V = 16384 vs E*V = 2048 (the kernel), chunk*V = 1024
    hidden, kernel, targets, _ = _head_data(1, n, t, e, v)
    f = lambda h, w: jnp.sum(head_logprobs(h, w, targets, chunk, entropy=True, top_k=2).logprobs)
    avals = [a for a in _all_avals(jax.make_jaxpr(jax.value_and_grad(f, (0, 1)))(hidden, kernel)) if a.shape]
    assert any(tuple(a.shape) == (chunk, v) for a in avals)
    assert max(int(np.prod(a.shape)) for a in avals) <= e * v
    # one block (chunk 0 or >= N*T): plain logits
    g = lambda h, w: jnp.sum(head_logprobs(h, w, targets, 0).logprobs)
    assert any(tuple(a.shape) == (n, t, v) for a in _all_avals(jax.make_jaxpr(g)(hidden, kernel)) if a.shape)


# ------------------------------------------------------------------------------------------ soft-capping
def test_fused_and_chunked_cross_entropy_softcap_match_autodiff():
    hidden, kernel, targets, _ = _head_data(2, 2, 13, 16, 37)  # 26 tokens: chunks of 5 / 8 are padded
    mask = jnp.asarray(np.random.default_rng(2).random((2, 13)) < 0.8, jnp.float32)
    cap = 2.0

    def plain(h, w):
        return cross_entropy_loss(softcap(h @ w, cap), targets, mask)

    (l1, a1), g1 = jax.value_and_grad(plain, (0, 1), has_aux=True)(hidden, kernel)
    for chunk in (5, 8, 26):
        for name, fn in (("fused", fused_cross_entropy), ("chunked", chunked_cross_entropy)):
            loss = lambda h, w, fn=fn, chunk=chunk: fn(h, w, targets, mask, chunk, logit_softcap=cap)
            (l2, a2), g2 = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(hidden, kernel)
            np.testing.assert_allclose(l2, l1, rtol=1e-5, err_msg=f"{name} {chunk}")
            for k in ("num_tokens", "correct", "nll_sum"):
                np.testing.assert_allclose(a2[k], a1[k], rtol=1e-5, err_msg=f"{name} {chunk} {k}")
            for x, y in zip(g2, g1, strict=True):
                np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6, err_msg=f"{name} {chunk}")
    # the cap changes the loss (the tests above are not vacuous)
    assert abs(float(cross_entropy_loss(hidden @ kernel, targets, mask)[0]) - float(l1)) > 1e-2


def _flat_batch(seed=0, b=4, t=12):
    rng = np.random.default_rng(seed)
    lengths = [12, 9, 5, 1]
    seg = np.zeros((b, t), np.int32)
    for i, n in enumerate(lengths):
        seg[i, :n] = 1
    tokens = rng.integers(3, VOCAB, (b, t + 1)).astype(np.int32)
    batch = {
        "inputs": tokens[:, :-1] * seg,
        "targets": tokens[:, 1:] * seg,
        "positions": (np.cumsum(seg, axis=1) - 1).clip(0) * seg,
        "segment_ids": seg,
        "loss_mask": (seg * (rng.random((b, t)) < 0.8)).astype(np.float32),
    }
    return {k: jnp.asarray(v) for k, v in batch.items()}


def test_softcap_in_decoder_logits_and_every_loss_path():
    """The config's cap reaches the decoder's own logits (what the sampler reads), the blocked log-probs and
    all three ``lm_loss`` paths (plain, fused, chunked), which agree in value and gradient."""
    config = ModelConfig.from_hf({**HF, "final_logit_softcapping": 0.2})
    assert config.final_logit_softcapping == 0.2 and config.to_hf()["final_logit_softcapping"] == 0.2
    assert "final_logit_softcapping" not in ModelConfig.from_hf(HF).replace(hf_config=config.hf_config).to_hf()
    uncapped = config.replace(final_logit_softcapping=None)
    params = init_params(config, jax.random.key(0))
    batch = _flat_batch()
    run = lambda c, p: Decoder(c).apply({"params": p}, batch["inputs"], batch["positions"], batch["segment_ids"])[0]
    logits, raw = jax.jit(run, static_argnums=0)(config, params), jax.jit(run, static_argnums=0)(uncapped, params)
    np.testing.assert_allclose(logits, 0.2 * np.tanh(np.asarray(raw) / 0.2), rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(logits)).max() < 0.2 < np.abs(np.asarray(raw)).max()  # the cap bites

    mask = batch["loss_mask"] * (batch["segment_ids"] > 0)
    np.testing.assert_allclose(
        jax.jit(lambda p: sequence_logprobs(config, p, batch, 7))(params),
        (np_token_logprobs(np.asarray(logits), np.asarray(batch["targets"])) * np.asarray(mask)).sum(-1),
        rtol=1e-5,
    )

    def want(p):
        z = run(config, p)
        loss, aux = cross_entropy_loss(z, batch["targets"], mask)
        return loss * aux["num_tokens"], aux

    (nll, aux), g_want = jax.value_and_grad(want, has_aux=True)(params)
    for chunk, train in ((0, True), (10, True), (10, False)):  # plain logits, fused, chunked

        def loss(p, chunk=chunk, train=train):
            nll_sum, num_tokens, correct = lm_loss(config, p, batch, chunk, train)
            return nll_sum, (num_tokens, correct)

        (got, (n, correct)), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        np.testing.assert_allclose(got, nll, rtol=1e-5, err_msg=f"{chunk} {train}")
        assert float(n) == float(aux["num_tokens"]) and float(correct) == float(aux["correct"])
        for x, y in zip(jax.tree.leaves(g), jax.tree.leaves(g_want), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6, err_msg=f"{chunk} {train}")


# ------------------------------------------------------------------------------------------------ layouts
def _rl_rows(seed=0, prompts=2, group=2, p=5, n=4):
    """The same completions as flat ``[prompt | completion]`` rows and as shared-prompt rows (sample-major)."""
    rng = np.random.default_rng(seed)
    prompt_mask = np.ones((prompts, p), np.int32)
    prompt_mask[1, :3] = 0  # left padding
    prompt_tokens = rng.integers(3, VOCAB, (prompts, p)).astype(np.int32) * prompt_mask
    rows = prompts * group
    comp_mask = np.ones((rows, n), np.int32)
    comp_mask[1, 2:] = 0
    comp_mask[2, 1:] = 0
    completions = rng.integers(3, VOCAB, (rows, n)).astype(np.int32) * comp_mask
    home = np.arange(rows) % prompts  # row r continues prompt r % prompts
    full = np.concatenate([prompt_tokens[home], completions], axis=1)
    seg = np.concatenate([prompt_mask[home], comp_mask], axis=1)
    positions = (np.cumsum(seg, axis=1) - 1).clip(0) * seg
    flat = {
        "inputs": full[:, :-1],
        "targets": full[:, 1:],
        "positions": positions[:, :-1],
        "segment_ids": seg[:, :-1],
        "response_mask": comp_mask.astype(np.float32),
    }
    shared = {
        "prompt_tokens": prompt_tokens,
        "prompt_mask": prompt_mask,
        "completion_tokens": completions,
        "completion_segment_ids": comp_mask,
        "response_mask": comp_mask.astype(np.float32),
    }
    as_jax = lambda d: {k: jnp.asarray(v) for k, v in d.items()}
    return as_jax(flat), as_jax(shared), p


@pytest.mark.parametrize("chunk_size", [0, 5])
def test_shared_prompt_and_flat_layouts_give_equal_completion_logprobs(chunk_size):
    config = ModelConfig.from_hf(HF)
    params = init_params(config, jax.random.key(1))
    flat, shared, p = _rl_rows()

    def run(q, b, prompt_len):
        out, h = batch_logprobs(config, q, b, chunk_size, prompt_len=prompt_len, temperature=0.8, entropy=True)
        return out.logprobs * h.mask, out.entropy * h.mask, h.mask

    (lp_f, ent_f, m_f), (lp_s, ent_s, m_s) = (
        jax.jit(run, static_argnums=2)(params, flat, p),
        jax.jit(run, static_argnums=2)(params, shared, p),
    )
    np.testing.assert_array_equal(m_f, m_s)
    np.testing.assert_allclose(lp_s, lp_f, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ent_s, ent_f, rtol=1e-5, atol=1e-5)
    # and both equal the decoder's own logits / temperature over the flat rows
    logits, _ = Decoder(config).apply({"params": params}, flat["inputs"], flat["positions"], flat["segment_ids"])
    want = token_logprobs(logits[:, p - 1 :] / 0.8, flat["targets"][:, p - 1 :]) * flat["response_mask"]
    np.testing.assert_allclose(lp_f, want, rtol=1e-5, atol=1e-5)


def test_preference_layouts_give_equal_sequence_logprobs_and_pooled_states():
    """Flat ``[2B, T]`` and shared-prompt preference batches: the same summed completion log-probs (DPO) and
    the same state at each row's last real token (a reward model's pooling), which is the flat row's last."""
    rng = np.random.default_rng(0)
    keys = ("prompt_ids", "chosen_ids", "rejected_ids")
    pairs = [
        {k: rng.integers(3, VOCAB, n).astype(np.int32) for k, n in zip(keys, lens, strict=True)}
        for lens in [(4, 3, 5), (1, 9, 2), (7, 4, 1)]
    ]
    flat, shared = (
        {k: jnp.asarray(v) for k, v in fixed_preference_batches(pairs, 3, 12, 0, shared_prompt=s)[0].items()}
        for s in (False, True)
    )
    config = ModelConfig.from_hf(HF)
    params = init_params(config, jax.random.key(2))
    run = jax.jit(lambda b: (sequence_logprobs(config, params, b, 5), last_token_states(config, params, b)[0]))
    (seq_f, states_f), (seq_s, states_s) = run(flat), run(shared)
    np.testing.assert_allclose(seq_s, seq_f, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(states_s, states_f, rtol=1e-5, atol=1e-5)
    tokens, positions, segments = full_sequences(flat)
    hidden, _, _ = decoder_forward(config, params, tokens, positions, segments)
    last = np.asarray(segments).shape[1] - 1 - np.argmax(np.asarray(segments)[:, ::-1] > 0, axis=1)
    np.testing.assert_allclose(states_f, np.asarray(hidden)[np.arange(len(last)), last], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------- aux losses
_BLOCK = decoder_lib.Block  # the real block, which the patched one wraps


class SowingBlock(nn.Module):
    """A decoder block that also sows an auxiliary loss (what an MoE layer's load-balancing term would do)."""

    config: ModelConfig
    backend: str = "xla"

    @nn.compact
    def __call__(self, x, positions, mask, layer_cache, cache_index):
        self.sow("aux_loss", "load_balance", 0.25 + 0.0 * jnp.mean(x))
        return _BLOCK(self.config, self.backend, name="inner")(x, positions, mask, layer_cache, cache_index)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_aux_losses_that_layers_sow_are_collected(monkeypatch, scan_layers):
    config = ModelConfig.from_hf(HF, scan_layers=scan_layers)
    batch = _flat_batch()
    _, shared, _ = _rl_rows()

    def aux_losses(params):
        """Flat rows, shared-prompt rows (two decoder runs: prompts, then completions on their cache), and
        the same through ``batch_logprobs``."""
        _, h = batch_logprobs(config, params, shared)
        return (
            hidden_states(config, params, batch).aux_loss,
            shared_prompt_forward(config, params, shared)[2],
            h.aux_loss,
        )

    got = jax.jit(aux_losses)(init_params(config, jax.random.key(0)))
    np.testing.assert_array_equal(got, [0.0, 0.0, 0.0])  # nothing sows today
    monkeypatch.setattr(decoder_lib, "Block", SowingBlock)
    got = jax.jit(aux_losses)(init_params(config, jax.random.key(0)))
    np.testing.assert_allclose(got, np.asarray([0.25, 0.5, 0.5]) * config.num_layers)
