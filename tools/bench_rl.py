"""Online-RL iteration benchmarks (plug-in cases of ``tools/bench.py``): PPO and GRPO on bench-small.

    python tools/bench.py ppo grpo --repeats 3

One iteration = one rollout (``AlgorithmParts.rollout`` of the real algorithm: jitted sampling from the
current params, decode, reward, jitted scoring pass, advantages) + its optimizer updates through the loop's
jitted train step. 8 prompts of 128 tokens, 128 new tokens; GRPO samples G=8 completions per prompt (64
rows), PPO one (8 rows); each rollout is one minibatch / one update (``num_iterations`` / ``epochs`` = 1).
A character-level tokenizer over an 8184-character alphabet gives the 8192-token vocabulary of bench-small,
so every sampled id decodes. Rows: seconds per rollout and per update (medians), samples/s over the whole
iteration, and the share of the iteration spent in generation.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

B, P, N, G = 8, 128, 128, 8


def char_alphabet(size: int) -> str:
    """``size`` distinct characters from U+4E00 up (surrogates skipped): a character tokenizer for any vocabulary
    size, so every sampled id decodes (bench-small's 8184 are all CJK ideographs)."""
    chars = (chr(c) for c in range(0x4E00, 0x110000) if not 0xD800 <= c < 0xE000)
    return "".join(itertools.islice(chars, size))


def rl_config(algorithm: str, scratch: dict | None = None, shape: tuple[int, int, int, int] = (B, P, N, G), **model):
    """``(resolved config, tokenizer)`` of an RL benchmark run: ``scratch`` (an HF config.json dict with its
    ``vocab_size``; default bench-small), ``shape`` = (prompts, prompt tokens, new tokens, G) and ``model``
    overrides of ``config.model`` (dtype, remat, ...). The prompts are random characters, written to a JSONL file."""
    from ml_collections import ConfigDict

    from jaxpt.algorithms import resolve_config
    from jaxpt.data.tokenizer import CHAR_SPECIAL_TOKENS, build_char_tokenizer
    from jaxpt.training.defaults import mesh_config, model_config, optimizer_config, train_config

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench import BENCH_SMALL

    scratch = dict(scratch or BENCH_SMALL)
    vocab = scratch.pop("vocab_size")
    b, p, n, g = shape
    alphabet = char_alphabet(vocab - len(CHAR_SPECIAL_TOKENS))
    tokenizer = build_char_tokenizer(alphabet=alphabet)
    assert len(tokenizer) == vocab
    rng = np.random.default_rng(0)
    data = os.path.join(tempfile.mkdtemp(), "prompts.jsonl")
    with open(data, "w") as f:  # BOS + p - 1 characters = p prompt tokens
        for _ in range(max(64, b)):
            f.write(json.dumps({"prompt": "".join(rng.choice(list(alphabet[:8184]), p - 1))}) + "\n")

    c = ConfigDict()
    c.algorithm = algorithm
    c.seed = 0
    c.tokenizer = ConfigDict(dict(path="", builtin="char"))
    c.model = model_config(scratch=ConfigDict(scratch))
    c.model.update(model)
    c.data = ConfigDict(dict(train=data, eval="", prompt_key="prompt", chat=False, seq_len=p + n))
    c.rollout = ConfigDict(dict(max_prompt_len=p, max_new_tokens=n, temperature=1.0))
    c.rewards = [dict(kind="format", pattern=r"[\u4e00-\u4fff]", mode="search", require_eos=False)]
    if algorithm == "grpo":
        c.grpo = ConfigDict(dict(num_generations=g, mini_batch_size=0, num_iterations=1, beta=0.04))
    else:
        c.ppo = ConfigDict(dict(samples_per_prompt=1, mini_batch_size=0, epochs=1))
    c.train = train_config(steps=100, batch_size=b)
    c.optimizer = optimizer_config(lr=1e-5)
    c.mesh = mesh_config()
    return resolve_config(c), tokenizer


def _setup(algorithm: str, mesh, rules, c, tokenizer):
    """The algorithm's parts, its jitted train step, a fresh state and the frozen inputs, as the loop builds them
    (``c``, ``tokenizer``: from ``rl_config``)."""
    from jaxpt.algorithms import get_algorithm
    from jaxpt.models.factory import model_config_from
    from jaxpt.training.optimizer import make_optimizer
    from jaxpt.training.state import create_state, state_shardings
    from jaxpt.training.step import jit_train_step, make_train_step

    model_config = model_config_from(c.model, tokenizer)
    parts = get_algorithm(algorithm)(c, model_config, tokenizer, mesh)
    tx, schedule = make_optimizer(c.optimizer, 100 * parts.updates_per_step)
    shardings = state_shardings(parts.abstract_params, tx, mesh, rules)
    step = jit_train_step(make_train_step(parts.loss_fn, tx, schedule), shardings, mesh)
    state = create_state(parts.init_params(shardings.params), tx, shardings, c.seed)
    frozen = parts.frozen(state.params)
    return parts, step, state, frozen


def _case(algorithm: str, args, config=None, tokenizer=None) -> list[dict]:
    import flax.linen as nn

    from jaxpt.sharding import DEFAULT_RULES, make_mesh, shard_batch

    mesh = make_mesh(-1, 1, 1)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        return _iterations(algorithm, args, mesh, DEFAULT_RULES, shard_batch, config, tokenizer)


def _iterations(algorithm, args, mesh, rules, shard_batch, config=None, tokenizer=None) -> list[dict]:
    config, tokenizer = (config, tokenizer) if config is not None else rl_config(algorithm)
    parts, step, state, frozen = _setup(algorithm, mesh, rules, config, tokenizer)
    rollout_s, update_s, generate_s, rows = [], [], [], 0
    for i in range(1 + args.repeats):  # iteration 0 compiles
        t0 = time.perf_counter()
        batches, metrics = parts.rollout(state.params, frozen, i)
        t1 = time.perf_counter()
        for batch in batches:
            state, m = step(state, shard_batch(batch, mesh), frozen)
        jax.block_until_ready((state, m))
        t2 = time.perf_counter()
        if i == 0:
            compile_s = t2 - t0
            continue
        rollout_s.append(t1 - t0)
        update_s.append((t2 - t1) / len(batches))
        generate_s.append(metrics["time/generate_s"])
        rows = sum(len(b["advantages"]) for b in batches)
    iteration = [r + u * len(batches) for r, u in zip(rollout_s, update_s, strict=True)]
    med = statistics.median
    return [
        dict(
            case=algorithm,
            impl="jaxpt",
            samples_per_s=rows / med(iteration),
            rollout_s=med(rollout_s),
            update_s=med(update_s),
            generate_s=med(generate_s),
            generation_share=med(generate_s) / med(iteration),
            rows=rows,
            prompt_tokens=int(config.rollout.max_prompt_len),
            new_tokens=int(config.rollout.max_new_tokens),
            updates_per_rollout=len(batches),
            median_s=med(iteration),
            min_s=min(iteration),
            max_s=max(iteration),
            compile_s=compile_s,
            repeats=args.repeats,
        )
    ]


def case_ppo(args) -> list[dict]:
    """PPO iteration: 8 prompts x 1 completion, policy + value model, one update per rollout."""
    return _case("ppo", args)


def case_grpo(args) -> list[dict]:
    """GRPO iteration: 8 prompts x G=8 completions, one update per rollout."""
    return _case("grpo", args)


CASES = {"ppo": case_ppo, "grpo": case_grpo}
