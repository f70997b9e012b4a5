"""Step-throughput benchmarks: median of several steps after compile, ours vs. references in one run.

    python tools/bench.py                 # every case
    python tools/bench.py generate sft    # some cases
    python tools/bench.py sft --no-reference --repeats 10
    python tools/bench.py generate --no-reference --profile   # + the slowest ops of one traced run

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
    from jaxpt.utils.flops import decode_bytes_per_step, measure_read_bandwidth

    config = bench_small_config()
    params = init_params(config, jax.random.key(0))
    b, p, n = 8, 128, 128
    rng = np.random.default_rng(0)
    prompt = jnp.asarray(rng.integers(3, config.vocab_size, (b, p)), jnp.int32)
    mask = jnp.ones((b, p), jnp.int32)
    key = jax.random.key(0)

    def sampling(new_tokens: int) -> SamplingConfig:
        return SamplingConfig(max_new_tokens=new_tokens, temperature=1.0, top_k=0, top_p=1.0, eos_token_ids=())

    def run(new_tokens: int) -> Callable[[], object]:
        return lambda: jax.block_until_ready(generate(config, params, prompt, mask, key, sampling(new_tokens)))

    stats = timeit(run(n), args.repeats)
    # one new token = the prefill and one sampled token; each further token is one decode step
    prefill = timeit(run(1), args.repeats)["median_s"]
    step_s = (stats["median_s"] - prefill) / (n - 1)
    step_bytes = decode_bytes_per_step(config, b, p + n - 1)  # the sampler's cache: the last token is not fed
    read_bw = measure_read_bandwidth()
    decode = dict(
        prefill_s=prefill,
        decode_step_ms=step_s * 1e3,
        decode_bytes_mib=step_bytes / 2**20,
        decode_gb_per_s=step_bytes / step_s / 1e9,
        read_gb_per_s=read_bw / 1e9,
        mbu=step_bytes / step_s / read_bw,
    )
    rows = [dict(case="generate", impl="jaxpt", new_tokens_per_s=b * n / stats["median_s"], **stats, **decode)]
    if args.profile:
        from jaxpt.utils.profile import profile_ops

        compiled = generate.lower(config, params, prompt, mask, key, sampling(n)).compile()
        print_profile(profile_ops(compiled, params, prompt, mask, key), top=args.profile)
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

        # Each transformers call is followed by one of ours, so both sides see the same load call by call.
        start = time.perf_counter()
        ref()
        compile_s = time.perf_counter() - start
        ref_times, ours = [], []
        for _ in range(args.repeats):
            ref_times.append(timed(ref)())
            ours.append(timed(run(n))())
        med = statistics.median(ref_times)
        ref_row = dict(
            case="generate",
            impl="transformers",
            new_tokens_per_s=b * n / med,
            compile_s=compile_s,
            median_s=med,
            min_s=min(ref_times),
            max_s=max(ref_times),
            repeats=len(ref_times),
        )
        impl = "jaxpt, interleaved with transformers' calls"
        rows += [ref_row, interleaved_row(impl, ref_row, ours, b * n, "transformers")]
    return rows


def _peak_memory_mb() -> float:
    """Device peak bytes where the backend reports them (GPU/TPU), else the process's peak RSS."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sft_batch(vocab: int, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, (batch, seq + 1)).astype(np.int32)
    return dict(
        inputs=tokens[:, :-1],
        targets=tokens[:, 1:],
        loss_mask=np.ones((batch, seq), np.float32),
        positions=np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy(),
        segment_ids=np.ones((batch, seq), np.int32),
    )


def case_sft(args) -> list[dict]:
    """SFT step on bench-small: seq 256, batch 8, f32, AdamW (ours) vs TRL's SFTTrainer on the same model."""
    from jaxpt.algorithms.sft import loss_chunk_size, make_loss_fn
    from jaxpt.config import load_config
    from jaxpt.models.decoder import init_params
    from jaxpt.training.optimizer import make_optimizer
    from jaxpt.training.state import TrainState
    from jaxpt.training.step import make_train_step
    from jaxpt.utils.flops import measure_matmul_peak, train_flops_per_token

    b, t = 8, 256
    config = bench_small_config()
    params = init_params(config, jax.random.key(0))
    opt_cfg = load_config("configs/sft/quickstart.py").optimizer
    tx, schedule = make_optimizer(opt_cfg, 1000)
    batch = {k: jnp.asarray(v) for k, v in sft_batch(config.vocab_size, b, t).items()}
    peak = measure_matmul_peak()
    chunk = loss_chunk_size(args.chunk, config.vocab_size, b * t)  # 0: the training default
    variants = [(f"jaxpt (fused loss, blocks of {chunk})" if chunk < b * t else "jaxpt", chunk)]
    if chunk < b * t:
        variants.append(("jaxpt (plain logits)", b * t))  # the unfused loss, side by side
    rows, runs = [], []
    for label, chunk in variants:
        own = jax.tree.map(jnp.copy, params)  # the step donates its state; keep `params` for the reference
        holder = [TrainState(jnp.zeros((), jnp.int32), own, tx.init(own), jax.random.key_data(jax.random.key(0)))]
        step = jax.jit(make_train_step(make_loss_fn(config, chunk), tx, schedule), donate_argnums=0)

        def run(step=step, holder=holder):
            holder[0], m = step(holder[0], batch, None)
            jax.block_until_ready(m)

        stats = timeit(run, args.repeats)
        runs.append(run)
        tokens_per_s = b * t / stats["median_s"]
        mfu = tokens_per_s * train_flops_per_token(config, t) / peak
        rows.append(
            dict(
                case="sft",
                impl=label,
                tokens_per_s=tokens_per_s,
                mfu=mfu,
                peak_flops=peak,
                peak_memory_mb=_peak_memory_mb(),
                **stats,
            )
        )
    if args.reference:
        trl_row, ours = _trl_sft(config, params, b, t, max(3, args.repeats), between=timed(runs[0]))
        rows += [trl_row, interleaved_row(f"{rows[0]['impl']}, interleaved with the TRL steps", trl_row, ours, b * t)]
    return rows


def timed(run: Callable[[], object]) -> Callable[[], float]:
    """``run`` as a callable that returns its own duration: our step, for ``time_trainer``'s ``between``."""

    def call() -> float:
        start = time.perf_counter()
        run()
        return time.perf_counter() - start

    return call


def interleaved_row(impl: str, ref_row: dict, ours: list[float], items_per_step: int, reference: str = "TRL") -> dict:
    """The row of our steps timed between the reference's (same throughput key as ``ref_row``), with
    ``ratio_to_reference``: the reference's median step time over ours."""
    med = statistics.median(ours)
    key = next(k for k in ref_row if k.endswith("_per_s"))
    return {
        "case": ref_row["case"],
        "impl": impl,
        key: items_per_step / med,
        "median_s": med,
        "min_s": min(ours),
        "max_s": max(ours),
        "repeats": len(ours),
        "reference": reference,
        "ratio_to_reference": ref_row["median_s"] / med,
    }


def trl_timing_args(repeats: int, **overrides) -> dict:
    """Training arguments every TRL reference here shares: float32 on the CPU, AdamW at a constant rate, no
    logging, saving or loader workers, ``repeats + 2`` steps (warm-up, then the timed ones)."""
    import tempfile

    common = dict(
        output_dir=tempfile.mkdtemp(),
        max_steps=repeats + 2,
        lr_scheduler_type="constant",
        logging_steps=1000,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        optim="adamw_torch",
        bf16=False,
        fp16=False,
    )
    return common | overrides


def time_trainer(trainer, between: Callable[[], float] | None = None) -> tuple[dict, list[float]]:
    """Trains a TRL trainer, timing each step from a callback; the first two steps are warm-up.

    ``between`` (optional) runs after each TRL step is timed, inside the same callback, and returns its own
    duration: our step interleaved with theirs, so both see the same machine load. Returns the timing row
    (``impl``, ``compile_s``, ``median_s``, ...) and the ``between`` durations after the same warm-up.
    """
    import transformers
    import trl

    times: list[float] = []
    ours: list[float] = []

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)
            if between is not None:
                ours.append(between())

    trainer.add_callback(Timer())
    trainer.train()
    steady = times[2:]
    row = dict(
        impl=f"trl-{trl.__version__} {type(trainer).__name__}",
        compile_s=times[0],
        median_s=statistics.median(steady),
        min_s=min(steady),
        max_s=max(steady),
        repeats=len(steady),
    )
    return row, ours[2:]


def _trl_sft(config, params, b: int, t: int, repeats: int, between: Callable[[], float] | None = None):
    """TRL's SFTTrainer on the same weights and data shape, timed by :func:`time_trainer` (with ``between``)."""

    import datasets
    import trl

    from jaxpt.data.tokenizer import build_char_tokenizer

    model = _torch_model(config, params).train()
    data = sft_batch(config.vocab_size, b * (repeats + 2), t, seed=1)
    ds = datasets.Dataset.from_dict({"input_ids": [list(map(int, r)) for r in data["inputs"]]})
    args = trl_timing_args(repeats, per_device_train_batch_size=b, max_length=t, learning_rate=3e-4, packing=False)
    cfg = trl.SFTConfig(**args)
    trainer = trl.SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=build_char_tokenizer())
    row, ours = time_trainer(trainer, between)
    row = dict(case="sft", tokens_per_s=b * t / row["median_s"], **row)
    return row, ours


CASES: dict[str, Callable] = {"generate": case_generate, "sft": case_sft}


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
    if argv is None:  # as the CLI does: host memory on transparent huge pages (jaxpt/utils/hugepages.py)
        from jaxpt.utils.hugepages import reexec_with_hugepages

        reexec_with_hugepages()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", default=[], help=f"cases to run (default: all): {', '.join(CASES)}")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-reference", dest="reference", action="store_false")
    parser.add_argument("--json", help="also append the JSON lines to this file")
    parser.add_argument(
        "--chunk", type=int, default=0, help="SFT loss block size in tokens (0 = the training default; 2048 = plain)"
    )
    parser.add_argument(
        "--profile",
        type=int,
        nargs="?",
        const=25,
        default=0,
        metavar="TOP",
        help="generate: also trace 3 runs with jax.profiler and print the TOP slowest ops per run (default 25)",
    )
    args = parser.parse_args(argv)
    if args.profile and "generate" not in (args.cases or CASES):
        parser.error("--profile traces the generate case only; add 'generate' to the cases")
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; known: {', '.join(CASES)}")
    rows = []
    for name in args.cases or list(CASES):
        for row in CASES[name](args):
            row["backend"] = jax.default_backend()
            row["host_hugepages"] = "glibc.malloc.hugetlb=1" in os.environ.get("GLIBC_TUNABLES", "")
            print(json.dumps(row), flush=True)
            rows.append(row)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print_table(rows)


def print_profile(ops, top: int) -> None:
    """The ``top`` slowest source ops of one run (``jaxpt.utils.profile``), and the decode loop's share."""
    run = sum(o.seconds for o in ops)
    loop = sum(o.seconds for o in ops if "while/body" in o.op)
    print(f"\nProfile per run (mean of 3 traced runs): {run * 1e3:.1f} ms of ops, the decode loop {loop * 1e3:.1f} ms")
    print("\n| op (layers folded) | calls per run | µs per call | ms per run | share |")
    print("|---|---|---|---|---|")
    for o in ops[:top]:
        per_call = o.seconds / max(o.calls, 1) * 1e6
        print(f"| `{o.op}` | {o.calls} | {per_call:.1f} | {o.seconds * 1e3:.2f} | {o.seconds / run:.1%} |")
    print()


def print_table(rows: list[dict]) -> None:
    print("\n| case | impl | throughput | step median (s) | min | max | compile (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        key = next(k for k in r if k.endswith("_per_s"))
        print(
            f"| {r['case']} | {r['impl']} | {r[key]:.1f} {key.removesuffix('_per_s').replace('_', ' ')}/s "
            f"| {r['median_s']:.4f} | {r['min_s']:.4f} | {r['max_s']:.4f} | "
            + (f"{r['compile_s']:.2f} |" if "compile_s" in r else "– |")
        )
        if "mbu" in r:
            print(
                f"|  | (prefill {r['prefill_s']:.3f} s; decode step {r['decode_step_ms']:.2f} ms reading "
                f"{r['decode_bytes_mib']:.1f} MiB of weights + KV cache: {r['decode_gb_per_s']:.1f} GB/s, "
                f"MBU {r['mbu']:.0%} of {r['read_gb_per_s']:.1f} GB/s measured) |  |  |  |  |  |"
            )
        if "ratio_to_reference" in r:
            print(f"|  | (ratio to {r['reference']}, same load) | **{r['ratio_to_reference']:.2f}×** |  |  |  |  |")


if __name__ == "__main__":
    main()
