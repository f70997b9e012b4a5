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


__all__ = ["mesh_config", "model_config", "optimizer_config", "tiny_llama", "train_config"]
