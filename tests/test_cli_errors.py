"""Every mistake a user can fix is one line on stderr (what, where, how to fix) and exit code 2, for every
sub-command, without a traceback; ``--debug`` / ``JAXPT_DEBUG=1`` bring the traceback back (issue 16)."""

from __future__ import annotations

import json
import logging

import jax
import pytest

from jaxpt.cli import main
from jaxpt.config import ConfigError
from jaxpt.data.tokenizer import build_char_tokenizer
from jaxpt.models.config import ModelConfig
from jaxpt.models.decoder import init_params
from jaxpt.models.hf import save_hf
from tests.tiny_models import SFT_TINY, far_random_params

N_POSITIONS = 16


def run(capsys, *argv: str) -> tuple[int, str]:
    """``jaxpt ARGV`` in-process: (exit code, stderr)."""
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's --help and the like
        code = e.code
    return code, capsys.readouterr().err


def assert_user_error(code: int, err: str, command: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{command}: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, err)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> str:
    """A 1-layer GPT-2 (learned positions, ``n_positions=16``) over the char tokenizer, saved as a HF dir."""
    tokenizer = build_char_tokenizer()
    config = ModelConfig.from_hf(
        dict(
            model_type="gpt2",
            vocab_size=len(tokenizer),
            n_embd=32,
            n_layer=1,
            n_head=2,
            n_positions=N_POSITIONS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    out = str(tmp_path_factory.mktemp("gpt2"))
    save_hf(config, far_random_params(lambda: init_params(config, jax.random.key(0)), 0), out, tokenizer=tokenizer)
    return out


def train_argv(workdir, *extra: str) -> list[str]:
    return ["train", f"--config={SFT_TINY}", f"--workdir={workdir}", *extra]


# ------------------------------------------------------------------------------------------ jaxpt train


def test_unknown_config_field(capsys, tmp_path):
    code, err = run(capsys, *train_argv(tmp_path / "w", "--config.optimizer.lrr=1"))
    assert_user_error(code, err, "jaxpt train", "unknown config field 'optimizer.lrr'", "did you mean 'optimizer.lr'")


def test_missing_data_file_fails_before_the_workdir_is_made(capsys, tmp_path):
    missing = tmp_path / "missing.jsonl"
    code, err = run(capsys, *train_argv(tmp_path / "w", f"--config.data.train={missing}"))
    assert_user_error(code, err, "jaxpt train", f"data.train: no dataset found at '{missing}'", ".jsonl")
    assert not (tmp_path / "w").exists()  # the corrected command must not find a "run" to refuse


def test_empty_jsonl(capsys, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, err = run(capsys, *train_argv(tmp_path / "w", f"--config.data.train={empty}"))
    assert_user_error(code, err, "jaxpt train", f"data file '{empty}' is empty")
    assert "StopIteration" not in err


def test_missing_column(capsys, tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"question": "1+1=", "answer": "2"}) + "\n")
    code, err = run(capsys, *train_argv(tmp_path / "w", f"--config.data.eval={data}"))
    found = "found columns ['answer', 'question']"
    assert_user_error(code, err, "jaxpt train", f"data.eval='{data}'", found, "'prompt' + 'completion'")


def test_missing_preference_column(capsys, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "1+1=", "chosen": "2"}) + "\n")
    argv = ["train", "--config=configs/dpo/quickstart.py", f"--workdir={tmp_path / 'w'}", f"--config.data.train={data}"]
    code, err = run(capsys, *argv)
    assert_user_error(code, err, "jaxpt train", f"data.train='{data}'", "missing ['rejected']")


def test_unknown_argument(capsys, tmp_path):
    code, err = run(capsys, *train_argv(tmp_path / "w", "--bogus"))
    assert_user_error(code, err, "jaxpt train", "unrecognised arguments: --bogus", "jaxpt train --help")


def test_workdir_holding_a_run_without_resume(capsys, tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.json").write_text("{}")
    code, err = run(capsys, *train_argv(tmp_path / "w"))
    assert_user_error(code, err, "jaxpt train", "already holds a run", "pass --resume")


def test_mesh_that_does_not_divide_the_devices(capsys, tmp_path):
    code, err = run(capsys, *train_argv(tmp_path / "w", "--config.mesh.data=3"))
    assert_user_error(code, err, "jaxpt train", "sizes multiply to 3 but there are 8 devices", "config.mesh")


def test_seq_len_past_learned_positions(capsys, tmp_path, gpt2_dir):
    code, err = run(capsys, *train_argv(tmp_path / "w", f"--config.model.path={gpt2_dir}", "--config.data.seq_len=64"))
    assert_user_error(code, err, "jaxpt train", "data.seq_len=64 needs 64 positions", "n_positions=16", "at most 16")
    assert not (tmp_path / "w").exists()


def test_rollout_sampling_field_out_of_range(capsys, tmp_path):
    argv = ["--config=configs/grpo/arithmetic.py:tiny", f"--workdir={tmp_path / 'w'}", "--config.rollout.top_p=2"]
    code, err = run(capsys, "train", *argv)
    assert_user_error(code, err, "jaxpt train", "rollout.top_p=2.0: must be in (0, 1]")
    assert not (tmp_path / "w").exists()


# --------------------------------------------------------------------------------------- jaxpt generate


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--max-new-tokens=0", "--max-new-tokens=0: must be >= 1"),
        ("--max-new-tokens=-1", "--max-new-tokens=-1: must be >= 1"),
        ("--temperature=-0.5", "--temperature=-0.5: must be >= 0"),
        ("--top-p=0", "--top-p=0.0: must be in (0, 1]"),
        ("--top-p=1.5", "--top-p=1.5: must be in (0, 1]"),
        ("--top-k=-1", "--top-k=-1: must be >= 0"),
    ],
)
def test_sampling_flag_out_of_range(capsys, gpt2_dir, flag, message):
    code, err = run(capsys, "generate", f"--model={gpt2_dir}", "--prompt=1+2=", flag)
    assert_user_error(code, err, "jaxpt generate", message)


def test_generating_past_learned_positions(capsys, gpt2_dir):
    # "<bos>12+34=" is 7 tokens: 7 + 10 - 1 = 16 positions fit (the last new token is never fed back), 11 do not
    code, err = run(capsys, "generate", f"--model={gpt2_dir}", "--prompt=12+34=", "--max-new-tokens=11")
    assert_user_error(
        code,
        err,
        "jaxpt generate",
        "a prompt of 7 tokens + max_new_tokens=11 needs 17 positions",
        "16 learned position embeddings (n_positions=16)",
        "lower max_new_tokens to at most 10",
    )
    assert main(["generate", f"--model={gpt2_dir}", "--prompt=12+34=", "--max-new-tokens=10"]) == 0
    assert json.loads(capsys.readouterr().out)["num_tokens"] == 10


def test_missing_model_dir(capsys, tmp_path):
    code, err = run(capsys, "generate", f"--model={tmp_path / 'nope'}", "--prompt=1+2=")
    assert_user_error(code, err, "jaxpt generate", f"model directory '{tmp_path / 'nope'}' does not exist")


def test_unknown_architecture(capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba", "architectures": ["MambaForCausalLM"]}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    code, err = run(capsys, "generate", f"--model={tmp_path}", "--prompt=1+2=")
    assert_user_error(
        code, err, "jaxpt generate", "config.json: unsupported architecture: model_type='mamba'", "jaxpt supports"
    )


def test_generate_unknown_argument_and_missing_required(capsys, gpt2_dir):
    code, err = run(capsys, "generate", f"--model={gpt2_dir}", "--prompt=1+2=", "--bogus")
    assert_user_error(code, err, "jaxpt generate", "unrecognised arguments: --bogus")
    code, err = run(capsys, "generate", "--prompt=1+2=")
    assert_user_error(code, err, "jaxpt generate", "the following arguments are required: --model")
    code, err = run(capsys, "generate", f"--model={gpt2_dir}", "--prompt=1", "--max-new-tokens=ten")
    assert_user_error(code, err, "jaxpt generate", "--max-new-tokens: invalid int value: 'ten'")


def test_unknown_sub_command(capsys):
    code, err = run(capsys, "trian", f"--config={SFT_TINY}")
    assert_user_error(code, err, "jaxpt", "invalid choice: 'trian'", "jaxpt --help")


# ----------------------------------------------------------------------------------------------- --debug


@pytest.mark.parametrize("where", ["before", "after", "env"])
def test_debug_shows_the_traceback(capsys, tmp_path, monkeypatch, where):
    argv = train_argv(tmp_path / "w", "--config.optimizer.lrr=1")
    if where == "before":
        argv = ["--debug", *argv]
    elif where == "after":
        argv = [*argv, "--debug"]
    else:
        monkeypatch.setenv("JAXPT_DEBUG", "1")
    with pytest.raises(ConfigError, match="optimizer.lrr"):  # raised, so the interpreter prints its traceback
        main(argv)


def test_internal_errors_keep_their_traceback(tmp_path, monkeypatch):
    import jaxpt.training.loop as loop

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(loop, "train", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(train_argv(tmp_path / "w"))


# ---------------------------------------------------------------------------------- RoPE past its range


def test_rope_past_its_range_warns_unless_the_scaling_covers_it(caplog):
    hf = dict(
        model_type="llama",
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
    )
    plain = ModelConfig.from_hf(hf)
    scaled = ModelConfig.from_hf(
        hf | {"rope_scaling": {"rope_type": "linear", "factor": 8.0}}  # stretched to 128 positions
    )
    with caplog.at_level(logging.WARNING, logger="jaxpt.models.config"):
        plain.check_positions(16, "sixteen", "-")
        scaled.check_positions(100, "a hundred", "-")
        assert not caplog.records
        plain.check_positions(17, "seventeen", "-")
        scaled.check_positions(129, "a hundred and twenty-nine", "-")
    assert [r.getMessage().split(" needs")[0] for r in caplog.records] == ["seventeen", "a hundred and twenty-nine"]
    assert "max_position_embeddings=16" in caplog.records[0].getMessage()
