"""PPO on the shared loop: one step on a toy reward raises the exact expected reward, rollouts sample from the
current policy, the value model initialises from a reward model / causal LM, runs log / evaluate / export."""

import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxpt.algorithms import ppo
from jaxpt.config import load_config
from jaxpt.data.tokenizer import build_char_tokenizer
from jaxpt.models.decoder import Decoder, positions_from_mask
from jaxpt.models.factory import model_config_from
from jaxpt.models.hf import load_hf, save_hf
from jaxpt.models.reward import abstract_reward_params, init_reward_params
from jaxpt.sharding import DEFAULT_RULES, make_mesh, param_shardings
from tests.rl_helpers import random_decoder_params, random_params, train_recording_sampler, trees_equal

TINY = "configs/ppo/arithmetic.py:tiny"
LOWER = "abcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ppo")
    tokenizer = build_char_tokenizer()
    config = load_config(TINY)
    model_config = model_config_from(config.model, tokenizer)
    policy_dir = str(tmp / "policy")
    save_hf(model_config, random_decoder_params(model_config, 7), policy_dir, tokenizer=tokenizer)
    return dict(tmp=tmp, tokenizer=tokenizer, model_config=model_config, policy_dir=policy_dir)


@pytest.fixture(scope="module")
def run(setup):
    """Two PPO steps on a one-token bandit: reward 1 iff the sampled token is a lowercase letter."""
    config = load_config(TINY)
    config.model.path = setup["policy_dir"]
    config.tokenizer.path, config.tokenizer.builtin = setup["policy_dir"], ""
    config.rollout.max_new_tokens = 1
    config.rewards = [dict(kind="format", pattern="[a-z]", mode="match", require_eos=False, strip=False)]
    config.ppo.update(dict(missing_eos_penalty=0.0, mini_batch_size=8, epochs=2))
    config.train.update(dict(steps=2, batch_size=32, peak_flops=1e12))

    workdir = str(setup["tmp"] / "run")
    result, calls = train_recording_sampler(config, workdir)
    return dict(config=config, workdir=workdir, calls=calls, result=result)


def expected_reward(model_config, tokenizer, params, tokens, mask):
    """E[r] exactly: the probability mass the policy puts on lowercase letters as its first token."""
    fn = jax.jit(lambda p, t, m: Decoder(model_config).apply({"params": p}, t, positions_from_mask(m), m)[0])
    probs = jax.nn.softmax(fn(params, tokens, mask)[:, -1].astype(np.float32), axis=-1)
    ids = tokenizer.convert_tokens_to_ids(list(LOWER))
    return float(np.mean(np.sum(np.asarray(probs)[:, ids], axis=-1)))


def test_one_ppo_step_increases_the_expected_reward(setup, run):
    rollouts = [c for c in run["calls"] if c["sampling"].temperature > 0]
    assert len(rollouts) == 2
    before, after = rollouts[0]["params"], rollouts[1]["params"]
    _, loaded = load_hf(setup["policy_dir"])
    assert trees_equal(before, loaded)  # the first rollout samples from the loaded policy
    assert not trees_equal(after, before)  # the second from the policy one PPO step produced
    for c in rollouts:  # over both steps' prompt batches
        r0 = expected_reward(setup["model_config"], setup["tokenizer"], before, c["tokens"], c["mask"])
        r1 = expected_reward(setup["model_config"], setup["tokenizer"], after, c["tokens"], c["mask"])
        print(f"expected reward {r0:.4f} -> {r1:.4f}")
        assert r1 > r0 + 0.03, (r0, r1)


def test_run_metrics_eval_adaptive_kl_and_export(run):
    lines = [json.loads(x) for x in open(os.path.join(run["workdir"], "metrics.jsonl"))]
    steps = [x for x in lines if "train/reward" in x]
    assert [x["step"] for x in steps] == [1, 2]
    for key in (
        "reward",
        "kl",
        "entropy",
        "clipfrac",
        "approx_kl",
        "vf_loss",
        "pg_loss",
        "explained_variance",
        "response_length",
        "kl_coef",
        "value_mean",
    ):
        assert all(np.isfinite(x[f"train/{key}"]) for x in steps), key
    assert abs(steps[0]["train/kl"]) < 1e-4  # step 1 samples from the reference itself
    # adaptive KL (target 0.5, horizon 100, 32 rows): KL ~ 0 -> error clipped at -0.2
    np.testing.assert_allclose(steps[1]["train/kl_coef"], 0.05 * (1 - 0.2 * 32 / 100), rtol=1e-5)
    ppo_cfg = run["config"].ppo
    assert run["result"]["final_step"] == 2 * ppo_cfg.epochs * (32 // ppo_cfg.mini_batch_size)
    # the coefficient is part of the data state that checkpoints keep (for resume)
    saved = json.load(open(os.path.join(run["workdir"], "checkpoints", "2", "data", "metadata")))
    assert saved["iterator"]["position"] == 64
    kl = [x["train/kl"] for x in steps]
    want = 0.05
    for k in kl:  # the controller's update after each of the 2 rollouts
        want *= 1 + np.clip(k / 0.5 - 1, -0.2, 0.2) * 32 / 100
    np.testing.assert_allclose(saved["iterator"]["extra"]["kl_coef"], want, rtol=1e-5)
    # greedy eval before / after, and NLL of the reference completions
    for key in ("eval_before", "eval_after"):
        assert {"greedy/reward", "greedy/reward/format", "loss"} <= set(run["result"][key])
    export = run["result"]["export_dir"]
    assert os.path.exists(os.path.join(export, "model.safetensors"))
    assert os.path.exists(os.path.join(export, "value_model", "model.safetensors"))


@pytest.mark.parametrize("kind", ["reward_model", "causal_lm"])
def test_value_model_initialisation(setup, kind):
    config = load_config(TINY)
    mc = setup["model_config"]
    if kind == "reward_model":  # an RM run: <run>/export, decoder and head loaded
        rm = random_params(jax.eval_shape(lambda: init_reward_params(mc, jax.random.key(0))), 5, std=0.1)
        path = str(setup["tmp"] / "rm_run")
        save_hf(mc, rm, os.path.join(path, "export"), head="score", tokenizer=setup["tokenizer"])
    else:  # a causal LM: its decoder, a fresh head
        path = setup["policy_dir"]
    config.ppo.value_model_path = path
    p = ppo.ppo_config(config)
    value_config, init = ppo.value_model(config, p, mc)
    mesh = make_mesh(-1, 1, 1)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        shardings = param_shardings(abstract_reward_params(value_config), mesh, DEFAULT_RULES)
        params = jax.device_get(init(shardings, None))
    if kind == "reward_model":
        assert trees_equal(params, rm)
    else:
        _, lm = load_hf(path)
        assert trees_equal(params["decoder"], {k: v for k, v in lm.items() if k != "lm_head"})
        assert params["score"]["kernel"].shape == (mc.hidden_size, 1)


def test_config_errors():
    config = load_config(TINY)
    config.ppo.kl_estimator = "k2"
    with pytest.raises(ValueError, match="kl_estimator"):
        ppo.ppo_config(config)
    config = load_config(TINY)
    config.ppo.typo = 1
    with pytest.raises(ValueError, match="unknown config field 'ppo.typo'"):
        ppo.ppo_config(config)
