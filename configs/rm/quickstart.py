"""Reward model on the shipped arithmetic preference pairs (chosen = the right answer, rejected = a near miss).

Starts from the SFT quickstart's export (its decoder; the LM head is dropped and a scalar head added):

    jaxpt train --config=configs/sft/quickstart.py --workdir=runs/quickstart      # first, once
    jaxpt train --config=configs/rm/quickstart.py --workdir=runs/rm
    jaxpt train --config=configs/rm/quickstart.py --workdir=runs/rm2 --config.model.path=runs/other/export
    jaxpt train --config=configs/rm/quickstart.py:tiny --workdir=/tmp/rm           # tiny scratch model (tests)

Held-out reward accuracy (``eval/rewards/accuracy`` on data/arithmetic/prefs_eval.jsonl) is the number to
watch (from the SFT quickstart's export, 2 CPU cores, < 1 min: 0.485 -> 0.645, margin -0.01 -> 0.59, loss
0.698 -> 0.609); the run exports an ``AutoModelForSequenceClassification`` checkpoint to ``<workdir>/export``.
"""

import os

from ml_collections import ConfigDict

from jaxpt.algorithms.reward_model import defaults
from jaxpt.config import import_config_file

common = import_config_file(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "common.py"))


def get_config(arg: str | None = None) -> ConfigDict:
    c = defaults()  # every field: jaxpt.algorithms.reward_model.defaults()
    # The built-in char tokenizer the SFT quickstart uses; a model dir with its own tokenizer files wins
    # when tokenizer.path is empty (jaxpt/algorithms/common/preference.py).
    c.tokenizer.builtin = "char"
    c.model.path = "runs/quickstart/export"  # model.head = auto: a causal LM gets a new random head
    c.data.update(
        dict(
            train="data/arithmetic/prefs_train.jsonl",
            eval="data/arithmetic/prefs_eval.jsonl",
            seq_len=16,  # prompt + completion + BOS/EOS of the arithmetic pairs is at most 11 tokens
        )
    )
    c.train.update(dict(steps=600, batch_size=16, log_every=20, eval_every=200, checkpoint_every=200))
    c.optimizer.update(dict(lr=1e-4, warmup_steps=20, weight_decay=0.0))
    if arg == "tiny":
        common.tiny_scratch_model(c)
    elif arg:
        raise ValueError(f"unknown preset {arg!r}; presets: tiny")
    return c
