"""Evaluation metrics against hand-computed values and the reference libraries; reports and TensorBoard."""

import importlib.util
import json
import unicodedata
import warnings

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from jaxpt.errors import UserError
from jaxpt.evaluation.evaluate import _reference_metrics, defaults, evaluate_params
from jaxpt.evaluation.metrics import (
    METRICS,
    MetricTokenizationWarning,
    bleu,
    chrf,
    classification_prf,
    compute_generation_metrics,
    exact_match,
    normalize_answer,
    rouge,
    token_f1,
    win_rate,
)
from jaxpt.evaluation.report import write_report
from jaxpt.utils.tensorboard import SummaryWriter, read_scalars

HYPS = [
    "the cat sat on the mat",
    "a quick brown fox jumped over the dog",
    "hello there general kenobi",
    "machine translation is hard",
]
REFS = [
    "the cat is sitting on the mat",
    "the quick brown fox jumps over the lazy dog",
    "hello there, general kenobi!",
    "automatic translation is difficult",
]
REFS2 = [
    "a cat sat on a mat",
    "a fast brown fox leaped over the dog",
    "hi general kenobi",
    "translation by machine is hard",
]


def test_normalize_answer():
    assert normalize_answer("  The  Eiffel-Tower. ") == "eiffeltower"
    assert normalize_answer("An apple, a pear and THE plum!") == "apple pear and plum"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words


def test_exact_match():
    preds = ["The cat.", "a dog", "bird"]
    refs = ["cat", ["Dog!", "puppy"], "fish"]  # 1st matches after normalisation, 2nd matches a second ref
    assert exact_match(preds, refs) == pytest.approx(2 / 3)
    assert exact_match(["cat", "x"], ["cat", "X"], normalize=False) == 0.5
    with pytest.raises(ValueError):
        exact_match(["a"], ["a", "b"])


def test_classification_prf_hand_computed():
    refs = ["pos", "pos", "pos", "neg", "neg", "neu"]
    preds = ["pos", "pos", "neg", "neg", "pos", "pos"]
    # pos: TP=2 (idx 0,1), predicted 4 times, 3 gold -> P=1/2, R=2/3, F1=2*(1/2)(2/3)/(7/6)=4/7
    # neg: TP=1 (idx 3), predicted 2 times, 2 gold -> P=1/2, R=1/2, F1=1/2
    # neu: never predicted (P=0 by zero-division rule), 1 gold -> R=0, F1=0
    # macro: P=(1/2+1/2+0)/3=1/3, R=(2/3+1/2+0)/3=7/18, F1=(4/7+1/2+0)/3=5/14; accuracy 3/6
    m = classification_prf(preds, refs)
    assert m == pytest.approx({"precision": 1 / 3, "recall": 7 / 18, "f1": 5 / 14, "accuracy": 0.5})
    # micro over all labels of single-label data: every error is one FP and one FN -> P=R=F1=accuracy
    m = classification_prf(preds, refs, average="micro")
    assert m == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "accuracy": 0.5})
    # micro over {pos, neg}: TP=3, predicted 4+2=6, gold 3+2=5 -> P=1/2, R=3/5, F1=2(.5)(.6)/1.1=6/11
    m = classification_prf(preds, refs, labels=["pos", "neg"], average="micro")
    assert m == pytest.approx({"precision": 0.5, "recall": 0.6, "f1": 6 / 11, "accuracy": 0.5})
    # normalize strips/lowercases generated labels
    assert classification_prf([" POS\n", "neg"], ["pos", "neg"], normalize=True)["f1"] == 1.0
    with pytest.raises(ValueError):
        classification_prf(preds, refs, average="weighted")


def test_token_f1_hand_computed():
    preds = ["the cat sat on the mat", "hello hello world", ""]
    refs = ["a cat sat on a hat", "hello world world", ""]
    # 1: {cat sat on mat} vs {cat sat on hat}: 3 common of 4 and 4 -> P=R=F1=3/4
    # 2: {hello:2, world:1} vs {hello:1, world:2}: overlap min counts = 2 -> P=R=F1=2/3
    # 3: both empty -> 1 (SQuAD convention)
    m = token_f1(preds, refs)
    expected = (3 / 4 + 2 / 3 + 1) / 3
    assert m == pytest.approx({"precision": expected, "recall": expected, "f1": expected})
    # P != R: "cat" vs "the cat sat" -> 1 common; P=1/1, R=1/2, F1=2/3
    assert token_f1(["cat"], ["the cat sat"]) == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3})
    # several references: the best F1 per example is used
    assert token_f1(["cat"], [["dog", "cat"]])["f1"] == 1.0
    assert token_f1(["x"], ["y"])["f1"] == 0.0


def test_bleu_chrf_match_sacrebleu():
    assert bleu(HYPS, REFS) == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert chrf(HYPS, REFS) == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    multi = [[a, b] for a, b in zip(REFS, REFS2, strict=True)]
    assert bleu(HYPS, multi) == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS, REFS2]).score)
    assert chrf(HYPS, multi) == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS, REFS2]).score)
    assert chrf(HYPS, multi, word_order=2) == pytest.approx(
        sacrebleu.corpus_chrf(HYPS, [REFS, REFS2], word_order=2).score
    )
    assert bleu(HYPS, REFS, lowercase=True, tokenize="char") == pytest.approx(
        sacrebleu.corpus_bleu(HYPS, [REFS], lowercase=True, tokenize="char").score
    )
    # a variable number of references per example is padded with None for sacrebleu
    ragged = [[REFS[0], REFS2[0]], REFS[1], REFS[2], [REFS[3], REFS2[3]]]
    streams = [REFS, [REFS2[0], None, None, REFS2[3]]]
    assert bleu(HYPS, ragged) == pytest.approx(sacrebleu.corpus_bleu(HYPS, streams).score)
    assert bleu(REFS, REFS) == pytest.approx(100.0)


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_rouge_matches_rouge_score(use_stemmer):
    types = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=use_stemmer)
    got = rouge(HYPS, REFS, types=types, use_stemmer=use_stemmer)
    per = [scorer.score(r, h) for h, r in zip(HYPS, REFS, strict=True)]
    for t in types:
        assert got[t] == pytest.approx(sum(s[t].fmeasure for s in per) / len(per))
        assert got[f"{t}_precision"] == pytest.approx(sum(s[t].precision for s in per) / len(per))
        assert got[f"{t}_recall"] == pytest.approx(sum(s[t].recall for s in per) / len(per))
    multi = [[a, b] for a, b in zip(REFS, REFS2, strict=True)]
    got = rouge(HYPS, multi, types=types, use_stemmer=use_stemmer)
    per = [scorer.score_multi(rs, h) for h, rs in zip(HYPS, multi, strict=True)]
    for t in types:
        assert got[t] == pytest.approx(sum(s[t].fmeasure for s in per) / len(per))


ZH_HYPS = ["猫坐在垫子上。", "今天天气很好", "我喜欢学习机器翻译，也喜欢数学"]
ZH_REFS = ["猫坐在垫子上面。", "今天的天气很好", "我喜欢机器翻译，也喜欢数学"]


class _Chars:
    """An independent char tokenizer for rouge-score: lowercased characters, spaces / punctuation dropped."""

    def tokenize(self, text):
        return [c for c in text.lower() if not c.isspace() and unicodedata.category(c)[0] not in "PS"]


def test_chinese_with_the_default_tokenizer_warns():
    """13a (each metric's standard tokenisation) cannot split Chinese: the scores collapse, and each metric says so."""
    with pytest.warns(MetricTokenizationWarning, match=r"bleu: tokenizer '13a' splits at spaces .* 'zh'"):
        assert bleu(ZH_HYPS, ZH_REFS) == pytest.approx(sacrebleu.corpus_bleu(ZH_HYPS, [ZH_REFS]).score)
    with pytest.warns(MetricTokenizationWarning, match="rouge: some texts with letters have no words under tokenizer"):
        assert rouge(ZH_HYPS, ZH_REFS)["rouge1"] == 0.0
    with pytest.warns(MetricTokenizationWarning, match="token_f1: tokenizer '13a' splits at spaces"):
        token_f1(ZH_HYPS, ZH_REFS)
    with warnings.catch_warnings():  # English under 13a, Chinese under zh / char: no warning
        warnings.simplefilter("error", MetricTokenizationWarning)
        compute_generation_metrics(HYPS, REFS, ["bleu", "rouge", "token_f1"])
        compute_generation_metrics(["", "+", "12"], ["3", "=", "12"], ["bleu", "rouge", "token_f1"])
        compute_generation_metrics(ZH_HYPS, ZH_REFS, ["bleu", "rouge", "token_f1"], tokenize="zh")
        compute_generation_metrics(ZH_HYPS, ZH_REFS, ["bleu", "rouge", "token_f1"], tokenize="char")


def test_chinese_with_a_tokenizer_matches_the_libraries():
    zh = sacrebleu.corpus_bleu(ZH_HYPS, [ZH_REFS], tokenize="zh").score
    assert zh > 0 and bleu(ZH_HYPS, ZH_REFS, tokenize="zh") == pytest.approx(zh)
    char = sacrebleu.corpus_bleu(ZH_HYPS, [ZH_REFS], tokenize="char").score
    assert compute_generation_metrics(ZH_HYPS, ZH_REFS, "bleu", tokenize="char")["bleu"] == pytest.approx(char)
    # ROUGE: rouge-score itself, given characters; zh splits Chinese into characters too
    types = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(types), tokenizer=_Chars())
    per = [scorer.score(r, h) for h, r in zip(ZH_HYPS, ZH_REFS, strict=True)]
    for tokenize in ("char", "zh"):
        got = rouge(ZH_HYPS, ZH_REFS, types=types, tokenize=tokenize)
        for t in types:
            assert got[t] == pytest.approx(sum(s[t].fmeasure for s in per) / len(per)), (tokenize, t)
            assert got[t] > 0
    with pytest.raises(UserError, match="use_stemmer"):
        rouge(ZH_HYPS, ZH_REFS, use_stemmer=True, tokenize="zh")
    # token F1 by hand: 今天天气很好 vs 今天的天气很好 -> 6 common characters of 6 and 7: P=1, R=6/7, F1=12/13
    for tokenize in ("char", "zh"):
        assert token_f1(["今天天气很好"], ["今天的天气很好"], tokenize=tokenize) == pytest.approx(
            {"precision": 1.0, "recall": 6 / 7, "f1": 12 / 13}
        )
    # the eval config field reaches all three (evaluate.defaults().generation.metrics_tokenizer)
    assert defaults().generation.metrics_tokenizer == "13a"
    out = _reference_metrics(ZH_HYPS, ZH_REFS, ["bleu", "rouge", "token_f1"], "zh")
    assert out["bleu"] == pytest.approx(zh) and out["rouge1"] > 0 and out["token_f1"] > 0


def test_metrics_tokenizer_choices():
    with pytest.raises(UserError, match=r"metrics tokenizer 'jieba' is not one of 13a, intl, zh, ja-mecab"):
        compute_generation_metrics(HYPS, REFS, "bleu", tokenize="jieba")
    cfg = defaults()
    cfg.generation.metrics_tokenizer = "zh-cn"
    with pytest.raises(UserError, match="generation.metrics_tokenizer 'zh-cn'"):  # before any model or data is read
        evaluate_params(None, None, None, cfg)
    ja_hyps, ja_refs = ["猫がマットの上に座った"], ["猫はマットの上に座っていた"]
    if importlib.util.find_spec("MeCab") is None or importlib.util.find_spec("ipadic") is None:
        with pytest.raises(UserError, match=r'needs .*pip install "sacrebleu\[ja\]"'):
            compute_generation_metrics(ja_hyps, ja_refs, "bleu", tokenize="ja-mecab")
    else:
        want = sacrebleu.corpus_bleu(ja_hyps, [ja_refs], tokenize="ja-mecab").score
        assert bleu(ja_hyps, ja_refs, tokenize="ja-mecab") == pytest.approx(want)


def test_compute_generation_metrics_dispatch():
    out = compute_generation_metrics(HYPS, REFS, ["exact_match", "token_f1", "bleu", "chrf", "rouge"])
    assert out["exact_match"] == 0.25  # "hello there general kenobi" matches after normalisation
    assert out["bleu"] == pytest.approx(bleu(HYPS, REFS))
    assert out["chrf"] == pytest.approx(chrf(HYPS, REFS))
    assert out["token_f1"] == pytest.approx(token_f1(HYPS, REFS)["f1"])
    assert {"rouge1", "rouge2", "rougeL", "rouge1_precision", "token_precision"} <= set(out)
    assert all(isinstance(v, float) for v in out.values())
    cls = compute_generation_metrics(["Yes ", "no"], ["yes", "yes"], "classification")
    assert cls["classification_accuracy"] == 0.5
    with pytest.raises(ValueError, match="valid names") as e:
        compute_generation_metrics(HYPS, REFS, ["bleu", "meteor"])
    assert all(name in str(e.value) for name in METRICS)


def test_win_rate():
    # 1>0 win, 2=2 tie, 3<5 loss, 4>1 win -> (2 + 0.5) / 4
    assert win_rate([1, 2, 3, 4], [0, 2, 5, 1]) == 0.625
    assert win_rate([0.0], [0.0]) == 0.5
    with pytest.raises(ValueError):
        win_rate([1, 2], [1])


def test_summary_writer_roundtrip(tmp_path):
    with SummaryWriter(tmp_path) as w:
        w.scalar("loss", 2.5, step=0)
        w.scalars({"loss": 1.25, "lr/group0": 1e-3}, step=10)
        w.flush()
    got = read_scalars(tmp_path)
    assert got["loss"] == [(0, 2.5), (10, 1.25)]
    assert got["lr/group0"][0][0] == 10 and got["lr/group0"][0][1] == pytest.approx(1e-3)


def test_write_report(tmp_path):
    metrics = {"bleu": 31.25, "rouge1": 0.5, "exact_match": 0.75}
    paths = write_report(metrics, tmp_path / "eval", step=100, title="Held-out eval")
    data = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert data == {"title": "Held-out eval", "step": 100, "metrics": metrics}
    md = (tmp_path / "eval" / "report.md").read_text().splitlines()
    assert md[0] == "# Held-out eval"
    assert "| metric | value |" in md and "| bleu | 31.2500 |" in md and "| exact_match | 0.7500 |" in md
    write_report({"bleu": 35.5, "rouge1": float("nan")}, tmp_path / "eval", step=200)
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["metrics"]["rouge1"] is None
    scalars = read_scalars(paths["tensorboard"])
    assert scalars["eval/bleu"] == [(100, 31.25), (200, 35.5)]
    assert scalars["eval/exact_match"] == [(100, 0.75)]
