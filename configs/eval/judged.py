"""Free-text evaluation: reference metrics (BLEU, chrF, ROUGE, token F1), a reward model and a rubric judge.

jaxpt eval --config=configs/eval/judged.py --model=MODEL --output=runs/eval/judged \
    --config.data.path=my_eval.jsonl --config.reward.model=MY_RM --config.judge.model=JUDGE_MODEL

The eval set holds ``prompt`` + ``completion`` (the reference) or ``messages`` (the last assistant turn is the
reference). The reward model scores the model's and the reference completions (``rm_win_rate``); the judge
rates fluency, coherence, relevance and safety from 1 to 10 through its chat template.
"""

import os

from jaxpt.config import load_config

_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "arithmetic.py")


def get_config(arg: str | None = None):
    c = load_config(_BASE)  # every field is in jaxpt.evaluation.evaluate.defaults()
    c.data.chat = True
    c.likelihood.seq_len = 512
    c.likelihood.batch_size = 8
    c.generation.update(
        dict(
            metrics=("token_f1", "bleu", "chrf", "rouge"),
            metrics_tokenizer="13a",  # how bleu / rouge / token_f1 split words: 'zh' Chinese, 'ja-mecab', 'char'
            verifier="",
            max_new_tokens=128,
            batch_size=16,
            max_prompt_length=384,
        )
    )
    c.reward.seq_len = 512
    c.judge.update(dict(model="self", chat=True, max_new_tokens=16, batch_size=16, max_prompt_length=1024))
    if arg:
        raise ValueError(f"unknown preset {arg!r}")
    return c
