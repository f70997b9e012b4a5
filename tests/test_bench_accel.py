"""``tools/bench_accel.py``, the prepared accelerator benchmark, at its tiny size on CPU: every case runs in one
process and the JSON it writes has the fields the Llama-3.2-1B run on a GPU or TPU will be read for."""

import importlib.util
import json
import math
import pathlib

import jax
import pytest

TOOLS = pathlib.Path(__file__).resolve().parent.parent / "tools"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def accel():
    return _load("bench_accel")


def test_tiny_run_writes_every_case(accel, tmp_path):
    out = tmp_path / "accel.json"
    # quick_compile: XLA's optimisations off, a third of the compile time that is most of this test's
    report = accel.run("tiny", steps=1, json_path=str(out), quick_compile=True)
    assert not jax.config.values["jax_disable_most_optimizations"]  # restored for the tests after this one
    assert json.loads(out.read_text()) == json.loads(json.dumps(report)) and not report["xla_optimizations"]
    assert report["device_kind"] == jax.devices()[0].device_kind and report["platform"] == "cpu"
    assert report["num_devices"] == jax.device_count() and report["versions"]["jax"] == jax.__version__
    assert report["size"] == "tiny" and report["model"]["remat"] == "full" and report["model"]["num_params"] > 0
    assert report["peak_flops_per_chip"] is None  # no published peak for a CPU: MFU is null, not a guess
    cases = report["cases"]
    assert set(cases) == {"sft", "dpo", "grpo"} and not [c for c in cases.values() if "error" in c]
    for key, case in (("tokens_per_s", "sft"), ("pairs_per_s", "dpo"), ("samples_per_s", "grpo")):
        row = cases[case]
        assert math.isfinite(row[key]) and row[key] > 0, (case, row)
        assert row["median_s"] > 0 and row["compile_s"] > 0
    assert cases["sft"]["mfu"] is None and cases["dpo"]["mfu"] is None and cases["grpo"]["update_mfu"] is None
    sft, dpo = cases["sft"], cases["dpo"]
    assert sft["layout"] == "8 rows of 64 tokens" and sft["tokens_per_step"] == 8 * 64
    assert dpo["layout"] == "8 pairs: prompt 32 + 2 x 32 completion tokens" and "did_not_fit" not in dpo
    assert math.isfinite(sft["loss"]) and math.isfinite(dpo["loss"]) and sft["model_flops_per_step"] > 0
    grpo = cases["grpo"]
    assert grpo["rows"] == 16 and grpo["new_tokens"] == 16 and grpo["rollout_s"] > 0 and grpo["update_s"] > 0


def test_mfu_peaks_come_from_published_tables(accel):
    assert accel.chip_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert accel.chip_peak("NVIDIA H200") == accel.chip_peak("NVIDIA GH200 480GB") == 989e12
    assert accel.chip_peak("NVIDIA A100-SXM4-80GB") == accel.chip_peak("NVIDIA A100-PCIE-40GB") == 312e12
    assert accel.chip_peak("NVIDIA H100 PCIe") is None and accel.chip_peak("cpu") is None
    assert accel.chip_peak("TPU v5 lite") == 197e12  # jaxpt.training.plan.TPU_PEAKS


def test_the_1b_size_is_llama_3_2_1b(accel):
    from jaxpt.models.config import ModelConfig

    config = ModelConfig.from_hf(dict(accel.LLAMA_3_2_1B), **accel.MODEL_OPTIONS)
    assert 1.23e9 < config.num_params() < 1.24e9  # Llama-3.2-1B: 1,235,814,400 parameters (tied embeddings)
    assert accel.SIZES["1b"].sft == (8, 4096) and accel.SIZES["1b"].dpo == (4, 4096)
