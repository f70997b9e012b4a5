"""Sampler: top-k / top-p filtering against hand-made cases, reproducibility, log-probs and masks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpt.generation.sampler import SamplingConfig, _invert_cdf, filter_logits, generate, sample_token
from jaxpt.models.config import ModelConfig
from jaxpt.models.decoder import Decoder, init_params


def test_top_k_keeps_k_largest():
    logits = jnp.array([[1.0, 5.0, 3.0, 4.0, 2.0]])
    out = np.asarray(filter_logits(logits, top_k=2))
    assert (out > -1e30).sum() == 2 and out[0, 1] == 5.0 and out[0, 3] == 4.0
    assert (out[0, [0, 2, 4]] < -1e30).all()


def test_top_p_keeps_smallest_nucleus():
    probs = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
    logits = jnp.log(jnp.asarray(probs))[None]
    # p=0.6: 0.5 alone is < 0.6, so 0.2 is needed too -> keep 2.
    kept = np.asarray(filter_logits(logits, top_p=0.6)) > -1e30
    assert kept.tolist() == [[True, True, False, False, False]]
    # p=0.5 is reached by the first token alone.
    kept = np.asarray(filter_logits(logits, top_p=0.5)) > -1e30
    assert kept.tolist() == [[True, False, False, False, False]]
    # A tiny p still keeps the argmax.
    assert (np.asarray(filter_logits(logits, top_p=1e-6)) > -1e30).sum() == 1


def test_top_k_then_top_p_compose():
    logits = jnp.log(jnp.array([[0.4, 0.3, 0.2, 0.1]]))
    kept = np.asarray(filter_logits(logits, top_k=3, top_p=0.9)) > -1e30
    # After top-k the renormalised probs are 4/9, 3/9, 2/9: mass before the 3rd is 7/9 < 0.9 -> keep 3.
    assert kept.tolist() == [[True, True, True, False]]


@pytest.mark.parametrize("vocab", [7, 129, 1000])
def test_two_level_cdf_inversion_equals_one_cumsum(vocab):
    rng = np.random.default_rng(vocab)
    w = rng.random((64, vocab)) ** 4 * (rng.random((64, vocab)) < 0.5)
    w[:, 0] += 1e-3
    u = rng.random(64)
    cdf = np.cumsum(w, axis=-1)
    expected = (cdf <= (u * cdf[:, -1])[:, None]).sum(-1)
    got = np.asarray(_invert_cdf(jnp.asarray(w, jnp.float32), jnp.asarray(u, jnp.float32)))
    np.testing.assert_array_equal(got, expected)
    assert (w[np.arange(64), got] > 0).all()  # never a zero-weight (filtered) token


def test_sampled_frequencies_follow_the_filtered_softmax():
    """200k draws over a 300-token vocabulary (three CDF blocks) with top-k and temperature."""
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(1, 300)) * 2, jnp.float32)
    sampling = SamplingConfig(temperature=0.8, top_k=40)
    n = 200_000
    tokens, logp = jax.jit(jax.vmap(lambda u: sample_token(logits, u[None], sampling)))(
        jax.random.uniform(jax.random.key(0), (n,))
    )
    counts = np.bincount(np.asarray(tokens).ravel(), minlength=300) / n
    expected = np.asarray(jax.nn.softmax(filter_logits(logits / 0.8, top_k=40))[0])
    assert counts[expected == 0].sum() == 0
    assert np.abs(counts - expected).sum() / 2 < 0.01  # total variation
    # the reported log-prob is under the temperature-scaled, unfiltered distribution
    full = np.asarray(jax.nn.log_softmax(logits / 0.8)[0])
    np.testing.assert_allclose(np.asarray(logp).ravel(), full[np.asarray(tokens).ravel()], atol=1e-5)


def test_invalid_sampling_config():
    with pytest.raises(ValueError):
        SamplingConfig(top_p=0.0)


@pytest.fixture(scope="module")
def tiny_model():
    hf = dict(
        model_type="llama",
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    config = ModelConfig.from_hf(hf)
    return config, init_params(config, jax.random.key(0))


def test_sampling_reproducible_and_logprobs_consistent(tiny_model):
    config, params = tiny_model
    prompt = jnp.array([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]], jnp.int32)
    mask = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], jnp.int32)
    sampling = SamplingConfig(max_new_tokens=6, temperature=0.7, top_k=20, top_p=0.95, eos_token_ids=(3,))
    a = generate(config, params, prompt, mask, jax.random.key(1), sampling)
    b = generate(config, params, prompt, mask, jax.random.key(1), sampling)
    c = generate(config, params, prompt, mask, jax.random.key(2), sampling)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))
    # The returned log-probs equal a teacher-forced forward over prompt + completion (temperature-scaled).
    full = jnp.concatenate([prompt, a.tokens], axis=1)
    full_mask = jnp.concatenate([mask, a.mask], axis=1)
    pos = jnp.maximum(jnp.cumsum(full_mask, axis=1) - 1, 0)
    logits, _ = Decoder(config).apply({"params": params}, full, pos, full_mask)
    logp = jax.nn.log_softmax(logits[:, prompt.shape[1] - 1 : -1] / 0.7, axis=-1)
    ref = jnp.take_along_axis(logp, a.tokens[..., None], axis=-1)[..., 0] * a.mask
    np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(ref), atol=1e-4)
    assert (np.asarray(a.mask).sum(1) == np.asarray(a.lengths)).all()


def test_generation_with_rematerialised_blocks_equals_plain(tiny_model):
    """A training config (remat on) samples exactly as the plain one: the prefill's static cache offset is
    traced inside remat, and attention must still cover the slots the mask covers."""
    config, params = tiny_model
    prompt = jnp.array([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]], jnp.int32)
    mask = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], jnp.int32)
    sampling = SamplingConfig(max_new_tokens=6, temperature=0.0)
    plain = generate(config, params, prompt, mask, jax.random.key(0), sampling)
    remat = generate(dataclasses.replace(config, remat="full"), params, prompt, mask, jax.random.key(0), sampling)
    np.testing.assert_array_equal(np.asarray(remat.tokens), np.asarray(plain.tokens))
    np.testing.assert_allclose(np.asarray(remat.logprobs), np.asarray(plain.logprobs), atol=1e-5)


def test_rows_stop_at_eos_and_short_generations(tiny_model):
    """Greedy runs cut by EOS (every row stopping before max_new_tokens ends the loop early) and one-token runs
    agree with the uncut run: same tokens and log-probs up to each row's EOS, padding and zeros after."""
    config, params = tiny_model
    prompt = jnp.array([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]], jnp.int32)
    mask = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], jnp.int32)
    key = jax.random.key(0)
    full = generate(config, params, prompt, mask, key, SamplingConfig(max_new_tokens=6, temperature=0.0))
    tokens, logps = np.asarray(full.tokens), np.asarray(full.logprobs)
    assert (np.asarray(full.lengths) == 6).all()
    eos = (int(tokens[0, 1]), int(tokens[1, 2]))  # row 0 stops by column 1, row 1 by column 2
    cut = generate(
        config, params, prompt, mask, key, SamplingConfig(max_new_tokens=6, temperature=0.0, eos_token_ids=eos)
    )
    for row in range(2):
        stop = next(i for i in range(6) if int(tokens[row, i]) in eos) + 1
        assert int(cut.lengths[row]) == stop and np.asarray(cut.mask)[row].tolist() == [1] * stop + [0] * (6 - stop)
        np.testing.assert_array_equal(np.asarray(cut.tokens)[row, :stop], tokens[row, :stop])
        assert (np.asarray(cut.tokens)[row, stop:] == 0).all() and (np.asarray(cut.logprobs)[row, stop:] == 0).all()
        np.testing.assert_allclose(np.asarray(cut.logprobs)[row, :stop], logps[row, :stop], atol=1e-5)
    one = generate(config, params, prompt, mask, key, SamplingConfig(max_new_tokens=1, temperature=0.0))
    np.testing.assert_array_equal(np.asarray(one.tokens), tokens[:, :1])
    np.testing.assert_allclose(np.asarray(one.logprobs), logps[:, :1], atol=1e-5)
    assert np.asarray(one.lengths).tolist() == [1, 1]
