"""Distil arithmetic from a teacher: N sampled answers per problem, verified, best-of-N SFT set + pairs.

jaxpt generate-data --config=configs/datagen/arithmetic_distill.py --output=runs/datagen/arith \
    --config.teacher.path=runs/quickstart/export

Problems come from ``jaxpt.data.tasks`` at difficulty levels 1-2 (level 1 weighted low: it has ~155 distinct
problems), never one of the eval prompts. Each of ``sampling.num_samples`` samples is checked by the arithmetic
verifier; the SFT set keeps, per problem, the best verified sample (rejection sampling), and preference pairs
put a verified sample against a wrong one. Presets: ``:small`` (the distillation recipe), ``:tiny`` (tests).
"""

from ml_collections import ConfigDict

from jaxpt.datagen.pipeline import defaults


def get_config(arg: str | None = None) -> ConfigDict:
    c = defaults()  # every field, documented there
    c.teacher.path = "runs/quickstart/export"
    c.prompts.update(
        dict(
            num_prompts=1024,
            levels=(1, 2),
            level_weights=(0.05, 0.95),
            exclude_file="data/arithmetic/eval.jsonl",  # never generate an eval prompt
            # plain-text prompts (the quickstart model is trained without a chat template); near-dedup stays
            # off: a+b= prompts are short, it would merge distinct ones
        )
    )
    c.sampling.update(dict(num_samples=4, temperature=0.8, max_new_tokens=6, batch_size=256, max_prompt_length=16))
    c.scoring.update(dict(batch_size=256, reward_seq_len=64, judge_max_prompt_length=384))
    c.filters.update(
        dict(
            min_chars=1,
            max_chars=8,
            format_regex=r"^\d+$",  # the completion is just a number
            require_eos=True,  # drop generations cut off by max_new_tokens
        )
    )
    if arg == "small":
        c.prompts.num_prompts = 1024
    elif arg == "tiny":
        c.prompts.num_prompts = 16
        c.sampling.update(dict(num_samples=2, batch_size=8, max_new_tokens=4))
        c.scoring.batch_size = 8
    elif arg:
        raise ValueError(f"unknown preset {arg!r}; presets: small, tiny")
    return c
