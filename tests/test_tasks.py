import json
import os

import numpy as np
import pytest

from jaxpt.data.tasks import (
    check_answer,
    make_arithmetic_examples,
    make_preference_pairs,
    parse_answer,
    solve,
    wrong_answer,
)

DATA = "data/arithmetic"


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_examples_are_correct_and_deterministic():
    examples = make_arithmetic_examples(300, seed=0, levels=(1, 2, 3))
    assert examples == make_arithmetic_examples(300, seed=0, levels=(1, 2, 3))
    assert examples != make_arithmetic_examples(300, seed=1, levels=(1, 2, 3))
    assert len({e["prompt"] for e in examples}) == 300
    for e in examples:
        a, b = (int(x) for x in e["prompt"][:-1].replace("+", " ").replace("-", " ").split())
        assert len(str(a)) == e["difficulty"] and len(str(b)) <= e["difficulty"]
        assert e["answer"] == solve(e["prompt"]) >= 0 and e["completion"] == str(e["answer"])
        assert check_answer(e["prompt"], e["completion"])
    assert {e["difficulty"] for e in examples} == {1, 2, 3}


def test_exclude_levels_and_exhaustion():
    held = {e["prompt"] for e in make_arithmetic_examples(50, seed=0, levels=(1,))}
    rest = make_arithmetic_examples(100, seed=1, levels=(1,), exclude=held)
    assert not held & {e["prompt"] for e in rest}
    with pytest.raises(ValueError, match="distinct level-1"):
        make_arithmetic_examples(200, seed=0, levels=(1,))  # only 155 distinct level-1 problems
    assert len(make_arithmetic_examples(200, seed=0, levels=(1,), unique=False)) == 200
    with pytest.raises(ValueError, match="levels"):
        make_arithmetic_examples(1, seed=0, levels=(4,))


def test_check_answer():
    assert check_answer("17+25=", "42")
    assert check_answer("17+25=", " 42")
    assert check_answer("17+25=", "42<|end|> and more")
    assert not check_answer("17+25=", "420")
    assert not check_answer("17+25=", "41")
    assert not check_answer("17+25=", "")
    assert not check_answer("17+25=", "forty-two")
    assert check_answer("3-3=", "0") and check_answer("3-5=", "-2")
    assert parse_answer("-7x") == -7 and parse_answer("x7") is None
    with pytest.raises(ValueError, match="not an arithmetic prompt"):
        solve("hello")


def test_wrong_answers_are_plausible():
    rng = np.random.default_rng(0)
    for answer in [0, 5, 9, 10, 42, 99, 100, 198]:
        for _ in range(20):
            w = wrong_answer(answer, rng)
            assert w != answer and w >= 0
            assert abs(w - answer) == 1 or len(str(w)) == len(str(answer))


def test_preference_pairs():
    pairs = make_preference_pairs(100, seed=3)
    assert pairs == make_preference_pairs(100, seed=3)
    for p in pairs:
        assert check_answer(p["prompt"], p["chosen"]) and not check_answer(p["prompt"], p["rejected"])


def test_shipped_data_files():
    train, evals = read_jsonl(f"{DATA}/train.jsonl"), read_jsonl(f"{DATA}/eval.jsonl")
    prefs_train, prefs_eval = read_jsonl(f"{DATA}/prefs_train.jsonl"), read_jsonl(f"{DATA}/prefs_eval.jsonl")
    assert len(train) == 4000 and len(evals) == 200 and len(prefs_train) == 2000 and len(prefs_eval) == 200
    eval_prompts = {r["prompt"] for r in evals}
    assert not eval_prompts & {r["prompt"] for r in train}
    assert not eval_prompts & {r["prompt"] for r in prefs_train}
    assert {r["difficulty"] for r in train} == {1, 2}
    assert all(check_answer(r["prompt"], r["completion"]) for r in train + evals)
    assert all(not check_answer(r["prompt"], r["rejected"]) for r in prefs_train + prefs_eval)
    total = sum(os.path.getsize(os.path.join(DATA, f)) for f in os.listdir(DATA))
    assert total < 1 << 20


def test_generator_script_reproduces_shipped_files(tmp_path):
    from tools.make_arithmetic_data import main

    main(["--out", str(tmp_path)])
    for name in ("train.jsonl", "eval.jsonl", "prefs_train.jsonl", "prefs_eval.jsonl"):
        with open(os.path.join(DATA, name), "rb") as shipped, open(tmp_path / name, "rb") as fresh:
            assert shipped.read() == fresh.read(), name
