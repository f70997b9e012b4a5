"""Configs: presets by argument, typed command-line overrides, clear errors."""

import pytest
from ml_collections import ConfigDict

from jaxpt.config import ConfigError, apply_overrides, load_config, parse_cli, with_defaults


def test_preset_and_overrides():
    config, rest = parse_cli(
        ["--config=configs/sft/quickstart.py:tiny", "--config.optimizer.lr=3e-4", "--config.mesh.fsdp=4", "x"]
    )
    assert config.train.steps == 8  # the tiny preset
    assert config.optimizer.lr == 3e-4 and isinstance(config.optimizer.lr, float)
    assert config.mesh.fsdp == 4 and rest == ["x"]


def test_unknown_field_suggests_close_match():
    config = load_config("configs/sft/quickstart.py")
    with pytest.raises(ConfigError, match="optimizer.lr"):
        apply_overrides(config, ["--config.optimizer.lrr=1e-3"])


def test_wrong_type_is_an_error():
    config = load_config("configs/sft/quickstart.py")
    with pytest.raises(ConfigError, match="train.steps"):
        apply_overrides(config, ["--config.train.steps=many"])


def test_unknown_preset_and_missing_file():
    with pytest.raises(ValueError, match="unknown preset"):
        load_config("configs/sft/quickstart.py:huge")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("configs/sft/nope.py")


def test_with_defaults_merges_sections_and_names_unknown_keys():
    defaults = ConfigDict(dict(a=1, sub=dict(x=0.5, y=(1, 2)), items=[dict(kind="k")]))
    got = with_defaults({"sub": {"x": 2.0}, "items": [dict(kind="other", w=1)]}, defaults)
    assert got.a == 1 and got.sub.x == 2.0 and got.sub.y == (1, 2) and got["items"] == [dict(kind="other", w=1)]
    assert defaults.sub.x == 0.5  # the defaults are not modified
    assert with_defaults(None, defaults).to_dict() == defaults.to_dict()
    with pytest.raises(ConfigError, match=r"unknown config field 'rollout.sub.z'"):
        with_defaults({"sub": {"z": 1}}, defaults, "rollout")
    with pytest.raises(ConfigError, match=r"'rollout.sub.xx'; did you mean 'rollout.sub.x'"):
        with_defaults(ConfigDict({"sub": {"xx": 1}}), defaults, "rollout")


def test_a_scratch_model_keeps_nested_sections_of_its_config():
    """``model.scratch`` is a config.json-style dict; a nested section (Llama 3's ``rope_scaling``) reaches the
    ModelConfig as it would from a file (it was a ConfigDict that could not be frozen)."""
    from jaxpt.models.factory import model_config_from
    from jaxpt.training.defaults import model_config

    rope = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0)
    scratch = dict(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    scratch |= dict(num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    config = model_config_from(
        model_config(scratch=scratch | {"rope_scaling": rope | {"original_max_position_embeddings": 16}})
    )
    assert dict(config.rope_scaling)["rope_type"] == '"llama3"' and dict(config.rope_scaling)["factor"] == "8.0"
