"""PPO on arithmetic with a verifiable reward, from the SFT quickstart's exported model.

jaxpt train --config=configs/sft/quickstart.py --workdir=runs/quickstart        # first: the SFT model
jaxpt train --config=configs/ppo/arithmetic.py --workdir=runs/ppo
jaxpt train --config=configs/ppo/arithmetic.py:tiny --workdir=/tmp/p   # a tiny from-scratch model, for tests

Rewards: 1 for the exact answer (the arithmetic verifier), + 0.1 for a well-formed answer (an integer, then
EOS); completions cut before EOS lose ``ppo.missing_eos_penalty``. Each step samples 4 completions at
temperature 0.6 for each of 128 prompts (512 rows); per-token KL penalty (0.02) to the frozen SFT model, GAE,
whitened advantages, clipped policy and value losses, 2 PPO epochs over 2 minibatches of 256.
The value model starts from the SFT decoder with a fresh scalar head (``ppo.value_model_path`` = a reward
model's dir / RM run to start from a reward model instead).
"""

import os

from ml_collections import ConfigDict

from jaxpt.algorithms.ppo import defaults
from jaxpt.config import import_config_file

common = import_config_file(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "common.py"))


def get_config(arg: str | None = None) -> ConfigDict:
    c = common.arithmetic_rl(defaults())  # every field: jaxpt.algorithms.ppo.defaults()
    c.ppo.update(dict(samples_per_prompt=4, epochs=2, mini_batch_size=256, kl_coef=0.02))
    c.train.update(dict(steps=300, batch_size=128, log_every=1, eval_every=100, checkpoint_every=100))
    c.optimizer.update(dict(lr=3e-5, warmup_steps=5, weight_decay=0.0, end_lr_factor=0.5))
    if arg == "tiny":  # from scratch, char tokenizer: runs anywhere in seconds (tests)
        common.arithmetic_rl_tiny(c)
        c.ppo.update(
            dict(
                samples_per_prompt=1,
                epochs=2,
                mini_batch_size=8,
                kl_coef=0.05,
                adaptive_kl=True,
                kl_target=0.5,
                kl_horizon=100.0,
            )
        )
        c.train.batch_size = 16
    elif arg:
        raise ValueError(f"unknown preset {arg!r}; presets: tiny")
    return c
