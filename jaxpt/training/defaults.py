"""Config sections shared by every algorithm's config file in `configs/` (big_vision's `common.py`)."""

from ml_collections import ConfigDict

from jaxpt.sharding import DEFAULT_RULES
from jaxpt.training.optimizer import optimizer_config


def mesh_config(data: int = -1, fsdp: int = 1, tensor: int = 1) -> ConfigDict:
    """Mesh sizes (-1 = the remaining devices) and the one logical-axis rules table."""
    return ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor, rules=[[name, axes] for name, axes in DEFAULT_RULES]))


def train_config(**overrides) -> ConfigDict:
    cfg = ConfigDict(
        dict(
            steps=100,
            batch_size=16,
            grad_accum_steps=1,
            log_every=10,
            eval_every=50,
            checkpoint_every=50,
            keep_checkpoints=2,
            keep_best=0,
            best_metric="",
            best_mode="min",
            export_hf=True,
            loss_chunk_size=0,  # tokens per block of the LM-head loss; 0 = auto (~4M logits a block, see sft.py)
            peak_flops=0.0,  # 0 = measure a matmul peak at start-up, for MFU
            # Which parameters train (jaxpt/training/trainable.py): regexes fully matching '/'-joined parameter
            # paths ("embed/embedding", "layers_0/mlp/up/kernel", "lm_head/kernel"; PPO: "policy/…", "value/…";
            # with model.scan_layers one stacked leaf per weight, "layers/mlp/up/kernel"). A parameter trains if
            # a `trainable` pattern matches it and no `frozen` one does; a pattern matching nothing is an error.
            # Frozen parameters get no gradients and no optimizer state. E.g. frozen=("embed/.*",).
            trainable=(".*",),
            frozen=(),
        )
    )
    cfg.update(overrides)
    return cfg


def tiny_llama(**overrides) -> ConfigDict:
    """A from-scratch Llama-style model small enough for 2 CPU cores (vocab comes from the tokenizer)."""
    cfg = ConfigDict(
        dict(
            model_type="llama",
            hidden_size=128,
            intermediate_size=384,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            tie_word_embeddings=True,
        )
    )
    cfg.update(overrides)
    return cfg


def model_config(path: str = "", scratch: ConfigDict | None = None) -> ConfigDict:
    return ConfigDict(
        dict(
            path=path,
            scratch=scratch if scratch is not None else tiny_llama(),
            dtype="float32",
            param_dtype="float32",
            remat="none",
            scan_layers=False,
        )
    )


def arithmetic_rl_config(algorithm: str, export: str = "runs/quickstart/export") -> ConfigDict:
    """What the PPO and GRPO arithmetic configs share: the SFT export as policy (and reference), the shipped
    arithmetic prompts, short rollouts at temperature 0.6, and the verifier + format rewards. Each config adds
    its algorithm section, ``train`` and ``optimizer``."""
    c = ConfigDict()
    c.algorithm = algorithm
    c.seed = 0
    c.model = model_config(path=export)
    c.tokenizer = ConfigDict(dict(path=export, builtin=""))
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
    c.rewards = [
        dict(kind="arithmetic", weight=1.0),
        dict(kind="format", weight=0.1, pattern=r"-?\d+", mode="fullmatch", require_eos=True),
    ]
    c.mesh = mesh_config()
    return c


def arithmetic_rl_tiny(c: ConfigDict) -> ConfigDict:
    """The shared part of the ``:tiny`` presets: a from-scratch model and char tokenizer, tiny rollouts, a
    denser format reward, 3 steps at a high learning rate (runs anywhere in seconds: tests)."""
    c.model = model_config(scratch=tiny_llama(hidden_size=64, intermediate_size=128, num_attention_heads=4))
    c.tokenizer = ConfigDict(dict(path="", builtin="char"))
    c.data.eval_prompts = 16
    c.rollout.update(dict(max_prompt_len=12, max_new_tokens=4, temperature=1.0))
    c.rewards = [
        dict(kind="arithmetic", weight=1.0),
        dict(kind="format", weight=0.5, pattern=r"\d", mode="match", require_eos=False),
    ]
    c.train.update(dict(steps=3, log_every=1, eval_every=3, checkpoint_every=3))
    c.optimizer.update(dict(lr=3e-3, warmup_steps=0))
    return c


__all__ = [
    "arithmetic_rl_config",
    "arithmetic_rl_tiny",
    "mesh_config",
    "model_config",
    "optimizer_config",
    "tiny_llama",
    "train_config",
]
