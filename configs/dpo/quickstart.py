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

from ml_collections import ConfigDict

from jaxpt.algorithms.dpo import dpo_config
from jaxpt.training.defaults import mesh_config, model_config, optimizer_config, tiny_llama, train_config


def get_config(arg: str | None = None) -> ConfigDict:
    c = ConfigDict()
    c.algorithm = "dpo"
    c.seed = 0
    # The built-in char tokenizer the SFT quickstart uses; a model dir with its own tokenizer files wins
    # when tokenizer.path is empty (see jaxpt/algorithms/reward_model.py).
    c.tokenizer = ConfigDict(dict(path="", builtin="char"))
    c.model = model_config(path="runs/quickstart/export")
    c.data = ConfigDict(
        dict(
            train="data/arithmetic/prefs_train.jsonl",
            eval="data/arithmetic/prefs_eval.jsonl",
            eval_split="test",  # only used when eval is a save_to_disk DatasetDict
            seq_len=16,  # prompt + completion + BOS/EOS of the arithmetic pairs is at most 11 tokens
            max_prompt_length=0,  # 0 = no separate limit
            max_completion_length=0,
            chat=False,  # True: string prompts go through the chat template as one user turn
        )
    )
    # loss_type: sigmoid | robust | ipo | hinge | simpo | orpo; reference_path: "" = the initial policy.
    c.dpo = dpo_config(loss_type="sigmoid", beta=0.1, precompute_reference=False)
    c.train = train_config(steps=300, batch_size=16, log_every=10, eval_every=100, checkpoint_every=100)
    c.optimizer = optimizer_config(lr=1e-4, warmup_steps=10, weight_decay=0.0)
    c.mesh = mesh_config()
    if arg == "tiny":
        c.model.path = ""
        c.model.scratch = tiny_llama(hidden_size=64, intermediate_size=128, num_hidden_layers=2)
        c.train.update(dict(steps=8, batch_size=8, log_every=2, eval_every=4, checkpoint_every=4, peak_flops=1e12))
        c.optimizer.warmup_steps = 2
    elif arg:
        raise ValueError(f"unknown preset {arg!r}; presets: tiny")
    return c
