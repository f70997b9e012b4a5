"""Session-wide test setup.

The suite runs on 8 fake CPU devices so sharding code paths (meshes such as (2, 2, 2)) are exercised without
accelerators. XLA reads ``XLA_FLAGS`` once, when the backend initialises, so this must happen here — pytest
imports conftest.py before any test module (and therefore before anything touches jax).
"""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()


# ----------------------------------------------------------------------------------------------------------
# torch is a parity reference only (Hugging Face's PyTorch models). A test that needs it carries
# ``@pytest.mark.requires_torch`` (a whole module: ``pytestmark``) and imports torch inside the test; where torch is
# not installed (the newest-stack run, Makefile) exactly those tests are skipped, and an unmarked test that reaches
# for torch fails there, so the marks stay complete. ``pytest -m requires_torch`` selects them.

import importlib.util  # noqa: E402

import pytest  # noqa: E402

HAS_TORCH = importlib.util.find_spec("torch") is not None


def pytest_configure(config):
    config.addinivalue_line("markers", "requires_torch: needs torch (the parity reference); skipped without it")


def pytest_collection_modifyitems(config, items):
    if HAS_TORCH:
        return
    skip = pytest.mark.skip(reason="needs torch (the parity reference), not installed in this environment")
    for item in items:
        if "requires_torch" in item.keywords:
            item.add_marker(skip)


# ----------------------------------------------------------------------------------------------------------
# Data-layer fixtures (shared by tests/test_data_*.py and anything needing a real tokenizer offline).


@pytest.fixture(scope="session")
def char_tokenizer_dir(tmp_path_factory):
    """The tiny char-level tokenizer saved once per session (reload with AutoTokenizer / load_tokenizer)."""
    from jaxpt.data.tokenizer import build_char_tokenizer

    out = tmp_path_factory.mktemp("char_tokenizer")
    build_char_tokenizer(out)
    return str(out)


@pytest.fixture(scope="session")
def char_tokenizer(char_tokenizer_dir):
    """The char-level tokenizer as reloaded from disk, i.e. exactly what demos and the quickstart use."""
    from jaxpt.data.tokenizer import load_tokenizer

    return load_tokenizer(char_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_sft_examples():
    """The first 64 arithmetic training examples at seq_len 64 (char tokenizer), tokens clipped to the vocab of
    ``tests.tiny_models.tiny_llama_config`` (96)."""
    import numpy as np

    from jaxpt.data.sft import build_sft_dataset
    from jaxpt.data.tokenizer import build_char_tokenizer

    examples = build_sft_dataset("data/arithmetic/train.jsonl", build_char_tokenizer(), seq_len=64)[:64]
    return [{**e, "tokens": np.minimum(e["tokens"], 95)} for e in examples]
