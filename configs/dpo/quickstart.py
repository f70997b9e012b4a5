"""DPO on the shipped arithmetic preference pairs (chosen = the right answer, rejected = a near miss).

Policy and frozen reference both start from the SFT quickstart's export:

    jaxpt train --config=configs/sft/quickstart.py --workdir=runs/quickstart      # first, once
    jaxpt train --config=configs/dpo/quickstart.py --workdir=runs/dpo
    jaxpt train --config=configs/dpo/quickstart.py --workdir=runs/ipo --config.dpo.loss_type=ipo
    jaxpt train --config=configs/dpo/quickstart.py --workdir=runs/dpo2 --config.model.path=runs/other/export
    jaxpt train --config=configs/dpo/quickstart.py:tiny --workdir=/tmp/dpo         # tiny scratch model (tests)

Held-out implicit-reward accuracy and margin (``eval/rewards/accuracy``, ``eval/rewards/margin`` on
data/arithmetic/prefs_eval.jsonl) rise from 0 (policy == reference) as the policy moves probability from
wrong to right answers (from the SFT quickstart's export, 2 CPU cores, ~1 min, ``make demo`` on 2026-11-29:
reward accuracy 0 -> 0.66, margin 0 -> 0.16, loss 0.693 -> 0.627; the policy's own preference for the right
answer, ``eval/logps/accuracy``, stays at 0.695); the policy exports as a HF causal LM to ``<workdir>/export``.
"""

import os

from ml_collections import ConfigDict

from jaxpt.algorithms.dpo import defaults
from jaxpt.config import import_config_file

common = import_config_file(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "common.py"))


def get_config(arg: str | None = None) -> ConfigDict:
    c = defaults()  # every field: jaxpt.algorithms.dpo.defaults()
    # The built-in char tokenizer the SFT quickstart uses; a model dir with its own tokenizer files wins
    # when tokenizer.path is empty (jaxpt/algorithms/common/preference.py).
    c.tokenizer.builtin = "char"
    c.model.path = "runs/quickstart/export"
    c.data.update(
        dict(
            train="data/arithmetic/prefs_train.jsonl",
            eval="data/arithmetic/prefs_eval.jsonl",
            seq_len=16,  # prompt + completion + BOS/EOS of the arithmetic pairs is at most 11 tokens
        )
    )
    c.dpo.update(dict(loss_type="sigmoid", beta=0.1))  # reference: the initial policy
    c.train.update(dict(steps=300, batch_size=16, log_every=10, eval_every=100, checkpoint_every=100))
    c.optimizer.update(dict(lr=1e-4, warmup_steps=10, weight_decay=0.0))
    if arg == "tiny":
        common.tiny_scratch_model(c)
    elif arg:
        raise ValueError(f"unknown preset {arg!r}; presets: tiny")
    return c
