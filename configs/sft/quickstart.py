"""Quickstart: train a tiny Llama-style model from scratch on shipped arithmetic data (2 CPU cores, minutes).

jaxpt train --config=configs/sft/quickstart.py --workdir=runs/quickstart
jaxpt train --config=configs/sft/quickstart.py:tiny --workdir=/tmp/q   # a few steps, for tests
"""

from ml_collections import ConfigDict

from jaxpt.algorithms.sft import defaults


def get_config(arg: str | None = None) -> ConfigDict:
    c = defaults()  # every field: jaxpt.algorithms.sft.defaults()
    c.tokenizer.builtin = "char"
    c.data.update(dict(train="data/arithmetic/train.jsonl", eval="data/arithmetic/eval.jsonl", seq_len=128))
    c.train.update(dict(steps=300, batch_size=16, log_every=10, eval_every=100, checkpoint_every=100))
    # Partial fine-tuning: regexes over '/'-joined parameter paths (see jaxpt/training/defaults.py), e.g.
    # c.train.trainable = ("layers_1/.*", "final_norm/.*")  or  c.train.frozen = ("embed/.*",)
    c.optimizer.update(dict(lr=3e-3, warmup_steps=20, weight_decay=0.01))
    # Greedy exact match on held-out prompts, before and after training (on top of loss/perplexity/accuracy).
    c.eval.update(dict(exact_match_examples=200, max_new_tokens=8))
    if arg == "tiny":
        c.train.update(dict(steps=8, batch_size=8, log_every=2, eval_every=4, checkpoint_every=4))
        c.optimizer.warmup_steps = 2
        c.eval.exact_match_examples = 16
    elif arg:
        raise ValueError(f"unknown preset {arg!r}; presets: tiny")
    return c
