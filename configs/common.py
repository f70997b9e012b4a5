"""Experiment presets shared by several config files (big_vision's ``common.py``); not a config itself.

A config file imports it by path: ``common = import_config_file(os.path.join(_CONFIGS, "common.py"))``.
"""

from ml_collections import ConfigDict

from jaxpt.training.defaults import model_config, tiny_llama


def arithmetic_rl(c: ConfigDict, export: str = "runs/quickstart/export") -> ConfigDict:
    """What the PPO and GRPO arithmetic configs share: the SFT export as policy (and reference), the shipped
    arithmetic prompts, short rollouts at temperature 0.6, and the verifier + format rewards. Each config adds
    its algorithm section, ``train`` and ``optimizer``."""
    c.model.path = export
    c.tokenizer.path = export
    c.data.update(
        dict(train="data/arithmetic/train.jsonl", eval="data/arithmetic/eval.jsonl", seq_len=32, eval_prompts=256)
    )
    c.rollout.update(dict(max_prompt_len=16, max_new_tokens=8, temperature=0.6))
    c.rewards = [
        dict(kind="arithmetic", weight=1.0),  # the arithmetic verifier (jaxpt.rewards.VERIFIERS)
        dict(kind="format", weight=0.1, pattern=r"-?\d+", mode="fullmatch", require_eos=True),
    ]
    return c


def arithmetic_rl_tiny(c: ConfigDict) -> ConfigDict:
    """The shared part of the ``:tiny`` presets: a from-scratch model and char tokenizer, tiny rollouts, a
    denser format reward, 3 steps at a high learning rate (runs anywhere in seconds: tests)."""
    c.model = model_config(scratch=tiny_llama(hidden_size=64, intermediate_size=128, num_attention_heads=4))
    c.tokenizer = ConfigDict(dict(path="", builtin="char"))
    c.data.eval_prompts = 16
    c.rollout.update(dict(max_prompt_len=12, max_new_tokens=4, temperature=1.0))
    c.rewards = [
        dict(kind="arithmetic", weight=1.0),
        dict(kind="format", weight=0.5, pattern=r"\d", mode="match", require_eos=False),
    ]
    c.train.update(dict(steps=3, log_every=1, eval_every=3, checkpoint_every=3))
    c.optimizer.update(dict(lr=3e-3, warmup_steps=0))
    return c


def tiny_scratch_model(c: ConfigDict) -> ConfigDict:
    """The ``:tiny`` model of the preference configs: a 2-layer from-scratch Llama, 8 steps (tests)."""
    c.model.path = ""
    c.model.scratch = tiny_llama(hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    c.train.update(dict(steps=8, batch_size=8, log_every=2, eval_every=4, checkpoint_every=4, peak_flops=1e12))
    c.optimizer.warmup_steps = 2
    return c
