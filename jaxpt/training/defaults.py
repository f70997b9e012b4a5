"""Defaults of the config sections every algorithm shares (train, model, optimizer, mesh, ...); experiment
presets live in ``configs/``."""

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
            remat="none",  # none | full | dots | dots_no_batch | offload (layer input + q/k/v/out to host memory)
            scan_layers=False,
            attention="auto",  # auto (splash on TPU, else xla) | xla | splash: jaxpt/models/attention.py
        )
    )


def base_config(algorithm: str) -> ConfigDict:
    """The sections every algorithm's config has; each algorithm's ``defaults()`` adds its own."""
    c = ConfigDict()
    c.algorithm = algorithm
    c.seed = 0
    # path: a tokenizer dir ('' = the model dir's own); builtin: 'char' (jaxpt.data.tokenizer) when no path
    c.tokenizer = ConfigDict(dict(path="", builtin=""))
    c.model = model_config()
    c.train = train_config()
    c.optimizer = optimizer_config()
    c.mesh = mesh_config()
    # A `jaxpt eval` config run every N steps, e.g. --config.eval_hook.config=configs/eval/arithmetic.py:quick
    c.eval_hook = ConfigDict(dict(config="", every=0))
    return c


# Paths whose contents are free-form (a HF config.json of a from-scratch model; the list of reward specs):
# `with_defaults` takes them as given.
OPEN_FIELDS = ("model.scratch", "rewards")


__all__ = [
    "OPEN_FIELDS",
    "base_config",
    "mesh_config",
    "model_config",
    "optimizer_config",
    "tiny_llama",
    "train_config",
]
