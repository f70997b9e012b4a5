"""Step-throughput benchmarks: median of several steps after compile, ours vs. references in one run.

    python tools/bench.py                 # every case
    python tools/bench.py generate sft    # some cases
    python tools/bench.py sft --no-reference --repeats 10

Each case prints one JSON line; a readable table follows. References (transformers' ``generate``, TRL-style
torch training steps) run in the same process on the same CPU, so ratios are comparable on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxpt.models.config import ModelConfig  # noqa: E402

BENCH_SMALL = dict(
    model_type="llama",
    vocab_size=8192,
    hidden_size=256,
    intermediate_size=640,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
    rms_norm_eps=1e-6,
)


def bench_small_config(**overrides) -> ModelConfig:
    return ModelConfig.from_hf(dict(BENCH_SMALL), **overrides)


def timeit(fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Runs ``fn`` (which must block until done) ``warmup`` times untimed, then ``repeats`` times."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return dict(
        compile_s=first,
        median_s=statistics.median(times),
        min_s=min(times),
        max_s=max(times),
        repeats=repeats,
    )


def _torch_model(config: ModelConfig, params):
    """The same weights in transformers' PyTorch LlamaForCausalLM (via our own HF export)."""
    import tempfile

    import transformers

    from jaxpt.models.hf import save_hf

    d = tempfile.mkdtemp()
    save_hf(config, params, d, overwrite=True)
    return transformers.AutoModelForCausalLM.from_pretrained(d).eval()


# ------------------------------------------------------------------------------------------------ cases
def case_generate(args) -> list[dict]:
    from jaxpt.generation.sampler import SamplingConfig, generate
    from jaxpt.models.decoder import init_params

    config = bench_small_config()
    params = init_params(config, jax.random.key(0))
    b, p, n = 8, 128, 128
    rng = np.random.default_rng(0)
    prompt = jnp.asarray(rng.integers(3, config.vocab_size, (b, p)), jnp.int32)
    mask = jnp.ones((b, p), jnp.int32)
    sampling = SamplingConfig(max_new_tokens=n, temperature=1.0, top_k=0, top_p=1.0, eos_token_ids=())
    key = jax.random.key(0)
    fn = lambda: jax.block_until_ready(generate(config, params, prompt, mask, key, sampling))
    stats = timeit(fn, args.repeats)
    rows = [dict(case="generate", impl="jaxpt", new_tokens_per_s=b * n / stats["median_s"], **stats)]
    if args.reference:
        import torch

        torch.manual_seed(0)
        model = _torch_model(config, params)
        ids = torch.tensor(np.asarray(prompt))

        def ref():
            with torch.no_grad():
                model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=True,
                    top_k=0,
                    pad_token_id=0,
                )

        stats = timeit(ref, max(2, args.repeats // 3))
        rows.append(
            dict(case="generate", impl="transformers", new_tokens_per_s=b * n / stats["median_s"], **stats)
        )
    return rows


CASES: dict[str, Callable] = {"generate": case_generate}


def _register_plugin_cases() -> None:
    """Cases living beside this file (``tools/bench_*.py`` with a ``CASES`` dict) join the registry."""
    import importlib.util
    import pathlib

    for path in sorted(pathlib.Path(__file__).parent.glob("bench_*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        CASES.update(getattr(module, "CASES", {}))


_register_plugin_cases()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "cases", nargs="*", default=[], help=f"cases to run (default: all): {', '.join(CASES)}"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-reference", dest="reference", action="store_false")
    parser.add_argument("--json", help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; known: {', '.join(CASES)}")
    rows = []
    for name in args.cases or list(CASES):
        for row in CASES[name](args):
            row["backend"] = jax.default_backend()
            print(json.dumps(row), flush=True)
            rows.append(row)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    print("\n| case | impl | throughput | step median (s) | min | max | compile (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        key = next(k for k in r if k.endswith("_per_s"))
        print(
            f"| {r['case']} | {r['impl']} | {r[key]:.1f} {key.removesuffix('_per_s').replace('_', ' ')}/s "
            f"| {r['median_s']:.4f} | {r['min_s']:.4f} | {r['max_s']:.4f} | {r['compile_s']:.2f} |"
        )


if __name__ == "__main__":
    main()
