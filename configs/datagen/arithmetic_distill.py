"""Distil arithmetic from a teacher: N sampled answers per problem, verified, best-of-N SFT set + pairs.

jaxpt generate-data --config=configs/datagen/arithmetic_distill.py --output=runs/datagen/arith \
    --config.teacher.path=runs/quickstart/export

Problems come from ``jaxpt.data.tasks`` at difficulty levels 1-2 (level 1 weighted low: it has ~155 distinct
problems), never one of the eval prompts. Each of ``sampling.num_samples`` samples is checked by the arithmetic
verifier; the SFT set keeps, per problem, the best verified sample (rejection sampling), and preference pairs
put a verified sample against a wrong one. Presets: ``:small`` (the distillation recipe), ``:tiny`` (tests).
"""

from ml_collections import ConfigDict, config_dict


def get_config(arg: str | None = None) -> ConfigDict:
    c = ConfigDict()
    c.seed = 0
    # Any model `load_any` loads: HF dir, Orbax params dir or a training run's workdir.
    c.teacher = ConfigDict(dict(path="runs/quickstart/export", tokenizer="", name=""))
    c.prompts = ConfigDict(
        dict(
            num_prompts=1024,
            skills=("arithmetic",),  # see jaxpt.datagen.pipeline.SKILLS
            skill_weights=(),  # () = uniform over skills
            levels=(1, 2),
            level_weights=(0.05, 0.95),
            seed_file="",  # a JSONL/Parquet of seed prompts instead of generated ones
            exclude_file="data/arithmetic/eval.jsonl",  # never generate an eval prompt
            chat=False,  # plain-text prompts (the quickstart model is trained without a chat template)
            exact_dedup=True,
            near_dedup_threshold=0.0,  # 0 = off (a+b= prompts are short: near-dedup would merge distinct ones)
        )
    )
    c.sampling = ConfigDict(
        dict(
            num_samples=4,
            temperature=0.8,
            top_k=0,
            top_p=1.0,
            max_new_tokens=6,
            batch_size=256,  # prompt x sample rows per sampler call (and per resumable shard)
            max_prompt_length=16,
        )
    )
    c.scoring = ConfigDict(
        dict(
            verifier=True,  # each prompt's skill verifier -> `correct`
            batch_size=256,  # rows per reward / judge batch (and per resumable shard)
            reward_model="",  # a reward model dir -> `rm_score`
            reward_seq_len=64,  # prompt + completion tokens it reads, kept from the end
            judge="",  # "teacher" (self-judged) or a model path -> `judge_score`
            judge_criteria=("correctness",),
            judge_template="",  # '' = jaxpt.evaluation.evaluate.JUDGE_TEMPLATE
            judge_low=1,
            judge_high=10,
            judge_max_new_tokens=8,
            judge_max_prompt_length=384,
            judge_chat=False,
        )
    )
    c.filters = ConfigDict(
        dict(
            exact_dedup=True,  # repeated (prompt, completion) samples
            near_dedup_threshold=0.0,  # MinHash Jaccard threshold over near_dedup_key; 0 = off
            near_dedup_key="sample",  # sample (prompt + completion) | prompt | completion
            min_chars=1,
            max_chars=8,
            min_tokens=0,
            max_tokens=0,
            format_regex=r"^\d+$",  # the completion is just a number
            format_mode="search",
            require_eos=True,  # drop generations cut off by max_new_tokens
            require_correct=True,  # accuracy filter (SFT set only; pairs need the wrong samples)
            min_reward=config_dict.placeholder(float),  # reward-model score threshold (SFT set)
            min_judge=config_dict.placeholder(float),  # judge score threshold (SFT set)
            balance="none",  # complexity balance: none | equal | cap | proportions
            max_per_level=0,
            proportions=(),  # one weight per prompts.levels
        )
    )
    c.sft = ConfigDict(dict(enabled=True, best_of_n=True, rank_by=("verifier", "reward", "judge", "logprob")))
    c.preferences = ConfigDict(dict(enabled=True, score="verifier", min_margin=0.0))
    c.output = ConfigDict(dict(format="jsonl", keep_samples=True))  # jsonl | parquet
    if arg == "small":
        c.prompts.num_prompts = 1024
    elif arg == "tiny":
        c.prompts.num_prompts = 16
        c.sampling.update(dict(num_samples=2, batch_size=8, max_new_tokens=4))
        c.scoring.batch_size = 8
    elif arg:
        raise ValueError(f"unknown preset {arg!r}; presets: small, tiny")
    return c
