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

from ml_collections import ConfigDict

from jaxpt.training.defaults import mesh_config, model_config, optimizer_config, tiny_llama, train_config

EXPORT = "runs/quickstart/export"


def get_config(arg: str | None = None) -> ConfigDict:
    c = ConfigDict()
    c.algorithm = "grpo"
    c.seed = 0
    c.model = model_config(path=EXPORT)
    c.tokenizer = ConfigDict(dict(path=EXPORT, builtin=""))
    c.data = ConfigDict(
        dict(
            train="data/arithmetic/train.jsonl",
            eval="data/arithmetic/eval.jsonl",
            prompt_key="prompt",
            chat=False,
            seq_len=32,  # eval NLL rows of the reference completions (and the MFU estimate)
            eval_prompts=256,  # greedy-decoded and scored before and after training
        )
    )
    c.rollout = ConfigDict(
        dict(max_prompt_len=16, max_new_tokens=8, temperature=0.6, top_k=0, top_p=1.0, old_logprobs="sampler")
    )
    c.grpo = ConfigDict(
        dict(
            num_generations=8,
            mini_batch_size=1024,
            num_iterations=1,
            loss_type="dapo",
            epsilon_low=0.2,
            epsilon_high=0.28,
            beta=0.0,
            scale_rewards=True,
        )
    )
    c.rewards = [
        dict(kind="arithmetic", weight=1.0),
        dict(kind="format", weight=0.1, pattern=r"-?\d+", mode="fullmatch", require_eos=True),
    ]
    c.train = train_config(steps=300, batch_size=128, log_every=1, eval_every=100, checkpoint_every=100)
    c.optimizer = optimizer_config(lr=5e-5, warmup_steps=5, weight_decay=0.0, end_lr_factor=0.5)
    c.mesh = mesh_config()
    if arg == "tiny":  # from scratch, char tokenizer: runs anywhere in seconds (tests)
        c.model = model_config(scratch=tiny_llama(hidden_size=64, intermediate_size=128, num_attention_heads=4))
        c.tokenizer = ConfigDict(dict(path="", builtin="char"))
        c.data.eval_prompts = 16
        c.rollout.update(dict(max_prompt_len=12, max_new_tokens=4, temperature=1.0))
        c.grpo.update(dict(num_generations=4, mini_batch_size=16, num_iterations=2, beta=0.04))
        c.rewards = [
            dict(kind="arithmetic", weight=1.0),
            dict(kind="format", weight=0.5, pattern=r"\d", mode="match", require_eos=False),
        ]
        c.train.update(dict(steps=3, batch_size=8, log_every=1, eval_every=3, checkpoint_every=3))
        c.optimizer.update(dict(lr=3e-3, warmup_steps=0))
    elif arg:
        raise ValueError(f"unknown preset {arg!r}; presets: tiny")
    return c
