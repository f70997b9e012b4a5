"""Accelerator benchmark: SFT, DPO and GRPO steps of a Llama-3.2-1B-sized model on one GPU or TPU host, built
the way ``jaxpt train`` builds them, in one command that writes one JSON file.

    python tools/bench_accel.py --json accel.json                 # Llama-3.2-1B sizes (the default off CPU)
    python tools/bench_accel.py --size tiny --json accel.json     # 2 layers, short rows, XLA optimisations off:
                                                                  # checks the command on CPU (the CPU default)
    python tools/bench.py accel_sft accel_dpo accel_grpo --repeats 3   # the same cases inside tools/bench.py
    tools/device_bench.sh                                         # on a lent GPU machine: writes $OUT/accel.json

Model: Llama-3.2-1B's published sizes (``LLAMA_3_2_1B``: vocab 128256, hidden 2048, MLP 8192, 16 layers, 32
heads of 64, 8 KV heads, tied embeddings, RoPE theta 500000) with *random* weights, bfloat16 compute over
float32 params and AdamW (``model.dtype=bfloat16``, ``param_dtype=float32``), ``remat=full``,
``scan_layers=true``, ``attention=auto`` (splash on TPU, XLA elsewhere). The data are random too: token ids
uniform in ``[3, vocab)`` in the layouts the data iterators make, so every slot is a real token. Timings do
not depend on the values; losses do, and are only reported as a sanity check.

Each step is the algorithm's own: ``jaxpt.algorithms.<name>.step_spec`` gives the loss, parameter and batch
shapes and the model FLOPs; ``make_train_step`` / ``jit_train_step`` / ``create_state`` build and place it as
the training loop does (one mesh over all devices, data-parallel). Cases:

- ``sft``: 8 rows x 4096 tokens; tokens/s and MFU;
- ``dpo``: 4 pairs of prompt 2048 + 2 x 2048 completion tokens (``data.seq_len=4096``; the shared-prompt layout:
  each prompt runs once), with the frozen reference's forward in the step; pairs/s, tokens/s and MFU (the
  reference forward counted in, as ``jaxpt train`` counts it);
- ``grpo``: one rollout of 8 prompts x G=8 completions, 512 prompt + 512 new tokens (the real rollout of
  ``tools/bench_rl.py``: sampler prefill + decode, decoding, a reward, the reference scoring pass, advantages)
  and its one update; seconds per rollout and per update, samples/s, and the update's MFU.

If XLA's memory estimate of the SFT or DPO step exceeds the free device memory (or the step fails for lack of
it), the rows are halved and the step rebuilt; the JSON records the rows used. MFU is model FLOPs (MaxText's
count, ``jaxpt.utils.flops``) per second over the chip's published dense bf16 peak (``chip_peak``) times the
chip count; null on a chip not in the table, CPUs included. Times are medians of ``--steps`` steps after one
warm-up step (compile times apart); memory is XLA's estimate of the step and the device's peak so far (host
RSS on CPU). The JSON is rewritten after every case, so a run cut short keeps the cases it finished.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import sys
import time
import traceback
from typing import Any, NamedTuple

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# huggingface.co/meta-llama/Llama-3.2-1B, config.json, less its llama3 ``rope_scaling`` (factor 32): it changes the
# rotary frequencies only, not a shape or a FLOP, and a from-scratch ``config.model.scratch`` cannot hold a nested
# dict yet (``model_config_from`` copies it shallowly, and a nested ConfigDict is not JSON).
LLAMA_3_2_1B = dict(
    model_type="llama",
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    tie_word_embeddings=True,
    rope_theta=500000.0,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
)
TINY = dict(
    model_type="llama",
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    tie_word_embeddings=True,
    rope_theta=500000.0,
    max_position_embeddings=1024,
    rms_norm_eps=1e-5,
)
# How jaxpt would train a 1B model on one accelerator: bf16 compute, f32 master params, full remat, scanned layers.
MODEL_OPTIONS = dict(dtype="bfloat16", param_dtype="float32", remat="full", scan_layers=True, attention="auto")


class Size(NamedTuple):  # (a NamedTuple: tools/bench.py loads this file without registering it in sys.modules)
    model: dict
    sft: tuple[int, int]  # rows, tokens per row
    dpo: tuple[int, int]  # pairs, data.seq_len (prompt and each completion: seq_len / 2)
    grpo: tuple[int, int, int, int]  # prompts, prompt tokens, new tokens, G


# 1b: XLA's CPU estimates of the steps (arguments + temporaries): SFT 58 GiB (14 of them params + AdamW), DPO 89 GiB
# at 8 pairs (the XLA attention path holds float32 scores) and 59 GiB at 4, which leave room on an 80 GB H100.
# Tiny: rows that split over the test suite's 8 CPU devices, and shared-prompt GRPO rows as on one chip.
SIZES = {
    "1b": Size(LLAMA_3_2_1B, sft=(8, 4096), dpo=(4, 4096), grpo=(8, 512, 512, 8)),
    "tiny": Size(TINY, sft=(8, 64), dpo=(8, 64), grpo=(8, 16, 16, 2)),
}

# Published dense bf16 peaks per chip (FLOP/s; NVIDIA's headline bf16 figures are "with sparsity", twice these), by
# a substring of JAX's device_kind, first match wins:
#   H100 SXM ("NVIDIA H100 80GB HBM3"): 989 TFLOP/s (1,979 with sparsity), nvidia.com/en-us/data-center/h100;
#   H200 and GH200: 989, nvidia.com/en-us/data-center/h200; A100 (SXM and PCIe): 312, nvidia.com/en-us/data-center/a100.
# The H100 / H200 PCIe and NVL boards have other peaks and are not listed: their MFU is null, not a guess.
GPU_PEAKS: tuple[tuple[str, float | None], ...] = (
    ("H100 PCIe", None),
    ("H100 NVL", None),
    ("H200 NVL", None),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
)


def chip_peak(device_kind: str) -> float | None:
    """The chip's published dense bf16 FLOP/s: ``GPU_PEAKS``, TPUs from ``jaxpt.training.plan.TPU_PEAKS``."""
    from jaxpt.training.plan import TPU_PEAKS

    if device_kind in TPU_PEAKS:
        return TPU_PEAKS[device_kind][0]
    return next((peak for name, peak in GPU_PEAKS if name in device_kind), None)


def default_size() -> str:
    return "tiny" if jax.default_backend() == "cpu" else "1b"


def _bench():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench

    return bench


class TooBig(RuntimeError):
    """The step needs more device memory than is free (XLA's estimate, or an allocation that failed)."""


# ------------------------------------------------------------------------------------------- SFT and DPO
def _config(algorithm: str, model: dict, rows: int, seq_len: int) -> Any:
    """``algorithm``'s defaults with the benchmark's model, ``rows`` per step (rows or pairs) and ``seq_len``."""
    from ml_collections import ConfigDict

    from jaxpt.algorithms import resolve_config

    c = ConfigDict({"algorithm": algorithm})
    c.model = ConfigDict(dict(path="", scratch=ConfigDict(model), **MODEL_OPTIONS))
    c.data = ConfigDict(dict(seq_len=seq_len))
    if algorithm == "dpo":  # prompt and completions of half the row each (else the completions get one more)
        c.data.max_prompt_length = c.data.max_completion_length = seq_len // 2
    c.train = ConfigDict(dict(batch_size=rows, steps=100))
    return resolve_config(c)


def _random_batch(algorithm: str, spec: Any, rows: int, vocab: int, seq_len: int) -> dict[str, np.ndarray]:
    """Uniform random tokens in the layout of ``spec.batch`` (SFT: full rows; DPO: shared-prompt pairs)."""
    from jaxpt.data.preference import build_shared_prompt_batch

    if algorithm == "sft":
        return _bench().sft_batch(vocab, rows, seq_len)
    p, c = spec.batch["prompt_tokens"].shape[1], spec.batch["completion_tokens"].shape[1]
    rng = np.random.default_rng(0)
    ids = lambda n: rng.integers(3, vocab, n).astype(np.int32)  # noqa: E731
    pairs = [{"prompt_ids": ids(p), "chosen_ids": ids(c), "rejected_ids": ids(c)} for _ in range(rows)]
    return build_shared_prompt_batch(pairs, seq_len, (p, c))


def _check_fits(compiled: Any) -> float:
    """XLA's bytes for one step (arguments, new outputs, temporaries); ``TooBig`` when what it needs beyond its
    already resident arguments exceeds the device's free memory (only where the backend reports it)."""
    m = compiled.memory_analysis()
    if m is None:
        return float("nan")
    need = m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats and need > 0.95 * (stats["bytes_limit"] - stats["bytes_in_use"]):
        free = stats["bytes_limit"] - stats["bytes_in_use"]
        raise TooBig(f"XLA estimates {need / 2**30:.1f} GiB beyond the arguments; {free / 2**30:.1f} GiB free")
    return float(m.argument_size_in_bytes + need)


def _offline_step(algorithm: str, size: Size, rows: int, repeats: int) -> dict:
    """One SFT or DPO step at ``rows`` rows / pairs, built and placed as ``jaxpt train`` does, timed."""
    import flax.linen as nn

    from jaxpt.algorithms import step_spec
    from jaxpt.algorithms.common.policy import InitialPolicy
    from jaxpt.data.sft import batch_tokens
    from jaxpt.models.factory import model_config_from
    from jaxpt.sharding import make_mesh, normalize_rules, shard_batch, unbox
    from jaxpt.training.optimizer import make_optimizer
    from jaxpt.training.state import create_state, state_shardings
    from jaxpt.training.step import jit_train_step, make_train_step
    from jaxpt.training.trainable import mask_from_config

    seq_len = getattr(size, algorithm)[1]
    config = _config(algorithm, size.model, rows, seq_len)
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    rules = normalize_rules(config.mesh.rules)
    model_config = model_config_from(config.model)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        spec = step_spec(config, model_config, mesh)
        trainable = mask_from_config(config.train, unbox(spec.abstract_params), spec.trainable)
        tx, schedule = make_optimizer(config.optimizer, config.train.steps, trainable)
        shardings = state_shardings(spec.abstract_params, tx, mesh, rules)
        step = jit_train_step(make_train_step(spec.loss_fn, tx, schedule, 1, trainable), shardings, mesh)
        initial = InitialPolicy(config, model_config)
        state = create_state(initial.init(shardings.params), tx, shardings, config.seed)
        frozen = initial.reference(state.params) if spec.frozen is not None else None  # DPO's reference
        host = _random_batch(algorithm, spec, rows, model_config.vocab_size, seq_len)
        got = {k: (v.shape, np.dtype(v.dtype)) for k, v in host.items()}
        assert got == {k: (v.shape, np.dtype(v.dtype)) for k, v in spec.batch.items()}, (got, spec.batch)
        batch = shard_batch(host, mesh)
        t0 = time.perf_counter()
        compiled = step.lower(state, batch, frozen).compile()
        compile_s = time.perf_counter() - t0
        step_bytes = _check_fits(compiled)
        holder: list[Any] = [state, None]
        del state

        def run():
            holder[0], holder[1] = compiled(holder[0], batch, frozen)
            jax.block_until_ready(holder[1])

        bench = _bench()
        stats = bench.timeit(run, repeats)
        stats["first_step_s"] = stats.pop("compile_s")  # compiled above: the warm-up step's own time
    tokens = batch_tokens(host, padded=True)
    peak = chip_peak(mesh.devices.flat[0].device_kind)
    flops_per_s = spec.flops / stats["median_s"]
    row = dict(case=f"accel_{algorithm}", impl="jaxpt")
    if algorithm == "dpo":
        row["pairs_per_s"] = rows / stats["median_s"]
    return row | dict(
        tokens_per_s=tokens / stats["median_s"],
        mfu=None if peak is None else flops_per_s / (peak * mesh.devices.size),
        model_tflops_per_s=flops_per_s / 1e12,
        layout=spec.layout,
        rows=rows,
        tokens_per_step=tokens,
        model_flops_per_step=spec.flops,
        step_memory_gib=step_bytes / 2**30,
        peak_memory_gib=bench._peak_memory_mb() / 1024,
        loss=float(holder[1]["loss"]),
        **stats,
        compile_s=compile_s,
    )


def _out_of_memory(e: Exception) -> bool:
    return isinstance(e, TooBig) or (isinstance(e, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(e))


def _offline_case(algorithm: str, size: Size, repeats: int) -> dict:
    """``_offline_step`` at the size's rows, halved while the step does not fit."""
    rows, tried = getattr(size, algorithm)[0], []
    while True:
        try:
            row = _offline_step(algorithm, size, rows, repeats)
            return row | ({"did_not_fit": tried} if tried else {})
        except Exception as e:
            if not _out_of_memory(e) or rows == 1:
                raise
            tried.append(f"{rows}: {str(e).splitlines()[0][:300]}")
        gc.collect()  # the failed attempt's state and batch, before the next one is placed
        rows //= 2


# ----------------------------------------------------------------------------------------------- GRPO
def _grpo_case(size: Size, repeats: int) -> dict:
    """``tools/bench_rl.py``'s GRPO iteration (one rollout + its update) at the size's shape, and the update's
    MFU from ``grpo.step_spec``."""
    import flax.linen as nn

    from jaxpt.algorithms import grpo
    from jaxpt.models.factory import model_config_from
    from jaxpt.sharding import make_mesh, normalize_rules

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_rl

    config, tokenizer = bench_rl.rl_config("grpo", size.model, size.grpo, **MODEL_OPTIONS)
    args = argparse.Namespace(repeats=repeats)
    (row,) = bench_rl._case("grpo", args, config, tokenizer)
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    with jax.set_mesh(mesh), nn.logical_axis_rules(normalize_rules(config.mesh.rules)):
        spec = grpo.step_spec(config, model_config_from(config.model, tokenizer), mesh)
    peak = chip_peak(mesh.devices.flat[0].device_kind)
    update_flops_per_s = spec.flops / row["update_s"]
    return row | dict(
        case="accel_grpo",
        update_mfu=None if peak is None else update_flops_per_s / (peak * mesh.devices.size),
        update_model_tflops_per_s=update_flops_per_s / 1e12,
        update_layout=spec.layout,
        sampled_tokens_per_s=row["rows"] * row["new_tokens"] / row["generate_s"],
        prompts=size.grpo[0],
        group=size.grpo[3],
        peak_memory_gib=_bench()._peak_memory_mb() / 1024,
    )


def case_sft(args) -> list[dict]:
    """SFT step: 8 rows x 4096 tokens at Llama-3.2-1B sizes (the tiny size on CPU)."""
    return [_offline_case("sft", SIZES[getattr(args, "size", None) or default_size()], args.repeats)]


def case_dpo(args) -> list[dict]:
    """DPO step: 4 pairs of prompt 2048 + 2 x 2048 completion tokens, reference forward in the step."""
    return [_offline_case("dpo", SIZES[getattr(args, "size", None) or default_size()], args.repeats)]


def case_grpo(args) -> list[dict]:
    """GRPO iteration: rollout of 8 prompts x G=8, 512 prompt + 512 new tokens, and its update."""
    return [_grpo_case(SIZES[getattr(args, "size", None) or default_size()], args.repeats)]


CASES = {"accel_sft": case_sft, "accel_dpo": case_dpo, "accel_grpo": case_grpo}


# ------------------------------------------------------------------------------------------- standalone
def environment(size: str) -> dict:
    """What the numbers ran on: device, versions, the model and its run options, the peak MFU is against."""
    from jaxpt.models.factory import model_config_from
    from jaxpt.training.defaults import model_config

    device = jax.devices()[0]
    cfg = model_config(scratch=SIZES[size].model)
    cfg.update(MODEL_OPTIONS)
    versions = {}
    for package in ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt", "libtpu", "flax", "optax"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return dict(
        platform=device.platform,
        device_kind=device.device_kind,
        num_devices=jax.device_count(),
        env={k: os.environ[k] for k in ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_FLAGS") if k in os.environ},
        peak_flops_per_chip=chip_peak(device.device_kind),
        versions=versions,
        size=size,
        model=dict(SIZES[size].model, num_params=model_config_from(cfg).num_params(), **MODEL_OPTIONS),
        shapes={k: v for k, v in SIZES[size]._asdict().items() if k != "model"},
    )


def run(
    size: str, steps: int, json_path: str | None, cases: list[str] | None = None, quick_compile: bool = False
) -> dict:
    """Runs ``cases`` (default all) at ``size`` and returns the report; written to ``json_path`` after each case.
    A failing case records its error and the others still run. ``quick_compile``: XLA's optimisations off
    (``jax_disable_most_optimizations``), about 3x less compile time on CPU, for checking the command, never
    for numbers; the report says so."""
    report: dict[str, Any] = dict(environment(size), steps=steps, started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    old = jax.config.values["jax_disable_most_optimizations"]
    report["xla_optimizations"] = not (quick_compile or old)
    print(json.dumps(report), flush=True)  # what it runs on, first: a run cut short still says
    report["cases"] = {}
    jax.config.update("jax_disable_most_optimizations", quick_compile or old)
    try:
        _run_cases(report, size, steps, json_path, cases)
    finally:
        jax.config.update("jax_disable_most_optimizations", old)
    return report


def _run_cases(report: dict, size: str, steps: int, json_path: str | None, cases: list[str] | None) -> None:
    args = argparse.Namespace(size=size, repeats=steps)
    start = time.perf_counter()
    for name in cases or list(CASES):
        t0 = time.perf_counter()
        try:
            (row,) = CASES[name](args)
        except Exception as e:  # keep the other cases' numbers
            traceback.print_exc()
            row = dict(case=name, error=f"{type(e).__name__}: {e}"[:4000], traceback=traceback.format_exc()[-4000:])
        row["case_wall_s"] = time.perf_counter() - t0
        report["cases"][name.removeprefix("accel_")] = row
        report["wall_s"] = time.perf_counter() - start
        print(json.dumps(row), flush=True)
        if json_path:
            tmp = json_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(report, f, indent=1, default=_json_default)
            os.replace(tmp, json_path)


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", default=[], help=f"cases (default: all): {', '.join(CASES)}")
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="default: tiny on CPU, else 1b")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (GRPO: iterations) after one warm-up")
    parser.add_argument("--json", help="write the report here (rewritten after every case)")
    parser.add_argument(
        "--quick-compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="XLA optimisations off: compiles ~3x faster, runs slower (default: on for --size tiny only)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; known: {', '.join(CASES)}")
    size = args.size or default_size()
    quick = size == "tiny" if args.quick_compile is None else args.quick_compile
    report = run(size, args.steps, args.json, args.cases, quick)
    rows = [r for r in report["cases"].values() if "error" not in r]
    _bench().print_table(rows)
    for r in rows:
        mfu = r.get("mfu", r.get("update_mfu"))
        print(f"{r['case']}: MFU {'n/a (no published peak for this chip)' if mfu is None else f'{mfu:.1%}'}")
    failed = [r["case"] for r in report["cases"].values() if "error" in r]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
