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

from ml_collections import ConfigDict

from jaxpt.training.defaults import mesh_config, model_config, optimizer_config, tiny_llama, train_config


def get_config(arg: str | None = None) -> ConfigDict:
    c = ConfigDict()
    c.algorithm = "rm"
    c.seed = 0
    # The built-in char tokenizer the SFT quickstart uses; a model dir with its own tokenizer files wins
    # when tokenizer.path is empty (see jaxpt/algorithms/reward_model.py).
    c.tokenizer = ConfigDict(dict(path="", builtin="char"))
    c.model = model_config(path="runs/quickstart/export")
    c.model.head = "auto"  # auto | lm (causal LM: new random head) | score (*ForSequenceClassification)
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
    c.rm = ConfigDict(dict(center_coef=0.0, margin_column="margin"))  # margin used when the column exists
    c.train = train_config(steps=600, batch_size=16, log_every=20, eval_every=200, checkpoint_every=200)
    c.optimizer = optimizer_config(lr=1e-4, warmup_steps=20, weight_decay=0.0)
    c.mesh = mesh_config()
    if arg == "tiny":
        c.model.path = ""
        c.model.scratch = tiny_llama(hidden_size=64, intermediate_size=128, num_hidden_layers=2)
        c.train.update(dict(steps=8, batch_size=8, log_every=2, eval_every=4, checkpoint_every=4, peak_flops=1e12))
        c.optimizer.warmup_steps = 2
    elif arg:
        raise ValueError(f"unknown preset {arg!r}; presets: tiny")
    return c
