"""Reward models through the shared loop: held-out accuracy rises, HF export parity, init sources, margin.

The learning test uses a synthetic preference (chosen completions drawn from ``abcde``, rejected from
``vwxyz``, fresh random strings in the held-out pairs) so that a tiny random model learns it in a few dozen
steps; the arithmetic pairs are the quickstart's (configs/rm/quickstart.py, from the SFT export).
"""

import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpt.algorithms import reward_model as rm
from jaxpt.config import apply_overrides, load_config
from jaxpt.data.preference import fixed_preference_batches
from jaxpt.data.tokenizer import build_char_tokenizer
from jaxpt.losses.preference import bradley_terry_loss
from jaxpt.models.decoder import abstract_params
from jaxpt.models.factory import model_config_from
from jaxpt.models.hf import load_hf, save_hf
from jaxpt.models.logprobs import full_sequences
from jaxpt.models.reward import abstract_reward_params
from jaxpt.sharding import make_mesh, param_shardings
from jaxpt.training import loop

ROOT = pathlib.Path(__file__).resolve().parents[1]


def save_random_lm(config, out_dir: str, seed: int, std: float = 0.1) -> str:
    """A random HF causal LM of ``config`` drawn with numpy (no jitted init to compile)."""
    rng = np.random.default_rng(seed)

    def draw(path, s):
        if path[-1].key == "scale":
            return (1.0 + 0.1 * rng.standard_normal(s.shape)).astype(s.dtype)
        return (std * rng.standard_normal(s.shape)).astype(s.dtype)

    params = jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(abstract_params(config)))
    save_hf(config, params, out_dir, tokenizer=build_char_tokenizer())
    return out_dir


def synthetic_pairs(n: int, seed: int, margin: bool = False) -> list[dict]:
    rng = np.random.default_rng(seed)

    def word(letters):
        return "".join(rng.choice(list(letters), int(rng.integers(1, 5))))

    rows = []
    for _ in range(n):
        row = {
            "prompt": "".join(rng.choice(list("0123456789"), 3)) + "?",
            "chosen": word("abcde"),
            "rejected": word("vwxyz"),
        }
        if margin:
            row["margin"] = float(rng.uniform(0, 2))
        rows.append(row)
    return rows


def _write(path: pathlib.Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def tiny_config(*overrides):
    c = load_config(str(ROOT / "configs/rm/quickstart.py:tiny"))
    c.model.scratch.update(dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1))
    c.train.update(dict(steps=40, batch_size=8, log_every=10, eval_every=40, checkpoint_every=1000))
    c.optimizer.update(dict(lr=3e-3, warmup_steps=4))
    return apply_overrides(c, list(overrides))


class NoCheckpoints:
    """Stands in for ``jaxpt.training.checkpoint.Checkpointer`` (checkpointing has its own tests; saving
    sharded arrays costs seconds of per-shard compilation on the fake 8-device CPU)."""

    def __init__(self, *args, **kwargs):
        pass

    def latest_step(self):
        return None

    def maybe_save(self, *args, **kwargs):
        pass

    def wait(self):
        pass

    def close(self):
        pass


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("rm")
    model_config = model_config_from(tiny_config().model, build_char_tokenizer())
    return dict(
        train=_write(d / "train.jsonl", synthetic_pairs(320, seed=0)),
        eval=_write(d / "eval.jsonl", synthetic_pairs(36, seed=1)),  # 36 pairs: the last batch is padded
        lm=save_random_lm(model_config, str(d / "lm"), seed=0),
    )


@pytest.fixture(scope="module")
def trained(files, tmp_path_factory):
    """40 steps on mesh (data=4, tensor=2) from a random causal LM, with held-out eval and a HF export."""
    config = tiny_config(f"model.path={files['lm']}", "mesh.data=4", "mesh.tensor=2")
    config.data.train, config.data.eval = files["train"], files["eval"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "Checkpointer", NoCheckpoints)
        result = loop.train(config, str(tmp_path_factory.mktemp("rm_run") / "run"))
    return config, result


def test_heldout_accuracy_rises_and_the_export_reloads_exactly(trained):
    _, result = trained
    before, after = result["eval_before"], result["eval_after"]
    print("eval before", before, "\neval after ", after)
    assert after["rewards/accuracy"] >= 0.9 and after["rewards/accuracy"] > before["rewards/accuracy"] + 0.2
    assert after["rewards/margin"] > before["rewards/margin"] + 0.5 and after["loss"] < before["loss"]

    # The export reloads as exactly the trained params, under the reward model's head.
    params = jax.device_get(result["state"].params)
    _, exported = load_hf(result["export_dir"], head="score")
    for x, y in zip(jax.tree.leaves(exported), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.requires_torch
def test_export_scores_match_transformers(files, trained):
    """The export is a *ForSequenceClassification checkpoint that transformers scores exactly as we do."""
    import torch
    import transformers

    config, result = trained
    params = jax.device_get(result["state"].params)
    model_config, _ = load_hf(result["export_dir"], head="score")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(result["export_dir"]).eval()
    assert type(hf).__name__ == "LlamaForSequenceClassification"
    tok = build_char_tokenizer()
    held_out = rm.load_pairs(files["eval"], tok, config.data)
    batch = fixed_preference_batches(held_out, 8, config.data.seq_len, tok.pad_token_id)[-1]  # 4 real + 4 padding
    tokens, _, segments = (np.asarray(x) for x in full_sequences(batch))
    ours = np.asarray(jax.jit(lambda p, b: rm.sequence_rewards(model_config, p, b))(params, batch))
    rows = np.flatnonzero(segments.sum(1) > 0)  # padding pairs have empty rows; HF cannot pool those
    with torch.no_grad():
        want = (
            hf(input_ids=torch.tensor(tokens[rows]), attention_mask=torch.tensor((segments[rows] > 0).astype(np.int64)))
            .logits[:, 0]
            .numpy()
        )
    print("ours", ours[rows], "\ntransformers", want)
    np.testing.assert_allclose(ours[rows], want, atol=1e-4)


def test_init_from_causal_lm_and_from_sequence_classification(files, tmp_path):
    rules = [tuple(r) for r in tiny_config().mesh.rules]
    mesh = make_mesh(2, 2, 2)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        config = tiny_config(f"model.path={files['lm']}")
        model_config = model_config_from(config.model)
        shardings = param_shardings(abstract_reward_params(model_config), mesh, rules)
        assert rm.detect_head(config.model) == "lm"
        params = rm.init_reward_model(config, model_config, mesh, shardings)
        _, lm = load_hf(files["lm"])
        assert set(params) == {"decoder", "score"} and "lm_head" not in params["decoder"]
        for x, y in zip(jax.tree.leaves(params["decoder"]), jax.tree.leaves(lm), strict=True):
            np.testing.assert_array_equal(x, y)  # tied embeddings: the whole LM is the decoder
        head = np.asarray(params["score"]["kernel"])
        assert head.shape == (32, 1) and 0.005 < head.std() < 0.05  # random, std 0.02

        save_hf(model_config, params, str(tmp_path / "rm"), head="score")
        config = tiny_config(f"model.path={tmp_path / 'rm'}")  # head="auto" reads config.json architectures
        assert rm.detect_head(config.model) == "score"
        again = rm.init_reward_model(config, model_config, mesh, shardings)
        for x, y in zip(jax.tree.leaves(again), jax.tree.leaves(params), strict=True):
            np.testing.assert_array_equal(x, y)
        assert again["decoder"]["embed"]["embedding"].sharding == shardings["decoder"]["embed"]["embedding"]


def test_margin_column_and_center_coef_match_bradley_terry(files, tmp_path):
    config = tiny_config()
    tok = build_char_tokenizer()
    path = _write(tmp_path / "m.jsonl", synthetic_pairs(5, seed=3, margin=True))
    pairs = rm.load_pairs(path, tok, config.data, extra_columns=("margin",))
    batch = {k: jnp.asarray(v) for k, v in fixed_preference_batches(pairs, 8, config.data.seq_len, 0)[0].items()}
    margins = np.asarray([r["margin"] for r in map(json.loads, open(path))], np.float32)
    np.testing.assert_allclose(batch["margin"][:5], margins)
    model_config, params = load_hf(files["lm"])
    params = {"decoder": params, "score": rm.random_head(model_config, jax.random.key(0))}
    loss_fns = [rm.make_loss_fn(model_config, center) for center in (0.0, 0.5)]

    @jax.jit  # one compilation for the rewards and both losses
    def run(p):
        return rm.sequence_rewards(model_config, p, batch), [f(p, batch, None, None) for f in loss_fns]

    r, outs = run(params)
    # the shared-prompt layout (what the RM's data iterator makes): same rewards, same loss gradient
    shared = fixed_preference_batches(pairs, 8, config.data.seq_len, 0, shared_prompt=True)[0]
    shared = {k: jnp.asarray(v) for k, v in shared.items()}
    real = np.r_[0:5, 8:13]
    r_shared = jax.jit(lambda p: rm.sequence_rewards(model_config, p, shared))(params)
    np.testing.assert_allclose(np.asarray(r_shared)[real], np.asarray(r)[real], rtol=1e-5, atol=1e-6)
    grad = jax.jit(jax.grad(lambda p, b: loss_fns[1](p, b, None, None)[0]))
    for x, y in zip(jax.tree.leaves(grad(params, batch)), jax.tree.leaves(grad(params, shared)), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(y))))
    for center, (loss_sum, weight, metrics) in zip((0.0, 0.5), outs, strict=True):
        want, want_metrics = bradley_terry_loss(r[:5], r[8:13], jnp.asarray(margins), center)
        assert float(weight) == 5.0
        np.testing.assert_allclose(loss_sum / weight, want, rtol=1e-5)
        for k, v in want_metrics.items():
            np.testing.assert_allclose(metrics[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    no_margin = rm.load_pairs(path, tok, config.data)  # margin_column not asked for: plain BT
    assert "row_margin" not in no_margin[0]
