"""Synthetic-data filters: planted duplicates / near duplicates, report counts, determinism by seed."""

import json

import pytest

from jaxpt.datagen.filters import (
    ComplexityBalance,
    ExactDedup,
    FilterReport,
    FormatFilter,
    LengthFilter,
    NearDedup,
    ScoreFilter,
    VerifierFilter,
    apply_filters,
    format_reports,
)

BASES = [
    "The quick brown fox jumps over the lazy dog while the farmer watches from the old wooden fence.",
    "Gradient descent updates the parameters in the direction that most rapidly decreases the loss function.",
    "In the summer of 1969 two astronauts walked on the surface of the moon and collected rock samples.",
    "A balanced diet includes vegetables, whole grains, lean proteins and plenty of water every single day.",
    "The library downtown opens at nine in the morning and closes at eight in the evening on weekdays.",
    "Photosynthesis converts sunlight, water and carbon dioxide into glucose and oxygen inside green leaves.",
]
# One-word edits of a long sentence: substitution, insertion, deletion.
EDITS = [
    lambda s: " ".join(s.split()[:4] + ["banana"] + s.split()[5:]),
    lambda s: " ".join(s.split()[:7] + ["really"] + s.split()[7:]),
    lambda s: " ".join(s.split()[:5] + s.split()[6:]),
]


def _planted():
    """6 originals first, then 3 one-word edits of each (18 near duplicates).

    A one-word edit of a ~100-character sentence leaves a character-3-gram Jaccard of 0.79-0.97 with its
    original, while the distinct sentences (and the templated "capital of" rows) stay below 0.56, so 0.7
    separates them.
    """
    rows = [{"id": f"orig{i}", "text": b} for i, b in enumerate(BASES)]
    for k, edit in enumerate(EDITS):
        for i, b in enumerate(BASES):
            assert edit(b) != b
            rows.append({"id": f"dup{i}_{k}", "text": edit(b)})
    return rows


def test_exact_dedup_planted():
    rows = [
        {"prompt": "What is 2+2?", "completion": "4"},
        {"prompt": "what is  2+2? ", "completion": "4"},  # case/whitespace variant -> duplicate
        {"prompt": "What is 2+2?", "completion": "Four"},  # different completion -> kept
        {"prompt": "What is 3+3?", "completion": "6"},
        {"prompt": "What is 3+3?", "completion": "6"},  # verbatim duplicate
        {"prompt": "What is 3+3?\n", "completion": "6 "},
    ]
    kept, report = ExactDedup()(rows)
    assert kept == [rows[0], rows[2], rows[3]]
    assert report == FilterReport("exact_dedup", 3, {"exact_duplicate": 3}, 3)
    # on the prompt alone, the "Four" row is a duplicate too; case-sensitive mode keeps the lowercase variant
    assert ExactDedup(keys="prompt")(rows)[1].removed == 4
    assert ExactDedup(lowercase=False)(rows)[1].removed == 2


@pytest.mark.parametrize("unit,ngram,threshold", [("char", 3, 0.7), ("char", 5, 0.7), ("word", 2, 0.7)])
def test_near_dedup_planted(unit, ngram, threshold):
    rows = _planted()
    f = NearDedup("text", threshold=threshold, ngram=ngram, unit=unit, seed=1)
    kept, report = f(rows)
    assert [r["id"] for r in kept] == [f"orig{i}" for i in range(len(BASES))]
    assert report.removed == 18 and report.kept == 6 and report.reasons == {"near_duplicate": 18}
    # each duplicate points at its own original (row index i)
    for idx, j in f.duplicate_of.items():
        assert rows[idx]["id"].startswith(f"dup{j}_")


def test_near_dedup_keeps_distinct_and_agrees_with_brute_force():
    # Templated but distinct rows must survive; compare with exact greedy Jaccard dedup (no LSH).
    rows = [
        {"text": f"The capital of {c} is {k}, a city known for its {t}."}
        for c, k, t in [
            ("France", "Paris", "museums"),
            ("Spain", "Madrid", "plazas"),
            ("Italy", "Rome", "ruins"),
            ("Japan", "Tokyo", "trains"),
            ("Egypt", "Cairo", "pyramids"),
            ("Peru", "Lima", "cuisine"),
        ]
    ] + _planted()
    f = NearDedup("text", threshold=0.7, seed=0)
    kept, report = f(rows)
    sets = [frozenset(f.shingles(r["text"])) for r in rows]
    brute: list[int] = []
    for i, s in enumerate(sets):
        if all(len(s & sets[j]) / len(s | sets[j]) < 0.7 for j in brute):
            brute.append(i)
    assert kept == [rows[i] for i in brute]
    assert len(kept) == 12 and report.removed == 18


def test_near_dedup_deterministic_by_seed():
    rows = _planted()
    a = NearDedup("text", threshold=0.7, seed=3)
    b = NearDedup("text", threshold=0.7, seed=3)
    c = NearDedup("text", threshold=0.7, seed=4)
    assert a(rows) == b(rows)
    sig = lambda f: f.signature(f._hash(s) for s in f.shingles(BASES[0]))  # noqa: E731
    assert (sig(a) == sig(b)).all() and not (sig(a) == sig(c)).all()
    assert c(rows)[0] == a(rows)[0]  # planted duplicates are found whatever the seed


def test_near_dedup_missing_and_empty():
    rows = [{"text": ""}, {"other": 1}, {"text": None}, {"text": "   "}]
    kept, report = NearDedup("text")(rows)
    assert kept == [rows[0], rows[3]] and report.reasons == {"missing_text": 2}


def test_length_filter():
    rows = [{"c": ""}, {"c": "short"}, {"c": "a reasonable answer here"}, {"c": "x" * 50}, {}]
    kept, rep = LengthFilter("c", min_chars=1, max_chars=40)(rows)
    assert kept == rows[1:3]
    assert rep.reasons == {"too_short_chars": 1, "too_long_chars": 1, "missing_c": 1}
    # whitespace tokens by default; a tokenizer callable (here bytes) or HF-style {"input_ids": ...}
    assert LengthFilter("c", min_tokens=2)(rows)[0] == [rows[2]]
    byte_tok = lambda t: list(t.encode())  # noqa: E731
    assert LengthFilter("c", max_tokens=5, tokenizer=byte_tok)(rows)[0] == rows[:2]
    hf_tok = lambda t: {"input_ids": t.split()}  # noqa: E731
    kept, rep = LengthFilter("c", min_tokens=1, max_tokens=3, tokenizer=hf_tok)(rows)
    assert kept == [rows[1], rows[3]] and rep.reasons["too_short_tokens"] == 1
    # chat-style message lists are measured on their joined contents
    msgs = {"c": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    assert LengthFilter("c", min_chars=8, max_chars=8)([msgs])[0] == [msgs]


def test_format_filter():
    rows = [{"a": "The answer is \\boxed{42}."}, {"a": "I think 42"}, {"a": "\\boxed{}"}]
    kept, rep = FormatFilter("a", r"\\boxed\{[^}]+\}")(rows)
    assert kept == rows[:1] and rep.removed == 2 and rep.reasons == {"format_mismatch": 2}
    assert FormatFilter("a", r"\d+", mode="fullmatch")([{"a": "42"}, {"a": "42!"}])[1].removed == 1

    def is_json(t):
        try:
            json.loads(t)
            return True
        except ValueError:
            return False

    kept, _ = FormatFilter("a", is_json)([{"a": '{"x": 1}'}, {"a": "{x: 1}"}])
    assert kept == [{"a": '{"x": 1}'}]


def test_verifier_and_score_filters():
    rows = [
        {"q": "2+2", "answer": "4", "score": 0.9},
        {"q": "3*3", "answer": "6", "score": 0.2},
        {"q": "1/0", "answer": "inf", "score": None},
        {"q": "5-1", "answer": "4", "score": 0.5},
    ]

    def check(row):
        return str(eval(row["q"])).rstrip("0").rstrip(".") == row["answer"]  # noqa: S307 (test data)

    kept, rep = VerifierFilter(check)(rows)
    assert kept == [rows[0], rows[3]]
    assert rep == FilterReport("verifier", 2, {"wrong_answer": 1, "verifier_error": 1}, 2)
    _, rep = VerifierFilter(lambda r: (r["answer"] == "4", "not_four"))(rows)
    assert rep.reasons == {"not_four": 2}

    kept, rep = ScoreFilter("score", min_score=0.5)(rows)
    assert kept == [rows[0], rows[3]] and rep.reasons == {"low_score": 1, "missing_score": 1}
    assert ScoreFilter("score", min_score=0.0, max_score=0.6)(rows)[0] == [rows[1], rows[3]]


def _levels(counts):
    return [{"i": i, "difficulty": lv} for lv, n in counts.items() for i in range(n)]


def test_complexity_balance_caps_and_proportions():
    rows = _levels({"easy": 100, "medium": 50, "hard": 10})
    kept, rep = ComplexityBalance(max_per_level=30, seed=0)(rows)
    per = lambda rs: {lv: sum(r["difficulty"] == lv for r in rs) for lv in ("easy", "medium", "hard")}  # noqa: E731
    assert per(kept) == {"easy": 30, "medium": 30, "hard": 10}
    assert rep.removed == 90 and rep.reasons == {"over_quota:easy": 70, "over_quota:medium": 20}
    assert kept == [r for r in rows if r in kept]  # original order kept
    # default: equal counts (the smallest level's size)
    assert per(ComplexityBalance()(rows)[0]) == {"easy": 10, "medium": 10, "hard": 10}
    # proportions 5:3:2 limited by the 10 hard rows: largest N with floor(0.2 N) <= 10 is 54
    kept, _ = ComplexityBalance(proportions={"easy": 0.5, "medium": 0.3, "hard": 0.2})(rows)
    assert per(kept) == {"easy": 27, "medium": 16, "hard": 10}
    # a level without weight is dropped; missing level key removed with a reason
    kept, rep = ComplexityBalance(proportions={"easy": 1, "medium": 1})(rows + [{"i": -1}])
    assert per(kept) == {"easy": 50, "medium": 50, "hard": 0}
    assert rep.reasons["over_quota:hard"] == 10 and rep.reasons["missing_difficulty"] == 1


def test_complexity_balance_deterministic_by_seed():
    rows = _levels({"easy": 40, "hard": 8})
    a = ComplexityBalance(max_per_level=8, seed=7)(rows)
    assert a == ComplexityBalance(max_per_level=8, seed=7)(rows)
    assert a[0] != ComplexityBalance(max_per_level=8, seed=8)(rows)[0]
    # a level's selection does not depend on the other levels present
    easy_only = [r for r in rows if r["difficulty"] == "easy"]
    alone = ComplexityBalance(max_per_level=8, seed=7)(easy_only)[0]
    assert [r for r in a[0] if r["difficulty"] == "easy"] == alone


def test_apply_filters_chain_reports():
    rows = _planted() + [dict(r) for r in _planted()[:3]] + [{"id": "tiny", "text": "ok"}]
    out, reports = apply_filters(
        rows,
        [
            ExactDedup(keys=("text",)),
            NearDedup("text", threshold=0.7),
            LengthFilter("text", min_chars=10),
        ],
    )
    assert [r["id"] for r in out] == [f"orig{i}" for i in range(6)]
    assert [(r.name, r.removed, r.kept) for r in reports] == [
        ("exact_dedup", 3, 25),
        ("near_dedup", 18, 7),
        ("length", 1, 6),
    ]
    assert sum(r.removed for r in reports) == len(rows) - len(out)
    table = format_reports(reports)
    assert "| near_dedup | 18 | 7 | near_duplicate: 18 |" in table
    expected = {"name": "length", "removed": 1, "kept": 6, "reasons": {"too_short_chars": 1}}
    assert reports[2].to_dict() == expected
