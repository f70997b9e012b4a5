"""``jaxpt`` command line: train, convert, generate (and the data-generation / eval pillars as they land).

jaxpt train --config=configs/sft/quickstart.py --workdir=runs/q --config.optimizer.lr=3e-4
jaxpt convert --hf-dir=DIR --orbax-dir=OUT            # HF -> Orbax params
jaxpt convert --orbax-dir=DIR --hf-dir=OUT            # Orbax params (or a run's checkpoint) -> HF
jaxpt generate --model=DIR --prompt="1+2=" --chat
jaxpt generate-data --config=configs/datagen/arithmetic_distill.py --output=DIR   # re-run the same to resume
jaxpt eval --config=configs/eval/arithmetic.py --model=DIR --output=DIR
jaxpt plan --config=configs/sft/quickstart.py --topology=v5e:4x4 --config.mesh.fsdp=16   # compile only

A mistake the user can fix (``jaxpt.errors.UserError``: a config field, a path, a data file, a flag) prints
``jaxpt <command>: <message>`` on stderr and exits 2; ``--debug`` (or ``JAXPT_DEBUG=1``) shows its traceback.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys

_FOREIGN_QUIET = {  # transformers' "PyTorch was not found…" advice, datasets' "Generating train split" bars
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DATASETS_VERBOSITY": "critical",  # its errors (a bad JSON line) end in an exception jaxpt reports anyway
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}


class _UsageError(Exception):
    """A command line argparse cannot parse; ``prog`` is the (sub-)command it was parsing."""

    def __init__(self, message: str, prog: str):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is a one-line error from ``main`` instead of usage + exit."""

    def error(self, message: str):  # type: ignore[override]
        raise _UsageError(f"{message} (see '{self.prog} --help')", self.prog)


def _reject_extra(command: str, extra: list[str]) -> None:
    from jaxpt.errors import UserError

    if extra:
        raise UserError(f"unrecognised arguments: {' '.join(extra)} (see 'jaxpt {command} --help')")


def _cmd_train(args: argparse.Namespace, rest: list[str]) -> int:
    from jaxpt.config import parse_cli
    from jaxpt.training.loop import train

    config, unknown = parse_cli(rest)
    _reject_extra("train", unknown)
    train(config, args.workdir, resume=args.resume, resume_step=args.resume_step)
    return 0


def _cmd_convert(args: argparse.Namespace, rest: list[str]) -> int:
    from jaxpt.models import orbax_io

    _reject_extra("convert", rest)
    if args.direction == "hf-to-orbax":
        orbax_io.hf_to_orbax(args.src, args.dst, scan_layers=args.scan_layers)
    else:
        orbax_io.orbax_to_hf(args.src, args.dst, step=args.step, dtype=args.dtype)
    print(f"wrote {args.dst}")
    return 0


def _cmd_generate(args: argparse.Namespace, rest: list[str]) -> int:
    import jax

    from jaxpt.data.tokenizer import load_tokenizer
    from jaxpt.errors import UserError
    from jaxpt.generation.frontend import Sampler, sampling_config
    from jaxpt.generation.sampler import check_sampling
    from jaxpt.models import orbax_io

    _reject_extra("generate", rest)
    flags = {k: getattr(args, k) for k in ("max_new_tokens", "temperature", "top_k", "top_p")}
    check_sampling(flags, label=lambda name: "--" + name.replace("_", "-"))  # before the model loads
    if args.max_prompt_length < 1:
        raise UserError(f"--max-prompt-length={args.max_prompt_length}: must be >= 1")
    config, params, tok_dir = orbax_io.load_any(args.model)
    tokenizer = load_tokenizer(tok_dir)
    prompts = args.prompt
    if args.chat:
        prompts = [[{"role": "user", "content": p}] for p in prompts]
    sampling = sampling_config(config, tokenizer, args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    sampler = Sampler(config, tokenizer, sampling, max_prompt_len=args.max_prompt_length, chat=args.chat)
    out = sampler(params, prompts, jax.random.key(args.seed))
    for prompt, text, n in zip(args.prompt, out.texts, out.lengths, strict=True):
        print(json.dumps({"prompt": prompt, "completion": text, "num_tokens": int(n)}))
    return 0


def _cmd_generate_data(args: argparse.Namespace, rest: list[str]) -> int:
    from jaxpt.config import parse_cli
    from jaxpt.datagen.pipeline import Interrupted, run

    config, unknown = parse_cli(rest)
    _reject_extra("generate-data", unknown)
    try:
        out = run(config, args.output, stop_after_batches=args.stop_after_batches, overwrite=args.overwrite)
    except Interrupted as e:
        print(f"{e}; run the same command again to resume", flush=True)
        return 3
    print(json.dumps({"counts": out["counts"], "paths": out["paths"]}, indent=2))
    print(f"report: {os.path.join(args.output, 'report.md')}")
    return 0


def _cmd_eval(args: argparse.Namespace, rest: list[str]) -> int:
    from jaxpt.config import parse_cli
    from jaxpt.evaluation.evaluate import run_eval

    config, unknown = parse_cli(rest)
    _reject_extra("eval", unknown)
    metrics = run_eval(config, args.model, args.output, step=args.step)
    width = max(len(k) for k in metrics)
    for k, v in metrics.items():
        print(f"{k:<{width}}  {v:.4f}")
    print(f"report: {os.path.join(args.output, 'report.md')}")
    return 0


def _cmd_plan(args: argparse.Namespace, rest: list[str]) -> int:
    from jaxpt.config import parse_cli
    from jaxpt.training.loop import tokenizer_from
    from jaxpt.training.plan import DoesNotFit, format_plan, plan_steps, topology_devices

    config, unknown = parse_cli(rest)
    _reject_extra("plan", unknown)
    # An unknown topology, a busy libtpu or a mesh that does not divide the devices is a UserError (see main).
    devices = topology_devices(args.topology) if args.topology else None
    tokenizer = None if config.model.get("path") else tokenizer_from(config.tokenizer)
    plans = plan_steps(config, devices, tokenizer)
    for plan in plans:
        if isinstance(plan, DoesNotFit):
            print(f"does NOT fit: {plan}")
            continue
        print(format_plan(plan))
        if args.json:
            print(json.dumps(dataclasses.asdict(plan) | {"peak_bytes": plan.peak_bytes, "hbm_bytes": plan.hbm_bytes}))
    return 2 if any(isinstance(p, DoesNotFit) for p in plans) else 0


def _cmd_demo(args: argparse.Namespace, rest: list[str]) -> int:
    from jaxpt.demo import run_demo

    _reject_extra("demo", rest)
    run_demo(args.workdir, preset=args.preset, examples=args.examples)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jaxpt", description="JAX-native LLM post-training")
    parser.add_argument("--debug", action="store_true", help="show the traceback of every error (or JAXPT_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train with a config (sft, rm, dpo, …); --config.x.y=v overrides fields")
    p.add_argument("--workdir", required=True, help="run directory (never silently overwritten)")
    p.add_argument("--resume", action="store_true", help="continue the run in --workdir from its checkpoint")
    p.add_argument(
        "--resume-step",
        type=int,
        default=None,
        help="resume from exactly this checkpoint step (implies --resume; default: the newest that restores)",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("convert", help="convert between a Hugging Face directory and an Orbax checkpoint")
    p.add_argument("direction", choices=["hf-to-orbax", "orbax-to-hf"])
    p.add_argument("src", help="source directory (HF model dir; Orbax params dir or a run's workdir)")
    p.add_argument("dst", help="destination directory (must not exist or be empty)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step of a run (default: latest)")
    p.add_argument("--dtype", default=None, help="export dtype (default: the params' dtype)")
    p.add_argument("--scan-layers", action="store_true", help="store layers stacked (for scanned models)")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("generate", help="sample completions from a model directory")
    p.add_argument("--model", required=True, help="HF model dir, Orbax params dir or a run's workdir")
    p.add_argument("--prompt", action="append", required=True, help="repeat for a batch")
    p.add_argument("--chat", action="store_true", help="apply the tokenizer's chat template")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--max-prompt-length", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser(
        "generate-data",
        help="synthetic data: prompts -> teacher samples -> scores -> filters -> SFT set / preference pairs",
    )
    p.add_argument("--output", required=True, help="output dir (re-running with the same config resumes)")
    p.add_argument("--overwrite", action="store_true", help="delete --output first instead of resuming")
    p.add_argument("--stop-after-batches", type=int, default=None, help="stop after N batches (as if preempted)")
    p.set_defaults(func=_cmd_generate_data)

    p = sub.add_parser("eval", help="likelihood, generation and judged metrics of a model -> report")
    p.add_argument("--model", required=True, help="HF model dir, Orbax params dir or a run's workdir")
    p.add_argument("--output", required=True, help="report dir (report.json, report.md, tensorboard/, …)")
    p.add_argument("--step", type=int, default=None, help="step to record the report at (TensorBoard x-axis)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser(
        "plan", help="compile a config's train step (+ its sampler, scoring pass) for a TPU slice or this host"
    )
    p.add_argument("--topology", default="", help="TPU slice, e.g. v5e:4x4 (needs libtpu); default: this host")
    p.add_argument("--json", action="store_true", help="also print the plan as one JSON line")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("demo", help="SFT from scratch, then GRPO, on arithmetic: before/after table, curves, answers")
    p.add_argument("--workdir", required=True, help="run directory (one sub-directory a stage; never overwritten)")
    p.add_argument("--preset", default="", help="config preset of every stage, e.g. tiny (seconds, for tests)")
    p.add_argument("--examples", type=int, default=8, help="held-out problems the final model answers")
    p.set_defaults(func=_cmd_demo)

    for p in sub.choices.values():  # --debug also after the sub-command (SUPPRESS: absent, it keeps the global one)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _quiet_foreign_output() -> None:
    """Normal runs print what jaxpt reports, not other libraries' advice and progress bars. Environment variables
    reach a library before its import (a user's own setting wins); one already imported is told directly."""
    for key, value in _FOREIGN_QUIET.items():
        os.environ.setdefault(key, value)
    if "transformers" in sys.modules:
        sys.modules["transformers"].logging.set_verbosity_error()
    if "datasets" in sys.modules and os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] != "0":
        datasets = sys.modules["datasets"]
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)


def _is_user_error(error: BaseException) -> bool:
    """Errors the message alone lets the user fix: jaxpt's ``UserError`` family, a command line argparse refused,
    a path that is missing, in the way or not readable, a checkpoint that cannot be resumed from."""
    from jaxpt.errors import UserError

    kinds: tuple[type[BaseException], ...] = (UserError, _UsageError, FileNotFoundError, FileExistsError)
    kinds += (NotADirectoryError, IsADirectoryError, PermissionError)
    checkpoint = sys.modules.get("jaxpt.training.checkpoint")  # imported only by the commands that can raise it
    if checkpoint is not None:
        kinds += (checkpoint.CheckpointError,)
    return isinstance(error, kinds)


def _message(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror and error.filename:  # "[Errno 2] …" -> "PATH: No such file…"
        return f"{error.filename}: {error.strerror}"
    if isinstance(error, KeyError) and len(error.args) == 1:
        return str(error.args[0])  # str(KeyError) quotes the message
    return str(error)


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the process's own entry point (never when called in-process, e.g. by tests)
        from jaxpt.utils.hugepages import reexec_with_hugepages

        reexec_with_hugepages()
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("JAXPT_DEBUG", "") not in ("", "0")
    _quiet_foreign_output()
    logging.basicConfig(level=os.environ.get("JAXPT_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    prog = "jaxpt"
    try:
        args, rest = build_parser().parse_known_args(argv)
        prog = f"jaxpt {args.command}"
        return args.func(args, rest)
    except Exception as e:
        if debug or not _is_user_error(e):
            raise
        print(f"{getattr(e, 'prog', prog)}: {_message(e)}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
