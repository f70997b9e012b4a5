"""Evaluate a model on the shipped arithmetic eval split: likelihood + greedy-generation metrics.

jaxpt eval --config=configs/eval/arithmetic.py --model=runs/quickstart/export --output=runs/eval/quickstart

Sections (each can be switched off): ``likelihood`` (loss / perplexity / token accuracy on the reference
completions), ``generation`` (greedy completions scored by exact match, token F1, chrF and the arithmetic
verifier), ``reward`` (a reward model's score and win rate against the references), ``judge`` (a rubric judge,
``"self"`` = the evaluated model). Presets: ``:quick`` (64 examples, for tests).
"""

from ml_collections import ConfigDict

from jaxpt.evaluation.evaluate import defaults


def get_config(arg: str | None = None) -> ConfigDict:
    c = defaults()  # every field, documented there
    c.data.path = "data/arithmetic/eval.jsonl"
    c.likelihood.update(dict(seq_len=32, batch_size=64))
    c.generation.update(
        dict(
            metrics=("exact_match", "token_f1", "chrf"),  # any of jaxpt.evaluation.metrics.METRICS
            verifier="arithmetic",  # a jaxpt.rewards.VERIFIERS name, or '' for none
            max_new_tokens=8,
            batch_size=128,
            max_prompt_length=16,
        )
    )
    c.reward.update(dict(seq_len=64, batch_size=64))
    c.judge.update(dict(max_new_tokens=8, batch_size=64, max_prompt_length=384))
    if arg == "quick":
        c.data.max_examples = 64
        c.generation.batch_size = 64
    elif arg:
        raise ValueError(f"unknown preset {arg!r}; presets: quick")
    return c
