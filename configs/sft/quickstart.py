"""Quickstart: train a tiny Llama-style model from scratch on shipped arithmetic data (2 CPU cores, minutes).

jaxpt train --config=configs/sft/quickstart.py --workdir=runs/quickstart
jaxpt train --config=configs/sft/quickstart.py:tiny --workdir=/tmp/q   # a few steps, for tests
"""

from ml_collections import ConfigDict

from jaxpt.training.defaults import mesh_config, model_config, optimizer_config, train_config


def get_config(arg: str | None = None) -> ConfigDict:
    c = ConfigDict()
    c.algorithm = "sft"
    c.seed = 0
    c.tokenizer = ConfigDict(dict(path="", builtin="char"))
    c.model = model_config()
    c.data = ConfigDict(
        dict(
            train="data/arithmetic/train.jsonl",
            eval="data/arithmetic/eval.jsonl",
            seq_len=128,
            packing=True,
            completion_only=True,
        )
    )
    c.train = train_config(steps=300, batch_size=16, log_every=10, eval_every=100, checkpoint_every=100)
    # Partial fine-tuning: regexes over '/'-joined parameter paths (see jaxpt/training/defaults.py), e.g.
    # c.train.trainable = ("layers_1/.*", "final_norm/.*")  or  c.train.frozen = ("embed/.*",)
    c.optimizer = optimizer_config(lr=3e-3, warmup_steps=20, weight_decay=0.01)
    c.mesh = mesh_config()
    # Greedy exact match on held-out prompts, before and after training (on top of loss/perplexity/accuracy).
    c.eval = ConfigDict(dict(exact_match_examples=200, max_new_tokens=8))
    # A `jaxpt eval` config run every N steps, e.g. --config.eval_hook.config=configs/eval/arithmetic.py:quick
    c.eval_hook = ConfigDict(dict(config="", every=0))
    if arg == "tiny":
        c.train.update(dict(steps=8, batch_size=8, log_every=2, eval_every=4, checkpoint_every=4))
        c.optimizer.warmup_steps = 2
        c.eval.exact_match_examples = 16
    elif arg:
        raise ValueError(f"unknown preset {arg!r}; presets: tiny")
    return c
