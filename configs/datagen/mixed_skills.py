"""Several template skills (arithmetic, max, reverse, len, sort) at levels 1-3, verified and level-balanced.

jaxpt generate-data --config=configs/datagen/mixed_skills.py --output=runs/datagen/mixed \
    --config.teacher.path=PATH

Every skill has a verifier (``jaxpt.datagen.prompts.SKILLS``), so the SFT set keeps verified best-of-N samples;
``filters.balance=equal`` then cuts every difficulty level to the size of the smallest, so the set is not
dominated by the easy problems a teacher solves most often. Preference pairs are verified vs wrong samples.
"""

import os

from jaxpt.config import load_config

_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "arithmetic_distill.py")


def get_config(arg: str | None = None):
    c = load_config(_BASE)  # the distillation recipe; every field is in jaxpt.datagen.pipeline.defaults()
    c.prompts.update(dict(num_prompts=600, skills=("arithmetic", "compare", "reverse", "count", "sort")))
    c.prompts.levels = (1, 2, 3)
    c.prompts.level_weights = ()
    c.prompts.near_dedup_threshold = 0.9
    c.sampling.update(dict(num_samples=4, max_new_tokens=16, max_prompt_length=32))
    c.filters.update(dict(max_chars=24, format_regex=r"^[a-z0-9,]+$", balance="equal"))
    if arg:
        raise ValueError(f"unknown preset {arg!r}")
    return c
