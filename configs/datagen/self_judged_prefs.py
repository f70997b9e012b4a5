"""Self-judged preference pairs: the teacher samples N answers, then judges each with a rubric prompt.

jaxpt generate-data --config=configs/datagen/self_judged_prefs.py --output=runs/datagen/judged \
    --config.teacher.path=PATH_TO_AN_INSTRUCTION_TUNED_MODEL --config.prompts.seed_file=prompts.jsonl

The judge reply ("Score: 7") is parsed by ``jaxpt.evaluation.judge.parse_judge_score``; unparsable replies
leave the sample unscored (reported, never guessed). Pairs are the best vs the worst judged sample per prompt
with a margin of more than ``preferences.min_margin``; the SFT set keeps samples judged >= ``filters.min_judge``.
A judge needs to follow instructions: the tiny quickstart model will mostly produce unparsable replies.
"""

import os

from jaxpt.config import load_config

_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "arithmetic_distill.py")


def get_config(arg: str | None = None):
    c = load_config(_BASE)  # the distillation recipe; every field is in jaxpt.datagen.pipeline.defaults()
    c.prompts.update(dict(num_prompts=256, skills=("arithmetic", "compare", "reverse", "count", "sort")))
    c.prompts.level_weights = ()
    c.prompts.exclude_file = ""
    c.prompts.chat = True
    c.sampling.update(dict(num_samples=4, temperature=1.0, max_new_tokens=64, max_prompt_length=128, batch_size=64))
    c.scoring.update(
        dict(
            judge="teacher",
            judge_criteria=("correctness", "relevance", "fluency"),
            judge_chat=True,
            judge_max_new_tokens=16,
            batch_size=64,
        )
    )
    c.filters.update(dict(max_chars=512, format_regex="", require_correct=False, min_judge=6.0))
    c.sft.rank_by = ("judge", "logprob")
    c.preferences.update(dict(score="judge", min_margin=1.0))
    if arg:
        raise ValueError(f"unknown preset {arg!r}")
    return c
