"""Reward models: HF *ForSequenceClassification parity (import and export) for Llama-family and GPT-2."""

import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from jaxpt.models.decoder import positions_from_mask
from jaxpt.models.hf import load_hf, save_hf
from jaxpt.models.reward import ScalarHeadModel
from tests.tiny_models import VOCAB, hf_config

pytestmark = pytest.mark.requires_torch


@pytest.mark.parametrize("family", ["llama", "qwen3", "gpt2"])
def test_sequence_classification_roundtrip(family, tmp_path):
    import torch

    torch.manual_seed(0)
    cfg = hf_config(family)
    cfg.num_labels = 1
    cfg.pad_token_id = 0
    ref = transformers.AutoModelForSequenceClassification.from_config(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ref.save_pretrained(tmp_path / "in")
    config, params = load_hf(str(tmp_path / "in"), head="score")

    rng = np.random.default_rng(0)
    tokens = rng.integers(3, VOCAB, (3, 10))
    mask = np.ones_like(tokens)
    mask[1, 7:] = 0  # right padding: HF pools the last non-pad token
    mask[2, 4:] = 0
    tokens[mask == 0] = 0
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits[:, 0].numpy()
    positions = positions_from_mask(jnp.asarray(mask))
    got = ScalarHeadModel(config).apply({"params": params}, jnp.asarray(tokens), positions, jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)

    save_hf(config, params, str(tmp_path / "out"), head="score")
    back = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    ref_state, new_state = ref.state_dict(), back.state_dict()
    for name, tensor in ref_state.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        assert torch.equal(tensor, new_state[name]), name
