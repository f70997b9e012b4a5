"""Rewards for online RL: verifiable rewards, format checks, a reward-model scorer and their weighted sum."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpt.data.tokenizer import build_char_tokenizer
from jaxpt.models.config import ModelConfig
from jaxpt.models.hf import save_hf
from jaxpt.models.reward import ScalarHeadModel, init_reward_params
from jaxpt.rewards import REWARD_KINDS, RewardInput, RewardModelScorer, build_rewards, register_reward
from jaxpt.sharding import DEFAULT_RULES, make_mesh


def _input(prompts, completions, records=None, finished=None):
    records = records or [{"prompt": p} for p in prompts]
    finished = np.ones(len(prompts), bool) if finished is None else np.asarray(finished, bool)
    return RewardInput(list(prompts), list(completions), records, finished)


def test_arithmetic_verifier_reward():
    fn = build_rewards([{"kind": "arithmetic"}])
    x = _input(["17+25=", "17+25=", "9-3=", "9-3=", "5+5="], ["42", "420", "6", " 6 and more", "x"])
    total, parts = fn(x)
    np.testing.assert_array_equal(total, [1, 0, 1, 1, 0])
    np.testing.assert_array_equal(parts["arithmetic"], total)
    chat = [[{"role": "user", "content": "2+2="}]]
    assert build_rewards([{"kind": "arithmetic", "correct": 2.0, "incorrect": -1.0}])(_input(chat, ["4"]))[0][0] == 2


def test_arithmetic_digit_partial_credit():
    fn = build_rewards([{"kind": "arithmetic_digits"}])
    x = _input(["98+38="] * 5, ["136", "138", "36", "1360", "x"])
    np.testing.assert_allclose(fn(x)[0], [1.0, 2 / 3, 2 / 3, 0.0, 0.0], rtol=1e-6)  # aligned from the units


def test_exact_match_and_format():
    x = _input(
        ["a", "b", "c", "d"],
        ["42", " 42\nmore", "41", "-7"],
        records=[{"answer": 42}, {"answer": 42}, {"answer": 42}, {"answer": -7}],
        finished=[True, True, True, False],
    )
    total, _ = build_rewards([{"kind": "exact_match"}])(x)
    np.testing.assert_array_equal(total, [1, 1, 0, 1])
    total, _ = build_rewards([{"kind": "format"}])(x)  # integer, then EOS
    np.testing.assert_array_equal(total, [1, 0, 1, 0])
    total, _ = build_rewards([{"kind": "format", "require_eos": False}])(x)
    np.testing.assert_array_equal(total, [1, 0, 1, 1])
    total, _ = build_rewards([{"kind": "format", "pattern": "more", "mode": "search", "require_eos": False}])(x)
    np.testing.assert_array_equal(total, [0, 1, 0, 0])


def test_weighted_sum_names_and_errors():
    fn = build_rewards(
        [
            {"kind": "arithmetic", "weight": 1.0},
            {"kind": "format", "weight": 0.1},
            {"kind": "format", "weight": -0.5, "pattern": "4", "mode": "match", "require_eos": False},
        ]
    )
    assert fn.names == ["arithmetic", "format", "format_2"]
    total, parts = fn(_input(["2+2=", "2+2=", "2+3="], ["4", "41", "x"], finished=[True, True, False]))
    np.testing.assert_allclose(total, [1 + 0.1 - 0.5, 0 + 0.1 - 0.5, 0.0], rtol=1e-6)
    assert set(parts) == {"arithmetic", "format", "format_2"}
    with pytest.raises(ValueError, match="unknown reward kind"):
        build_rewards([{"kind": "nope"}])
    with pytest.raises(ValueError, match="unknown options"):
        build_rewards([{"kind": "format", "patern": "x"}])
    with pytest.raises(ValueError, match="empty"):
        build_rewards([])


def length_reward(prompts, completions, records, finished):  # used through kind="python"
    return [len(c) + (10 if f else 0) for c, f in zip(completions, finished, strict=True)]


def test_python_and_registered_kinds():
    fn = build_rewards([{"kind": "python", "fn": "tests.test_rewards:length_reward"}])
    np.testing.assert_array_equal(fn(_input(["p", "q"], ["abc", "a"], finished=[True, False]))[0], [13, 1])

    @register_reward("test_constant")
    def constant(value: float = 3.0):
        return lambda x: np.full(len(x), value, np.float32)

    try:
        total, _ = build_rewards([{"kind": "test_constant", "weight": 2.0, "value": 0.25}])(_input(["p"], ["c"]))
        assert total[0] == 0.5
    finally:
        REWARD_KINDS.pop("test_constant")


@pytest.fixture(scope="module")
def reward_model_run(tmp_path_factory):
    """A tiny scalar-head model exported as an RM run does it (``<run>/export``, HF seq-cls + tokenizer)."""
    tokenizer = build_char_tokenizer()
    config = ModelConfig.from_hf(
        dict(
            model_type="llama",
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=64,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    rng = np.random.default_rng(3)  # numpy draws: no XLA compile of the initializers
    shapes = jax.eval_shape(lambda: init_reward_params(config, jax.random.key(0)))
    params = jax.tree.map(lambda x: (0.3 * rng.standard_normal(x.shape)).astype(np.float32), shapes)
    run = tmp_path_factory.mktemp("rm_run")
    save_hf(config, params, str(run / "export"), head="score", tokenizer=tokenizer)
    return str(run), config, params, tokenizer


def _direct_scores(config, params, rows):
    """Each row's value at its last token, from one right-padded call without segment ids."""
    width = max(len(r) for r in rows)
    tokens = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = r
    values = ScalarHeadModel(config).apply({"params": params}, jnp.asarray(tokens), per_token=True)
    return np.asarray([values[i, len(r) - 1] for i, r in enumerate(rows)])  # causal: padding after is unseen


def test_reward_model_scores_prompt_and_completion(reward_model_run):
    path, config, params, tok = reward_model_run
    prompts, completions, finished = ["12+7=", "3-1=", "8+8="], ["19", "2", "1"], [True, True, False]
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    rows = [
        [tok.bos_token_id, *ids(p), *ids(c)] + ([tok.eos_token_id] if f else [])
        for p, c, f in zip(prompts, completions, finished, strict=True)
    ]  # exactly the preference data's layout: <bos> prompt completion <eos> (no EOS when cut)
    want = _direct_scores(config, params, rows)
    fn = build_rewards([{"kind": "reward_model", "path": path, "batch_size": 2, "shift": 1.0, "scale": 2.0}])
    total, parts = fn(_input(prompts, completions, finished=finished))
    np.testing.assert_allclose(parts["reward_model"], (want + 1.0) * 2.0, atol=1e-5)
    assert len(set(np.round(want, 5))) == 3  # the scores really differ

    mesh = make_mesh(-1, 1, 1)  # sharded params and rows on the 8-device mesh give the same scores
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        fn = build_rewards([{"kind": "reward_model", "path": path + "/export"}], mesh=mesh, rules=list(DEFAULT_RULES))
        total, _ = fn(_input(prompts, completions, finished=finished))
    np.testing.assert_allclose(total, want, atol=1e-5)
    with pytest.raises(FileNotFoundError):
        build_rewards([{"kind": "reward_model", "path": path + "/nope"}])


def test_every_scorer_gives_one_text_one_score(reward_model_run):
    """RL's reward and ``jaxpt eval`` / data generation (a ``RewardModelScorer`` of a loaded model) score
    alike: the same pair gets the same score, unfinished completions carry no EOS and long ones keep their end
    (``encode_scored``)."""
    from jaxpt.models.loaded import load_reward_model

    path, config, params, tok = reward_model_run
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    long_prompt = "1+2+3+4+5+6+7+8+9+10+11+12+13+14+15+16="
    prompts = ["12+7=", "3-1=", long_prompt, long_prompt]
    completions, finished = ["19", "2", "136", "13"], [True, False, True, False]
    width = 24  # the long prompt needs 42+ tokens: its beginning goes
    rows = [
        ([tok.bos_token_id, *ids(p), *ids(c)] + ([tok.eos_token_id] if f else []))[-width:]
        for p, c, f in zip(prompts, completions, finished, strict=True)
    ]
    assert rows[2][-1] == tok.eos_token_id and rows[3][-2:] == ids("13") and len(rows[2]) == width
    want = _direct_scores(config, params, rows)

    rl = build_rewards([{"kind": "reward_model", "path": path, "max_length": width}])
    _, parts = rl(_input(prompts, completions, finished=finished))
    rm = load_reward_model(path + "/export")
    evaluated = RewardModelScorer(rm.config, rm.params, rm.tokenizer, max_length=width, batch_size=3)
    np.testing.assert_allclose(parts["reward_model"], want, atol=1e-5)
    np.testing.assert_allclose(evaluated.score(prompts, completions, finished), want, atol=1e-5)
    # without flags every completion counts as finished (reference answers): EOS at the end of each row
    done = [
        [tok.bos_token_id, *ids(p), *ids(c), tok.eos_token_id][-width:]
        for p, c in zip(prompts, completions, strict=True)
    ]
    np.testing.assert_allclose(evaluated.score(prompts, completions), _direct_scores(config, params, done), atol=1e-5)
    with pytest.raises(ValueError, match="finished flags"):
        evaluated.score(prompts, completions, finished[:2])
    assert evaluated.score([], []).shape == (0,)
    # chat=True: string prompts are scored as the one-message conversations they were rendered as
    as_chat = build_rewards([{"kind": "reward_model", "path": path, "max_length": width, "chat": True}])
    messages = [[{"role": "user", "content": p}] for p in prompts]
    chat_scores = as_chat(_input(prompts, completions, finished=finished))[0]
    np.testing.assert_allclose(chat_scores, rl(_input(messages, completions, finished=finished))[0], atol=1e-6)
    assert not np.allclose(chat_scores, want, atol=1e-3)  # and not as plain text
