"""Parity with Hugging Face transformers' PyTorch models, both directions, for every supported family."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from jaxpt.generation.sampler import SamplingConfig, generate
from jaxpt.models.decoder import Decoder, positions_from_mask
from jaxpt.models.hf import load_hf, save_hf
from tests.tiny_models import FAMILIES, VOCAB, make_tiny_hf

pytestmark = pytest.mark.requires_torch


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory):
    d = str(tmp_path_factory.mktemp(request.param))
    return request.param, d, make_tiny_hf(request.param, d)


def _left_padded_batch(b=3, t=12, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, VOCAB, (b, t))
    mask = np.ones((b, t), np.int64)
    mask[1, :4] = 0
    mask[2, :7] = 0
    tokens[mask == 0] = 0
    return tokens, mask


@pytest.mark.parametrize("scan_layers", [False, True])
def test_logits_match_transformers(tiny, scan_layers):
    import torch

    family, d, ref_model = tiny
    config, params = load_hf(d, scan_layers=scan_layers)
    tokens, mask = _left_padded_batch()
    positions = np.asarray(positions_from_mask(jnp.asarray(mask)))
    with torch.no_grad():
        ref = ref_model(
            input_ids=torch.tensor(tokens),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(positions),
        ).logits.numpy()
    logits, _ = Decoder(config).apply(
        {"params": params}, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask)
    )
    err = np.abs(np.asarray(logits) - ref)[mask.astype(bool)].max()
    assert err <= 1e-4, f"{family}: max abs logit error {err}"


def test_export_roundtrip_identical(tiny, tmp_path):
    import torch

    family, d, ref_model = tiny
    config, params = load_hf(d, scan_layers=family == "llama")  # export also works from scanned params
    out = str(tmp_path / "export")
    save_hf(config, params, out)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ref_state, new_state = ref_model.state_dict(), reloaded.state_dict()
    ref_state = {k: v for k, v in ref_state.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    assert set(ref_state) <= set(new_state)
    for name, tensor in ref_state.items():
        assert torch.equal(tensor, new_state[name]), f"{family}: {name} differs after export"


def test_greedy_generation_matches_transformers(tiny):
    import torch

    family, d, ref_model = tiny
    config, params = load_hf(d)
    tokens, mask = _left_padded_batch(t=8, seed=1)
    n = 16
    with torch.no_grad():
        ref = ref_model.generate(
            input_ids=torch.tensor(tokens),
            attention_mask=torch.tensor(mask),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        ).numpy()[:, tokens.shape[1] :]
    sampling = SamplingConfig(max_new_tokens=n, temperature=0.0, pad_token_id=0)
    out = generate(config, params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0), sampling)
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)
    # Per-row EOS: stop row 1 at the token HF produced at step 3; the others continue unchanged.
    eos = int(ref[1, 3])
    sampling = SamplingConfig(max_new_tokens=n, temperature=0.0, pad_token_id=0, eos_token_ids=(eos,))
    out = generate(config, params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0), sampling)
    with torch.no_grad():
        ref_eos = ref_model.generate(
            input_ids=torch.tensor(tokens),
            attention_mask=torch.tensor(mask),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=eos,
        ).numpy()[:, tokens.shape[1] :]
    got = np.asarray(out.tokens)
    lengths = np.asarray(out.lengths)
    assert lengths[1] <= 4 and got[1, lengths[1] - 1] == eos
    np.testing.assert_array_equal(got[:, : ref_eos.shape[1]], ref_eos)
    assert (got[1, lengths[1] :] == 0).all()
