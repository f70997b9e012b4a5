"""Evaluate a model on the shipped arithmetic eval split: likelihood + greedy-generation metrics.

jaxpt eval --config=configs/eval/arithmetic.py --model=runs/quickstart/export --output=runs/eval/quickstart

Sections (each can be switched off): ``likelihood`` (loss / perplexity / token accuracy on the reference
completions), ``generation`` (greedy completions scored by exact match, token F1, chrF and the arithmetic
verifier), ``reward`` (a reward model's score and win rate against the references), ``judge`` (a rubric judge,
``"self"`` = the evaluated model). Presets: ``:quick`` (64 examples, for tests).
"""

from ml_collections import ConfigDict


def get_config(arg: str | None = None) -> ConfigDict:
    c = ConfigDict()
    c.seed = 0
    c.tokenizer = ""  # '' = the model's own tokenizer files
    c.data = ConfigDict(
        dict(
            path="data/arithmetic/eval.jsonl",
            split="train",
            max_examples=0,  # 0 = all
            prompt_key="prompt",
            reference_key="completion",
            chat=False,
        )
    )
    c.likelihood = ConfigDict(dict(enabled=True, seq_len=32, batch_size=64, completion_only=True))
    c.generation = ConfigDict(
        dict(
            enabled=True,
            metrics=("exact_match", "token_f1", "chrf"),  # any of jaxpt.evaluation.metrics.METRICS
            verifier="arithmetic",  # a datagen skill name, 'exact', or '' for none
            max_new_tokens=8,
            temperature=0.0,
            top_k=0,
            top_p=1.0,
            batch_size=128,
            max_prompt_length=16,
            strip=True,
        )
    )
    # seq_len: tokens of prompt + completion the reward model reads, kept from the end (jaxpt.rewards scorer)
    c.reward = ConfigDict(
        dict(model="", tokenizer="", reference="", reference_key="completion", seq_len=64, batch_size=64)
    )
    c.judge = ConfigDict(
        dict(
            model="",  # '' = off, 'self' = the evaluated model, or a path
            tokenizer="",
            criteria=("fluency", "coherence", "relevance", "safety"),
            template="",
            low=1,
            high=10,
            max_new_tokens=8,
            batch_size=64,
            max_prompt_length=384,
            chat=False,
        )
    )
    c.report = ConfigDict(dict(title="", tensorboard=True))
    if arg == "quick":
        c.data.max_examples = 64
        c.generation.batch_size = 64
    elif arg:
        raise ValueError(f"unknown preset {arg!r}; presets: quick")
    return c
