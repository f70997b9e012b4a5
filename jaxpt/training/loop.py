"""The training loop every algorithm shares: config → data → jitted step → logs / checkpoints / export.

    state, metrics = step(state, batch, frozen)

An algorithm (``jaxpt/algorithms``) supplies its data iterator, loss, eval and any extra parameters; this
file owns the mesh, shardings, optimizer, checkpoint/resume, logging and the final Hugging Face export.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from ml_collections import ConfigDict

from jaxpt.algorithms import get_algorithm, resolve_config
from jaxpt.config import load_config
from jaxpt.data.tokenizer import build_char_tokenizer, load_tokenizer
from jaxpt.errors import UserError
from jaxpt.evaluation.evaluate import evaluate_params
from jaxpt.models.factory import model_config_from
from jaxpt.models.orbax_io import write_model_dir
from jaxpt.sharding import (
    batch_sharding,
    make_mesh,
    normalize_rules,
    param_shardings,
    shard_batch,
    unbox,
)
from jaxpt.training.checkpoint import Checkpointer, CheckpointError
from jaxpt.training.checks import check_data, check_lengths
from jaxpt.training.logging import MetricsLogger
from jaxpt.training.optimizer import make_optimizer
from jaxpt.training.state import abstract_state, create_state, state_shardings
from jaxpt.training.step import jit_train_step, make_train_step
from jaxpt.training.trainable import count_params, mask_from_config
from jaxpt.training.workdir import RESUME_ALLOWED_FIELDS, checkpoint_dir, prepare_workdir
from jaxpt.utils.flops import measure_matmul_peak, train_flops_per_token

log = logging.getLogger(__name__)
# Fields a resumed run may change: how long it runs and what it reports, not what it computes.
_RESUME_ALLOWED = ("train.steps", "train.checkpoint_every", "train.keep_checkpoints", "train.export_hf")


def tokenizer_from(cfg: ConfigDict, model_path: str = ""):
    """``cfg.path`` (a local tokenizer / model dir) or the built-in character tokenizer (``builtin='char'``)."""
    if cfg.get("path"):
        return load_tokenizer(cfg.path)
    if model_path and os.path.exists(os.path.join(model_path, "tokenizer_config.json")):
        return load_tokenizer(model_path)  # a model directory ships its own tokenizer
    if cfg.get("builtin") == "char":
        return build_char_tokenizer()
    raise UserError("config.tokenizer needs a path or builtin='char' (--config.tokenizer.path=DIR)")


def evaluate(eval_step, params, batches, mesh, frozen, summarize) -> dict[str, float]:
    totals: dict[str, float] = {}
    for batch in batches:
        sums = jax.device_get(eval_step(params, shard_batch(batch, mesh), frozen))
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    return summarize(totals) if totals else {}


def train(
    config: ConfigDict,
    workdir: str,
    resume: bool = False,
    stop_after: int | None = None,
    resume_step: int | None = None,
) -> dict[str, Any]:
    """Runs ``config`` in ``workdir``; returns {"eval_before", "eval_after", "final_step", "export_dir", "state"}.

    ``stop_after`` ends this invocation after that many loop steps, checkpointing first, as a preemption
    would (tests use it to check that a resumed run continues exactly). ``config`` is read through its
    algorithm's ``defaults()`` first: an unknown field fails here, before the workdir is touched.

    ``resume`` continues from the newest checkpoint that restores (a corrupt newer one is kept, renamed and
    skipped with a warning: ``Checkpointer.restore_for_resume``); ``resume_step`` (implies ``resume``) from
    exactly that step. ``metrics.jsonl`` is then cut back to the restored step, since the steps after it run again.
    """
    config = resolve_config(config)
    if resume_step is not None:
        resume = True
        ckpt_dir = checkpoint_dir(workdir)
        if not (ckpt_dir.is_dir() and any(ckpt_dir.iterdir())):
            raise CheckpointError(f"cannot resume from step {resume_step}: {workdir} has no checkpoints")
    check_data(config)  # the inputs are checked before the workdir is touched: a fixed command then just works
    m = config.mesh
    mesh = make_mesh(m.data, m.fsdp, m.tensor)
    rules = normalize_rules(m.rules)
    model_path = config.model.path
    if model_path and not os.path.exists(os.path.join(model_path, "config.json")):
        raise FileNotFoundError(
            f"config.model.path={model_path!r} has no config.json (for the quickstart exports, run "
            "`jaxpt train --config=configs/sft/quickstart.py --workdir=runs/quickstart` first)"
        )
    tokenizer = tokenizer_from(config.tokenizer, model_path)
    model_config = model_config_from(config.model, tokenizer)
    check_lengths(config, model_config)
    prepare_workdir(workdir, config, resume, allowed=RESUME_ALLOWED_FIELDS + _RESUME_ALLOWED)
    if not os.path.exists(os.path.join(workdir, "model", "config.json")):
        write_model_dir(model_config, os.path.join(workdir, "model"), tokenizer)  # for convert / generate
    build = get_algorithm(config.algorithm)
    t = config.train
    total_steps = t.steps

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        parts = build(config, model_config, tokenizer, mesh)
        trainable = mask_from_config(t, unbox(parts.abstract_params), parts.trainable)
        n_trainable, n_params = count_params(parts.abstract_params, trainable)
        print(f"parameters: {n_trainable:,} of {n_params:,} train ({100 * n_trainable / n_params:.3g}%)", flush=True)
        tx, schedule = make_optimizer(config.optimizer, total_steps * parts.updates_per_step, trainable)
        shardings = state_shardings(parts.abstract_params, tx, mesh, rules)
        step_fn = make_train_step(parts.loss_fn, tx, schedule, t.grad_accum_steps, trainable)
        params_shardings = param_shardings(parts.abstract_params, mesh, rules)
        jit_step = jit_train_step(step_fn, shardings, mesh)
        jit_eval = jax.jit(parts.eval_fn, in_shardings=(params_shardings, batch_sharding(mesh), None))

        ckpt = Checkpointer(
            os.path.join(workdir, "checkpoints"),
            save_every=t.checkpoint_every,
            keep=t.keep_checkpoints,
            keep_best=t.keep_best or None,
            best_metric=t.best_metric or None,
            best_mode=t.best_mode,
            async_save=True,
        )
        start = 0
        if resume and (resume_step is not None or ckpt.latest_step() is not None):
            target = abstract_state(shardings, parts.abstract_params, tx)
            restored = ckpt.restore_for_resume(target, resume_step)
            state, data_state = restored.state, restored.data_state
            parts.train_iter.set_state(data_state["iterator"])
            start = resume_from = int(data_state["loop_step"])
            print(f"resumed from step {start}", flush=True)
            log.info("resumed from step %d", start)
        else:
            resume_from = -1 if resume else None  # no checkpoint yet: the run starts over, its old logs go
            state = create_state(parts.init_params(shardings.params), tx, shardings, config.seed)
        frozen = parts.frozen(state.params) if parts.frozen else None
        # Optional `jaxpt eval` config run every N steps on the trained decoder (configs/eval/*.py).
        hook_cfg = load_config(config.eval_hook.config) if config.eval_hook.config else None
        hook_every = int(config.eval_hook.every) if hook_cfg else 0

        # resume_from: metrics.jsonl is cut back to that step, TensorBoard drops later events (they run again)
        logger = MetricsLogger(workdir, total_steps, enabled=True, resume_from=resume_from)
        logger.advance(start)
        if start == 0:  # a resumed run keeps the original run's line
            logger.log(0, {"trainable_params": n_trainable, "total_params": n_params}, prefix="")
        result: dict[str, Any] = {}
        if parts.eval_batches and start == 0:
            result["eval_before"] = evaluate(jit_eval, state.params, parts.eval_batches, mesh, frozen, parts.summarize)
            if parts.after_eval:
                result["eval_before"].update(parts.after_eval(state.params))
            logger.log(0, result["eval_before"], prefix="eval")
            print(f"eval before: {_fmt(result['eval_before'])}", flush=True)

        seq_len = config.data.seq_len
        flops_per_token = train_flops_per_token(model_config, seq_len) if seq_len else 0.0
        peak = t.peak_flops or measure_matmul_peak()
        eval_metrics: dict[str, float] = {}
        window_tokens, window_flops, window_start = 0, 0.0, time.perf_counter()
        end = total_steps if stop_after is None else min(total_steps, start + stop_after)
        for i in range(start, end):
            extra: dict[str, float] = {}
            if parts.rollout is not None:
                batches, extra = parts.rollout(state.params, frozen, i)
            else:
                batches = [next(parts.train_iter)]
            for batch in batches:
                state, metrics = jit_step(state, shard_batch(batch, mesh), frozen)
                tokens = parts.tokens_in_batch(batch) if parts.tokens_in_batch else 0
                window_tokens += tokens
                window_flops += parts.flops_in_batch(batch) if parts.flops_in_batch else tokens * flops_per_token
            logger.advance()
            step = i + 1
            if step % t.log_every == 0 or step == total_steps:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()} | extra
                elapsed = time.perf_counter() - window_start
                if window_tokens:
                    metrics["tokens_per_s"] = window_tokens / elapsed
                    metrics["mfu"] = window_flops / elapsed / peak
                logger.log(step, metrics)
                window_tokens, window_flops, window_start = 0, 0.0, time.perf_counter()
            is_eval = parts.eval_batches and t.eval_every and (step % t.eval_every == 0 or step == total_steps)
            if is_eval:
                eval_metrics = evaluate(jit_eval, state.params, parts.eval_batches, mesh, frozen, parts.summarize)
                if parts.after_eval and step == total_steps:
                    eval_metrics.update(parts.after_eval(state.params))
                logger.log(step, eval_metrics, prefix="eval")
            if hook_every and (step % hook_every == 0 or step == total_steps) and "embed" in state.params:
                hook_metrics = evaluate_params(model_config, state.params, tokenizer, hook_cfg)
                logger.log(step, hook_metrics, prefix="eval_hook")
            data_state = {"iterator": parts.train_iter.get_state(), "loop_step": step}
            ckpt.maybe_save(step, state, data_state, metrics=eval_metrics if is_eval else None, force=step == end)
        ckpt.wait()
        ckpt.close()
        logger.close()
        if eval_metrics:
            result["eval_after"] = eval_metrics
            print(f"eval after:  {_fmt(eval_metrics)}", flush=True)
        result["final_step"] = int(state.step)
        if t.export_hf and parts.export and int(state.step) and end == total_steps:
            out = os.path.join(workdir, "export")
            if os.path.exists(out) and os.listdir(out):
                out = os.path.join(workdir, f"export-step{int(state.step)}")
            parts.export(state.params, out)
            result["export_dir"] = out
            print(f"exported Hugging Face checkpoint to {out}", flush=True)
        result["state"] = state
    return result


def _fmt(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if np.isscalar(v))
