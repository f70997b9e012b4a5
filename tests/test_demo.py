"""``jaxpt demo`` end to end on its tiny preset (seconds): every stage runs, and the report is complete.

Accuracy is not asserted here (a few steps of a 1-layer model); the README quotes a real ``make demo`` run.
"""

import json
import os

from jaxpt import cli
from jaxpt.demo import as_plain, exact_reward, is_right, lsd, make_prompt, read_prompt, solve_prompt


def test_task_format_round_trips():
    assert lsd(132, 3) == "231" and lsd(7, 3) == "700"
    assert make_prompt(14, "+", 32, 2) == "41+23="
    assert read_prompt("41+23=") == (14, "+", 32, 2)
    assert solve_prompt("06-82=") == (32, "230")  # 60 - 28
    assert is_right("06-82=", "230") and not is_right("06-82=", "330") and not is_right("06-82=", "23")
    assert as_plain("06-82=", "230") == "60-28=32"
    assert exact_reward(["41+23=", "41+23="], ["640", "641"], [{}, {}]) == [1.0, 0.0]


def test_demo_tiny_writes_table_curves_and_answers(tmp_path, capsys):
    workdir = tmp_path / "demo"
    assert cli.main(["demo", f"--workdir={workdir}", "--preset=tiny", "--examples=3"]) == 0
    out = capsys.readouterr().out

    png = workdir / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"curves: {png}" in out
    summary = (workdir / "summary.md").read_text()
    assert "| stage | metric | before | after | change |" in summary and "| stage | metric |" in out
    data = json.loads((workdir / "summary.json").read_text())
    stages = {r["stage"].split(" ")[1] for r in data["rows"]}
    assert stages == {"SFT", "GRPO"}
    assert all(r["before"] == r["before"] and r["after"] == r["after"] for r in data["rows"])  # no NaN: all logged
    assert len(data["samples"]) == 3
    for s in data["samples"]:  # each printed with its verdict, right or not
        assert s["right"] == is_right(s["prompt"], s["completion"])
        assert s["plain"] in out and ("✓ right" in out or "✗ WRONG" in out)
    for stage in ("sft", "grpo"):
        assert os.path.exists(workdir / stage / "export" / "config.json")
