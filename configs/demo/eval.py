"""The demo's held-out evaluation during training (``eval_hook``: every N steps of both stages): greedy exact
match on the 500 problems of data/arithmetic_reversed/eval.jsonl, the curve in the demo's curves.png.

jaxpt eval --config=configs/demo/eval.py --model=runs/demo/grpo/export --output=runs/demo/eval
"""

import os

from ml_collections import ConfigDict

from jaxpt.evaluation.evaluate import defaults

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "data")


def get_config(arg: str | None = None) -> ConfigDict:
    c = defaults()  # every field, documented there
    c.data.path = os.path.join(DATA, "arithmetic_reversed/eval.jsonl")
    c.likelihood.enabled = False  # the training loop's own eval already reports the held-out loss
    c.generation.update(dict(metrics=("exact_match",), max_new_tokens=4, batch_size=500, max_prompt_length=8))
    c.report.tensorboard = False
    if arg == "tiny":
        c.data.max_examples = 16
        c.generation.batch_size = 16
    elif arg:
        raise ValueError(f"unknown preset {arg!r}; presets: tiny")
    return c
