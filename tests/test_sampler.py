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
        assert bool(cut.finished[row]) and not bool(full.finished[row])  # ended by EOS / cut at max_new_tokens
        np.testing.assert_array_equal(np.asarray(cut.tokens)[row, :stop], tokens[row, :stop])
        assert (np.asarray(cut.tokens)[row, stop:] == 0).all() and (np.asarray(cut.logprobs)[row, stop:] == 0).all()
        np.testing.assert_allclose(np.asarray(cut.logprobs)[row, :stop], logps[row, :stop], atol=1e-5)
    one = generate(config, params, prompt, mask, key, SamplingConfig(max_new_tokens=1, temperature=0.0))
    np.testing.assert_array_equal(np.asarray(one.tokens), tokens[:, :1])
    np.testing.assert_allclose(np.asarray(one.logprobs), logps[:, :1], atol=1e-5)
    assert np.asarray(one.lengths).tolist() == [1, 1]


class _Tok:
    """The tokenizer surface the sampler front-end uses: ids are characters' code points minus 90."""

    eos_token_id, pad_token_id = 2, 0

    def __init__(self, eos=2):
        self.eos_token_id = eos

    def encode(self, text, add_special_tokens=False):
        return [ord(c) - 90 for c in text]

    def batch_decode(self, rows, skip_special_tokens=True):
        return ["".join(chr(int(t) + 90) for t in row if int(t) != self.eos_token_id) for row in rows]


def test_stop_tokens_are_the_union_of_model_and_tokenizer_eos(tiny_model):
    from jaxpt.generation.frontend import sampling_config, stop_token_ids

    config = dataclasses.replace(tiny_model[0], eos_token_id=(5, 7))
    assert stop_token_ids(config, _Tok(eos=3)) == (3, 5, 7)
    assert stop_token_ids(dataclasses.replace(config, eos_token_id=None), _Tok(eos=None)) == ()
    with pytest.raises(ValueError, match="no EOS token id"):
        stop_token_ids(dataclasses.replace(config, eos_token_id=None), _Tok(eos=None), required=True)
    s = sampling_config(config, _Tok(eos=3), max_new_tokens=4)
    assert s.eos_token_ids == (3, 5, 7) and s.pad_token_id == 0 and s.temperature == 0.0


def test_sampler_front_end_matches_the_jitted_sampler(tiny_model, monkeypatch):
    """Completions of the front-end are the sampler's (tokens, log-probs, lengths, finished), decoded; padded
    batches drop their filler rows; ``sample_all`` batch k samples with fold_in(key(seed), k)."""
    from jaxpt.data import tokenizer as tok_lib
    from jaxpt.generation.frontend import Sampler

    config, params = tiny_model
    monkeypatch.setattr(tok_lib, "encode_prompt", lambda tok, p, chat: tok.encode(p))
    tok = _Tok(eos=int(config.vocab_size) - 1)
    sampling = SamplingConfig(max_new_tokens=5, temperature=1.0, eos_token_ids=(tok.eos_token_id,))
    prompts = ["abcd", "efg", "hijkl"]
    sampler = Sampler(config, tok, sampling, max_prompt_len=4, batch_size=2)
    out = sampler.sample_all(params, prompts, seed=3)
    assert len(out) == 3 and out.tokens.shape == (3, 5) and out.prompt_tokens.shape == (3, 4)
    key = jax.random.key(3)
    assert out.prompt_tokens[1].tolist() == [tok.pad_token_id, *tok.encode("efg")]  # left-padded
    assert out.prompt_mask[1].tolist() == [0, 1, 1, 1]
    for k, (lo, hi) in enumerate([(0, 2), (2, 3)]):
        fill = [lo] * (2 - (hi - lo))  # a short batch is filled with copies of its first prompt
        rows, masks = out.prompt_tokens[[*range(lo, hi), *fill]], out.prompt_mask[[*range(lo, hi), *fill]]
        want = generate(config, params, jnp.asarray(rows), jnp.asarray(masks), jax.random.fold_in(key, k), sampling)
        n = hi - lo
        np.testing.assert_array_equal(out.tokens[lo:hi], np.asarray(want.tokens)[:n])
        np.testing.assert_allclose(out.logprobs[lo:hi], np.asarray(want.logprobs)[:n], atol=1e-6)
        np.testing.assert_array_equal(out.lengths[lo:hi], np.asarray(want.lengths)[:n])
        np.testing.assert_array_equal(out.finished[lo:hi], np.asarray(want.finished)[:n])
    assert out.texts == tok.batch_decode([t[:n] for t, n in zip(out.tokens, out.lengths, strict=True)])
    assert out.prompt_tokens[2].tolist() == tok.encode("hijkl")[-4:]  # cut from the left
    rows = out.rows()
    assert [r["num_tokens"] for r in rows] == out.lengths.tolist()
    np.testing.assert_allclose(
        [r["logprob"] for r in rows], [lp[:n].sum() for lp, n in zip(out.logprobs, out.lengths, strict=True)], rtol=1e-6
    )
    repeated = Sampler(config, tok, sampling, max_prompt_len=4)(params, prompts[:2], key, repeat=3)
    assert len(repeated) == 6 and (repeated.prompt_tokens[0] == repeated.prompt_tokens[2]).all()
    with pytest.raises(ValueError, match="batch_size=2"):
        sampler(params, prompts, key)
