"""HF weight IO: sharded files, bf16, and clear errors for bad checkpoints."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from jaxpt.models.config import ModelConfig
from jaxpt.models.decoder import init_params
from jaxpt.models.hf import (
    WeightsError,
    export_architectures,
    iter_safetensors,
    load_hf,
    save_hf,
    write_safetensors,
)
from tests.tiny_models import far_random_params, hf_config, make_tiny_hf


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """The tiny Llama of the parity tests (``hf_config("llama")``) with random weights, written by ``save_hf``
    (no torch: test_models_parity.py checks that transformers reads these files bit-identically)."""
    d = str(tmp_path_factory.mktemp("llama"))
    config = ModelConfig.from_hf(hf_config("llama").to_dict())
    save_hf(config, far_random_params(lambda: init_params(config, jax.random.key(0)), 0), d)
    return d


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def test_sharded_export_and_reload(llama_dir, tmp_path):
    config, params = load_hf(llama_dir)
    out = str(tmp_path / "sharded")
    save_hf(config, params, out, max_shard_bytes=40_000)
    index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
    assert len(set(index["weight_map"].values())) > 1
    config2, params2 = load_hf(out)
    jax.tree.map(np.testing.assert_array_equal, params, params2)


@pytest.mark.requires_torch
def test_bf16_roundtrip(llama_dir, tmp_path):
    config, params = load_hf(llama_dir, param_dtype="bfloat16")
    leaf = params["layers_0"]["attn"]["q"]["kernel"]
    assert leaf.dtype == np.dtype("bfloat16")
    out = str(tmp_path / "bf16")
    save_hf(config, params, out)
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert str(model.dtype) == "torch.bfloat16"
    _, params2 = load_hf(out)
    jax.tree.map(np.testing.assert_array_equal, params, params2)


@pytest.mark.requires_torch
def test_export_keeps_the_source_architectures(tmp_path):
    """GPT-2's transformers class is GPT2LMHeadModel (there is no GPT2ForCausalLM): an export names what the
    source named, and a config without a usable name (scratch, GPT2Model, an old export) gets the real class."""
    import transformers

    src = str(tmp_path / "gpt2")
    make_tiny_hf("gpt2", src)
    assert json.load(open(os.path.join(src, "config.json")))["architectures"] == ["GPT2LMHeadModel"]
    config, params = load_hf(src)
    save_hf(config, params, str(tmp_path / "export"))
    assert json.load(open(tmp_path / "export" / "config.json"))["architectures"] == ["GPT2LMHeadModel"]
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert type(model).__name__ == "GPT2LMHeadModel"
    # scratch (no architectures), a headless GPT2Model, an older jaxpt export: the family's real class
    scratch = config.replace(hf_config=tuple(kv for kv in config.hf_config if kv[0] != "architectures"))
    save_hf(scratch, params, str(tmp_path / "scratch"))
    assert json.load(open(tmp_path / "scratch" / "config.json"))["architectures"] == ["GPT2LMHeadModel"]
    for source in (None, ["GPT2Model"], ["GPT2ForCausalLM"]):
        assert export_architectures("gpt2", source) == ["GPT2LMHeadModel"]
    assert export_architectures("llama", None) == ["LlamaForCausalLM"]
    assert export_architectures("qwen2", ["Qwen2ForCausalLM"]) == ["Qwen2ForCausalLM"]
    assert export_architectures("gpt2", ["GPT2LMHeadModel"], head="score") == ["GPT2ForSequenceClassification"]
    assert hasattr(transformers, "GPT2ForSequenceClassification") and not hasattr(transformers, "GPT2ForCausalLM")


def test_export_refuses_to_overwrite(llama_dir, tmp_path):
    config, params = load_hf(llama_dir)
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        save_hf(config, params, str(out))
    assert (out / "keep.txt").read_text() == "precious"


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba", "architectures": ["MambaForCausalLM"]}))
    with pytest.raises(ValueError, match="unsupported architecture: model_type='mamba'"):
        load_hf(str(tmp_path))


def test_unsupported_rope_type():
    with pytest.raises(ValueError, match="unsupported rope_type 'yarn'"):
        ModelConfig.from_hf(
            dict(
                model_type="llama",
                vocab_size=8,
                hidden_size=8,
                intermediate_size=8,
                num_hidden_layers=1,
                num_attention_heads=2,
                rope_scaling={"rope_type": "yarn", "factor": 2.0},
            )
        )


def _rewrite(path, edit):
    tensors = [(n, np.array(a)) for n, a in iter_safetensors(path)]
    tensors = edit(tensors)
    os.remove(path)
    write_safetensors(path, [(n, a.shape, a.dtype, lambda a=a: a) for n, a in tensors])


def test_missing_tensor(llama_dir, tmp_path):
    d = _copy(llama_dir, tmp_path / "m")
    _rewrite(os.path.join(d, "model.safetensors"), lambda ts: [t for t in ts if "layers.1.mlp.up_proj" not in t[0]])
    with pytest.raises(WeightsError, match=r"missing tensors.*model.layers.1.mlp.up_proj.weight"):
        load_hf(d)


def test_unexpected_tensor(llama_dir, tmp_path):
    d = _copy(llama_dir, tmp_path / "u")
    _rewrite(
        os.path.join(d, "model.safetensors"),
        lambda ts: ts + [("model.extra.weight", np.zeros(3, np.float32))],
    )
    with pytest.raises(WeightsError, match=r"unexpected tensors.*model.extra.weight"):
        load_hf(d)


def test_wrong_shape(llama_dir, tmp_path):
    d = _copy(llama_dir, tmp_path / "s")

    def edit(ts):
        return [(n, a[:-1] if n == "model.norm.weight" else a) for n, a in ts]

    _rewrite(os.path.join(d, "model.safetensors"), edit)
    with pytest.raises(WeightsError, match=r"model.norm.weight has shape \(63,\), expected \(64,\)"):
        load_hf(d)


def test_truncated_file(llama_dir, tmp_path):
    d = _copy(llama_dir, tmp_path / "t")
    path = os.path.join(d, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(WeightsError, match="truncated"):
        load_hf(d)


def test_no_weights(tmp_path, llama_dir):
    shutil.copy(os.path.join(llama_dir, "config.json"), tmp_path)
    with pytest.raises(WeightsError, match="no model.safetensors"):
        load_hf(str(tmp_path))
