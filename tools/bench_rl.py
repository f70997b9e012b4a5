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


def _setup(algorithm: str, mesh, rules):
    from ml_collections import ConfigDict

    from jaxpt.algorithms import get_algorithm, resolve_config
    from jaxpt.data.tokenizer import CHAR_SPECIAL_TOKENS, build_char_tokenizer
    from jaxpt.models.factory import model_config_from
    from jaxpt.sharding import batch_sharding, replicated
    from jaxpt.training.defaults import mesh_config, model_config, optimizer_config, train_config
    from jaxpt.training.optimizer import make_optimizer
    from jaxpt.training.state import create_state, state_shardings
    from jaxpt.training.step import make_train_step

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench import BENCH_SMALL

    vocab = BENCH_SMALL["vocab_size"]
    alphabet = "".join(chr(0x4E00 + i) for i in range(vocab - len(CHAR_SPECIAL_TOKENS)))
    tokenizer = build_char_tokenizer(alphabet=alphabet)
    assert len(tokenizer) == vocab
    rng = np.random.default_rng(0)
    data = os.path.join(tempfile.mkdtemp(), "prompts.jsonl")
    with open(data, "w") as f:  # BOS + 127 characters = 128 prompt tokens
        for _ in range(64):
            f.write(json.dumps({"prompt": "".join(rng.choice(list(alphabet), P - 1))}) + "\n")

    c = ConfigDict()
    c.algorithm = algorithm
    c.seed = 0
    c.tokenizer = ConfigDict(dict(path="", builtin="char"))
    scratch = {k: v for k, v in BENCH_SMALL.items() if k != "vocab_size"}
    c.model = model_config(scratch=ConfigDict(scratch))
    c.data = ConfigDict(dict(train=data, eval="", prompt_key="prompt", chat=False, seq_len=P + N))
    c.rollout = ConfigDict(dict(max_prompt_len=P, max_new_tokens=N, temperature=1.0))
    c.rewards = [dict(kind="format", pattern=r"[\u4e00-\u4fff]", mode="search", require_eos=False)]
    if algorithm == "grpo":
        c.grpo = ConfigDict(dict(num_generations=G, mini_batch_size=0, num_iterations=1, beta=0.04))
    else:
        c.ppo = ConfigDict(dict(samples_per_prompt=1, mini_batch_size=0, epochs=1))
    c.train = train_config(steps=100, batch_size=B)
    c.optimizer = optimizer_config(lr=1e-5)
    c.mesh = mesh_config()

    c = resolve_config(c)
    model_config = model_config_from(c.model, tokenizer)
    parts = get_algorithm(algorithm)(c, model_config, tokenizer, mesh)
    tx, schedule = make_optimizer(c.optimizer, 100 * parts.updates_per_step)
    shardings = state_shardings(parts.abstract_params, tx, mesh, rules)
    step = jax.jit(
        make_train_step(parts.loss_fn, tx, schedule),
        in_shardings=(shardings, batch_sharding(mesh), None),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=(0,),
    )
    state = create_state(parts.init_params(shardings.params), tx, shardings, c.seed)
    frozen = parts.frozen(state.params)
    return parts, step, state, frozen


def _case(algorithm: str, args) -> list[dict]:
    import flax.linen as nn

    from jaxpt.sharding import DEFAULT_RULES, make_mesh, shard_batch

    mesh = make_mesh(-1, 1, 1)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        return _iterations(algorithm, args, mesh, DEFAULT_RULES, shard_batch)


def _iterations(algorithm, args, mesh, rules, shard_batch) -> list[dict]:
    parts, step, state, frozen = _setup(algorithm, mesh, rules)
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
            prompt_tokens=P,
            new_tokens=N,
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
