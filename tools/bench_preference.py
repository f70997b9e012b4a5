"""Preference-training benchmarks (plug-in cases of ``tools/bench.py``): one DPO step and one reward-model
step on bench-small.

    python tools/bench.py dpo rm --repeats 5
    python tools/bench.py dpo --no-reference      # ours only

8 pairs, prompt 128 + completion 128 tokens (flat: a [16, 256] batch, chosen rows then rejected rows; jaxpt's
shared-prompt layout: [8, 128] prompts + [16, 128] completions), float32, AdamW, sigmoid DPO loss (beta 0.1).
Rows, all in this process on the same weights and data:

- ``jaxpt``: the algorithm's real loss (``jaxpt.algorithms.dpo``) in the loop's train step on the batches its
  data iterator makes (shared-prompt layout: each prompt once, the chosen and rejected completions on its KV
  cache), through the policy and through the frozen reference, inside the jitted step;
- ``jaxpt (precomputed reference)``: the same step with cached reference log-probs (no reference forward);
- ``torch (TRL-style step)``: what TRL's DPOTrainer does per step, written out: transformers'
  LlamaForCausalLM policy and reference, chosen + rejected concatenated in one forward each, completion
  log-probs by gather - logsumexp, sigmoid DPO loss, global-norm clipping at 1.0, ``torch.optim.AdamW``;
- ``trl-<version> DPOTrainer`` (when ``trl`` is importable; it is not a jaxpt dependency): TRL itself on
  the same model and equivalent text pairs, step times from a callback after warm-up (TRL projects only
  labelled positions through its fused LM head too);
- ``jaxpt, interleaved with the TRL steps``: our default step run inside TRL's step-end callback, after TRL's
  step is timed, so both see the same machine load step by step; its row carries ``ratio_to_reference``.

Throughput is pairs per second (``pairs_per_s``). The ``rm`` case trains a score head on the same pairs with
the Bradley-Terry loss (``jaxpt.algorithms.reward_model``, shared-prompt batches) against TRL's RewardTrainer
on the same weights (exported as ``LlamaForSequenceClassification``), with the same interleaved row.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PAIRS, PROMPT, COMPLETION, BETA, LR = 8, 128, 128, 0.1, 1e-6
INTERLEAVED = "jaxpt, interleaved with the TRL steps"


def _bench():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench

    return bench


def preference_pairs(vocab: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Random token pairs sharing their prompt: PROMPT + COMPLETION tokens each."""
    rng = np.random.default_rng(seed)
    return [
        {
            "prompt_ids": rng.integers(3, vocab, PROMPT).astype(np.int32),
            "chosen_ids": rng.integers(3, vocab, COMPLETION).astype(np.int32),
            "rejected_ids": rng.integers(3, vocab, COMPLETION).astype(np.int32),
        }
        for _ in range(PAIRS)
    ]


def preference_batch(pairs, shared_prompt: bool) -> dict[str, np.ndarray]:
    """The flat ``[2 * PAIRS, PROMPT + COMPLETION]`` batch (already shifted: the last slot of each row is
    padding, a row of n tokens fills n - 1 slots), or the shared-prompt one DPO's data iterator makes."""
    from jaxpt.data.preference import build_preference_batch, build_shared_prompt_batch, shared_prompt_shape

    seq = PROMPT + COMPLETION
    if shared_prompt:
        return build_shared_prompt_batch(pairs, seq, shared_prompt_shape(pairs, seq))
    return build_preference_batch(pairs, seq)


def _jaxpt_rows(config, params, batch, args) -> list[dict]:
    from jaxpt.algorithms import dpo
    from jaxpt.models.logprobs import sequence_logprobs
    from jaxpt.training.optimizer import make_optimizer, optimizer_config
    from jaxpt.training.state import TrainState
    from jaxpt.training.step import make_train_step

    bench = _bench()
    tx, schedule = make_optimizer(optimizer_config(lr=LR, warmup_steps=0, weight_decay=0.0), 1000)
    section = dpo.defaults().dpo
    section.beta = BETA
    kwargs = dpo.loss_kwargs(section)
    step = jax.jit(make_train_step(dpo.make_loss_fn(config, config, kwargs, 0), tx, schedule), donate_argnums=0)
    reference = jax.tree.map(jnp.copy, params)  # the frozen reference (the step donates the policy's buffers)
    device_batch = {k: jnp.asarray(v) for k, v in batch.items()}
    ref_logps = jax.jit(lambda p, b: sequence_logprobs(config, p, b, 0))(reference, device_batch)
    rows, runs = [], []
    for name, frozen, b in (
        ("jaxpt", reference, device_batch),
        ("jaxpt (precomputed reference)", None, {**device_batch, "ref_logps": ref_logps}),
    ):
        own = jax.tree.map(jnp.copy, params)
        state = [TrainState(jnp.zeros((), jnp.int32), own, tx.init(own), jax.random.key_data(jax.random.key(0)))]

        def run(b=b, frozen=frozen, state=state):
            state[0], m = step(state[0], b, frozen)
            jax.block_until_ready(m)

        stats = bench.timeit(run, args.repeats)
        runs.append(run)
        rows.append(
            dict(
                case="dpo",
                impl=name,
                pairs_per_s=PAIRS / stats["median_s"],
                peak_memory_mb=bench._peak_memory_mb(),
                **stats,
            )
        )
    return rows, runs


def _torch_row(config, params, batch, repeats: int) -> dict:
    """A TRL-style DPO step in PyTorch (see the module docstring)."""
    import torch
    import torch.nn.functional as F

    bench = _bench()
    policy = bench._torch_model(config, params).train()
    reference = bench._torch_model(config, params).eval()
    reference.requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=LR, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    # Unshifted rows [2B, 256]: inputs + the last target; completion mask on the shifted targets.
    n = batch["segment_ids"].sum(1)
    ids = np.concatenate([batch["inputs"][:, :1], batch["targets"]], axis=1)[:, : int(n.max()) + 1]
    ids = torch.tensor(ids, dtype=torch.long)
    attention = torch.tensor(np.concatenate([batch["segment_ids"][:, :1], batch["segment_ids"]], 1)[:, : ids.shape[1]])
    mask = torch.tensor(batch["loss_mask"][:, : ids.shape[1] - 1])
    b = PAIRS

    def logps(model, ids):
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
        picked = torch.gather(logits, -1, ids[:, 1:, None])[..., 0] - torch.logsumexp(logits, -1)
        return (picked * mask).sum(-1)

    def step():
        with torch.no_grad():
            ref = logps(reference, ids)
        pol = logps(policy, ids)
        h = (pol[:b] - ref[:b]) - (pol[b:] - ref[b:])
        loss = -F.logsigmoid(BETA * h).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()

    stats = bench.timeit(step, repeats)
    return dict(case="dpo", impl="torch (TRL-style step)", pairs_per_s=PAIRS / stats["median_s"], **stats)


def _text_pairs(config, count: int):
    """``count`` pairs of 127 random characters of an 8184-character alphabet (prompt: BOS + 127 = 128 tokens;
    completions: 127 + EOS = 128 tokens) and the char tokenizer that reads them; None without TRL (it is not a
    jaxpt dependency)."""
    try:
        import datasets
        import trl  # noqa: F401
    except ImportError:
        return None
    from jaxpt.data.tokenizer import CHAR_SPECIAL_TOKENS, build_char_tokenizer

    alphabet = "".join(chr(0x4E00 + i) for i in range(config.vocab_size - len(CHAR_SPECIAL_TOKENS)))
    rng = np.random.default_rng(1)
    text = lambda n: "".join(rng.choice(list(alphabet), n))  # noqa: E731
    rows = [
        {"prompt": text(PROMPT - 1), "chosen": text(COMPLETION - 1), "rejected": text(COMPLETION - 1)}
        for _ in range(count)
    ]
    return datasets.Dataset.from_list(rows), build_char_tokenizer(alphabet=alphabet)


def _time_trainer(trainer, case: str, between=None) -> tuple[dict, list[float]]:
    """``bench.time_trainer`` with this module's row fields (case, pairs/s)."""
    row, ours = _bench().time_trainer(trainer, between)
    return dict(case=case, pairs_per_s=PAIRS / row["median_s"], **row), ours


def _trl_args(repeats: int) -> dict:
    """Training arguments TRL's DPO and reward trainers share here: one optimizer step per batch of PAIRS."""
    return _bench().trl_timing_args(
        repeats, per_device_train_batch_size=PAIRS, max_length=PROMPT + COMPLETION, learning_rate=LR, adam_beta2=0.95
    )


def _trl_row(config, params, repeats: int, between=None) -> tuple[dict, list[float]] | None:
    """TRL's DPOTrainer on the same weights and equivalent text pairs (``_text_pairs``)."""
    data = _text_pairs(config, PAIRS * (repeats + 2))
    if data is None:
        return None
    import trl

    ds, tokenizer = data
    bench = _bench()
    cfg = trl.DPOConfig(**_trl_args(repeats), beta=BETA, loss_type="sigmoid", precompute_ref_log_probs=False)
    model = bench._torch_model(config, params).train()
    ref_model = bench._torch_model(config, params).eval()
    trainer = trl.DPOTrainer(model=model, ref_model=ref_model, args=cfg, train_dataset=ds, processing_class=tokenizer)
    return _time_trainer(trainer, "dpo", between)


def case_dpo(args) -> list[dict]:
    """DPO step on bench-small: 8 pairs x (128 + 128) tokens, reference forward in the step, f32, AdamW."""
    from jaxpt.models.decoder import init_params

    bench = _bench()
    config = bench.bench_small_config()
    params = init_params(config, jax.random.key(0))
    pairs = preference_pairs(config.vocab_size)
    rows, runs = _jaxpt_rows(config, params, preference_batch(pairs, shared_prompt=True), args)
    batch = preference_batch(pairs, shared_prompt=False)  # the torch step's [2B, T] rows
    if args.reference:
        rows.append(_torch_row(config, params, batch, max(3, args.repeats)))
        trl = _trl_row(config, params, max(3, args.repeats), between=bench.timed(runs[0]))
        if trl is not None:
            rows += [trl[0], bench.interleaved_row(INTERLEAVED, *trl, PAIRS)]
    return rows


def case_rm(args) -> list[dict]:
    """Reward-model step on bench-small with a scalar score head: the same 8 pairs x (128 + 128) tokens,
    Bradley-Terry loss, f32, AdamW; against TRL's RewardTrainer on the same weights
    (``LlamaForSequenceClassification``, exported with ``save_hf(head="score")``)."""
    from jaxpt.algorithms import reward_model
    from jaxpt.models.reward import init_reward_params
    from jaxpt.training.optimizer import make_optimizer, optimizer_config
    from jaxpt.training.state import TrainState
    from jaxpt.training.step import make_train_step

    bench = _bench()
    config = bench.bench_small_config()
    params = init_reward_params(config, jax.random.key(0))
    batch = {k: jnp.asarray(v) for k, v in preference_batch(preference_pairs(config.vocab_size), True).items()}
    tx, schedule = make_optimizer(optimizer_config(lr=LR, warmup_steps=0, weight_decay=0.0), 1000)
    step = jax.jit(make_train_step(reward_model.make_loss_fn(config, 0.0), tx, schedule), donate_argnums=0)
    own = jax.tree.map(jnp.copy, params)  # the step donates its state; keep `params` for the reference
    state = [TrainState(jnp.zeros((), jnp.int32), own, tx.init(own), jax.random.key_data(jax.random.key(0)))]

    def run():
        state[0], m = step(state[0], batch, None)
        jax.block_until_ready(m)

    stats = bench.timeit(run, args.repeats)
    rows = [dict(case="rm", impl="jaxpt", pairs_per_s=PAIRS / stats["median_s"], **stats)]
    if args.reference:
        trl = _trl_rm_row(config, params, max(3, args.repeats), between=bench.timed(run))
        if trl is not None:
            rows += [trl[0], bench.interleaved_row(INTERLEAVED, *trl, PAIRS)]
    return rows


def _trl_rm_row(config, params, repeats: int, between=None) -> tuple[dict, list[float]] | None:
    """TRL's RewardTrainer on the same weights and equivalent text pairs (``_text_pairs``)."""
    data = _text_pairs(config, PAIRS * (repeats + 2))
    if data is None:
        return None
    import tempfile

    import transformers
    import trl

    from jaxpt.models.hf import save_hf

    ds, tokenizer = data
    d = tempfile.mkdtemp()
    save_hf(config, params, d, overwrite=True, head="score")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(d).train()
    model.config.pad_token_id = tokenizer.pad_token_id
    trainer = trl.RewardTrainer(
        model=model, args=trl.RewardConfig(**_trl_args(repeats)), train_dataset=ds, processing_class=tokenizer
    )
    return _time_trainer(trainer, "rm", between)


CASES = {"dpo": case_dpo, "rm": case_rm}
