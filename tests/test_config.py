"""Configs: presets by argument, typed command-line overrides, clear errors."""

import pytest

from jaxpt.config import ConfigError, apply_overrides, load_config, parse_cli


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
