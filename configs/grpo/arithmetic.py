"""GRPO on arithmetic with a verifiable reward, from the SFT quickstart's exported model.

jaxpt train --config=configs/sft/quickstart.py --workdir=runs/quickstart        # first: the SFT model
jaxpt train --config=configs/grpo/arithmetic.py --workdir=runs/grpo
jaxpt train --config=configs/grpo/arithmetic.py --workdir=runs/grpo --config.model.path=OTHER_EXPORT
jaxpt train --config=configs/grpo/arithmetic.py:tiny --workdir=/tmp/g   # a tiny from-scratch model, for tests

Rewards: 1 for the exact answer (the arithmetic verifier), + 0.1 for a well-formed answer (an integer, then
EOS). Each step samples G=8 completions at temperature 0.6 for each of 128 prompts (1024 rows) and makes one
update on all of them (DAPO token-level loss, clip 0.2 / 0.28, no KL term). Many prompts per update and a small
learning rate: with few prompts per step this tiny model's policy drifts off its SFT solution on held-out
problems (see experiments/rl_arithmetic/README.md).
"""

import os

from ml_collections import ConfigDict

from jaxpt.algorithms.grpo import defaults
from jaxpt.config import import_config_file

common = import_config_file(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "common.py"))


def get_config(arg: str | None = None) -> ConfigDict:
    c = common.arithmetic_rl(defaults())  # every field: jaxpt.algorithms.grpo.defaults()
    c.grpo.update(dict(num_generations=8, mini_batch_size=1024, loss_type="dapo", epsilon_high=0.28, beta=0.0))
    c.train.update(dict(steps=300, batch_size=128, log_every=1, eval_every=100, checkpoint_every=100))
    c.optimizer.update(dict(lr=5e-5, warmup_steps=5, weight_decay=0.0, end_lr_factor=0.5))
    if arg == "tiny":  # from scratch, char tokenizer: runs anywhere in seconds (tests)
        common.arithmetic_rl_tiny(c)
        c.grpo.update(dict(num_generations=4, mini_batch_size=16, num_iterations=2, beta=0.04))
        c.train.batch_size = 8
    elif arg:
        raise ValueError(f"unknown preset {arg!r}; presets: tiny")
    return c
