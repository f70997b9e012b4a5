import json

import datasets
import numpy as np
import pytest
from transformers import AutoTokenizer

from jaxpt.data.sft import (
    SFTDataIterator,
    build_sft_dataset,
    detect_format,
    load_records,
    make_batch,
    pack_examples,
    tokenize_example,
    unpacked_rows,
)
from jaxpt.errors import UserError

ROWS = [{"prompt": f"{i}+1=", "completion": str(i + 1)} for i in range(6)]
CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "1+1="},
    {"role": "assistant", "content": "2"},
    {"role": "user", "content": "2+2="},
    {"role": "assistant", "content": "4 ok"},
]
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Renders the *last* assistant turn differently from earlier ones, so prefixes are inconsistent (like Qwen3's
# thinking blocks) and the span search fallback must be used.
REWRITING = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}<|assistant|>"
    "{% if loop.last %}[final] {% endif %}{{ message['content'] }}<|end|>"
    "{% else %}<|user|>{{ message['content'] }}<|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture
def fresh_tokenizer(char_tokenizer_dir):
    """A private copy whose chat template a test may replace."""
    return AutoTokenizer.from_pretrained(char_tokenizer_dir, local_files_only=True)


def masked_text(tok, example):
    ids = example["tokens"][example["loss_mask"] > 0]
    return tok.decode(ids)


# ----------------------------------------------------------------------------------------------------------
# Loading and formats.


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "csv", "saved", "saved_dict", "glob"])
def test_load_records(tmp_path, kind):
    ds = datasets.Dataset.from_list(ROWS)
    if kind == "jsonl":
        source = str(tmp_path / "d.jsonl")
        ds.to_json(source)
    elif kind == "json":
        source = str(tmp_path / "d.json")
        with open(source, "w") as f:
            json.dump(ROWS, f)
    elif kind == "parquet":
        source = str(tmp_path / "d.parquet")
        ds.to_parquet(source)
    elif kind == "csv":
        source = str(tmp_path / "d.csv")
        ds.to_csv(source, index=False)
    elif kind == "saved":
        source = str(tmp_path / "saved")
        ds.save_to_disk(source)
    elif kind == "saved_dict":
        source = str(tmp_path / "saved_dict")
        datasets.DatasetDict({"train": ds}).save_to_disk(source)
    else:
        ds.select(range(3)).to_json(str(tmp_path / "a.jsonl"))
        ds.select(range(3, 6)).to_json(str(tmp_path / "b.jsonl"))
        source = str(tmp_path / "*.jsonl")
    records = load_records(source, cache_dir=str(tmp_path / "cache"))
    assert len(records) == 6
    assert sorted(r["prompt"] for r in records) == sorted(r["prompt"] for r in ROWS)
    assert detect_format(records.column_names) == "prompt_completion"


def test_load_records_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no dataset found"):
        load_records(str(tmp_path / "missing.jsonl"))
    with pytest.raises(FileNotFoundError):
        load_records(str(tmp_path / "*.parquet"))
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="one format"):
        load_records(str(tmp_path / "x.txt"))
    (tmp_path / "plain_dir").mkdir()
    with pytest.raises(ValueError, match="save_to_disk"):
        load_records(str(tmp_path / "plain_dir"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(UserError, match="available"):
        load_records(str(tmp_path / "dd"), split="test")
    (tmp_path / "blank.jsonl").write_text("\n  \n")  # datasets itself ends this in a bare StopIteration
    with pytest.raises(UserError, match="blank.jsonl' is empty"):
        load_records(str(tmp_path / "blank.jsonl"))
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(UserError, match="cannot read .*bad.jsonl' as json: JSON parse error"):
        load_records(str(tmp_path / "bad.jsonl"), cache_dir=str(tmp_path / "cache"))


def test_detect_format():
    assert detect_format(["messages", "id"]) == "messages"
    assert detect_format(["prompt", "completion", "text"]) == "prompt_completion"
    assert detect_format(["text"]) == "text"
    with pytest.raises(ValueError, match=r"found columns \['input', 'output'\], expected"):
        detect_format(["input", "output"])
    with pytest.raises(ValueError, match="both be present"):
        detect_format(["prompt"])
    with pytest.raises(ValueError, match="preference"):
        detect_format(["prompt", "chosen", "rejected"])


# ----------------------------------------------------------------------------------------------------------
# Tokenisation and masks.


def test_prompt_completion_masks(char_tokenizer):
    tok = char_tokenizer
    ex = tokenize_example({"prompt": "12+5=", "completion": "17"}, tok, "prompt_completion", 64)
    assert ex["tokens"].dtype == np.int32 and ex["loss_mask"].dtype == np.float32
    assert tok.convert_ids_to_tokens(ex["tokens"].tolist()) == ["<bos>", *"12+5=", "1", "7", "<eos>"]
    assert ex["loss_mask"].tolist() == [0] * 6 + [1, 1, 1]
    full = tokenize_example({"prompt": "12+5=", "completion": "17"}, tok, "prompt_completion", 64, False)
    assert full["loss_mask"].tolist() == [1] * 9
    # Chat mode goes through the template; the completion ends with the template's end-of-turn tokens.
    chat = tokenize_example({"prompt": "12+5=", "completion": "17"}, tok, "prompt_completion", 64, chat=True)
    assert tok.decode(chat["tokens"]) == "<bos><|user|>12+5=<|end|><|assistant|>17<|end|><eos>"
    assert masked_text(tok, chat) == "17<|end|><eos>"
    # Truncation keeps the beginning.
    short = tokenize_example({"prompt": "12+5=", "completion": "17"}, tok, "prompt_completion", 7)
    assert tok.decode(short["tokens"]) == "<bos>12+5=1" and short["loss_mask"].tolist() == [0] * 6 + [1]


def test_text_format(char_tokenizer):
    ex = tokenize_example({"text": "hello"}, char_tokenizer, "text", 64)
    assert char_tokenizer.decode(ex["tokens"]) == "<bos>hello<eos>" and ex["loss_mask"].all()
    with pytest.raises(ValueError, match="unknown format"):
        tokenize_example({"text": "x"}, char_tokenizer, "chat", 64)


def test_messages_generation_markers(char_tokenizer):
    ex = tokenize_example({"messages": CONVERSATION}, char_tokenizer, "messages", 256)
    assert masked_text(char_tokenizer, ex) == "2<|end|><eos>4 ok<|end|><eos>"
    assert len(ex["tokens"]) == len(char_tokenizer.apply_chat_template(CONVERSATION, return_dict=False))


def test_messages_prefix_rendering_matches_generation_markers(fresh_tokenizer, char_tokenizer):
    """Without {% generation %} (real Llama/Qwen templates) the prefix-rendering path gives the same mask."""
    reference = tokenize_example({"messages": CONVERSATION}, char_tokenizer, "messages", 256)
    fresh_tokenizer.chat_template = char_tokenizer.chat_template.replace("{% generation %}", "").replace(
        "{% endgeneration %}", ""
    )
    ex = tokenize_example({"messages": CONVERSATION}, fresh_tokenizer, "messages", 256)
    np.testing.assert_array_equal(ex["tokens"], reference["tokens"])
    np.testing.assert_array_equal(ex["loss_mask"], reference["loss_mask"])


def test_messages_chatml_template(fresh_tokenizer):
    fresh_tokenizer.chat_template = CHATML
    ex = tokenize_example({"messages": CONVERSATION}, fresh_tokenizer, "messages", 512)
    text = fresh_tokenizer.decode(ex["tokens"])
    assert text.startswith("<|im_start|>system\nbe brief<|im_end|>\n")
    assert masked_text(fresh_tokenizer, ex) == "2<|im_end|>\n4 ok<|im_end|>\n"


def test_messages_rewriting_template_falls_back(fresh_tokenizer):
    fresh_tokenizer.chat_template = REWRITING
    ex = tokenize_example({"messages": CONVERSATION[1:]}, fresh_tokenizer, "messages", 512)
    # Turn "2" renders as "[final] 2" in its own prefix but as "2" in the full conversation, so its span comes
    # from the search (content + closing special token); the last turn's prefix spans are exact.
    assert masked_text(fresh_tokenizer, ex) == "2<|end|>[final] 4 ok<|end|>"


def test_messages_truncated_from_right(char_tokenizer):
    ex = tokenize_example({"messages": CONVERSATION}, char_tokenizer, "messages", 21)
    assert len(ex["tokens"]) == 21
    assert char_tokenizer.decode(ex["tokens"]).endswith("<|assistant|>2<|end|><eos>")


# ----------------------------------------------------------------------------------------------------------
# Packing and batching.


def _example(n, first=10):
    tokens = np.arange(first, first + n, dtype=np.int32)
    mask = (np.arange(n) >= n // 2).astype(np.float32)
    return {"tokens": tokens, "loss_mask": mask}


def _triples(batch):
    """{segment content} per example: (inputs, targets, loss_mask) tuples in row-major order."""
    out = []
    for r in range(batch["inputs"].shape[0]):
        seg = batch["segment_ids"][r]
        for s in sorted(set(seg.tolist()) - {0}):
            sel = seg == s
            assert batch["positions"][r][sel].tolist() == list(range(sel.sum()))
            out.append(
                (
                    tuple(batch["inputs"][r][sel]),
                    tuple(batch["targets"][r][sel]),
                    tuple(batch["loss_mask"][r][sel]),
                )
            )
    return out


def test_pack_examples_first_fit():
    examples = [_example(n) for n in (5, 7, 3, 9, 2, 1, 4)]  # pairs: 4, 6, 2, 8, 1, -, 3
    rows = pack_examples(examples, seq_len=8)
    assert sorted(i for row in rows for i in row) == [0, 1, 2, 3, 4, 6]  # 1-token example skipped
    for row in rows:
        assert sum(len(examples[i]["tokens"]) - 1 for i in row) <= 8
    assert rows == [[0, 2, 4], [1], [3], [6]]  # ex 2 fills row 0 (4+2), ex 4 too (+1), ex 6 needs a new row
    long_rows = pack_examples([_example(20)], seq_len=8)
    assert long_rows == [[0]]
    batch = make_batch([_example(20)], long_rows, 8)
    assert batch["targets"][0].tolist() == list(range(11, 19))  # truncated from the right


def test_make_batch_layout():
    examples = [_example(4, first=10), _example(3, first=50)]
    batch = make_batch(examples, [[0, 1]], seq_len=8, pad_id=0)
    assert batch["inputs"][0].tolist() == [10, 11, 12, 50, 51, 0, 0, 0]
    assert batch["targets"][0].tolist() == [11, 12, 13, 51, 52, 0, 0, 0]
    assert batch["loss_mask"][0].tolist() == [0, 1, 1, 1, 1, 0, 0, 0]
    assert batch["positions"][0].tolist() == [0, 1, 2, 0, 1, 0, 0, 0]
    assert batch["segment_ids"][0].tolist() == [1, 1, 1, 2, 2, 0, 0, 0]
    dtypes = {k: v.dtype for k, v in batch.items()}
    assert dtypes == {
        "inputs": np.int32,
        "targets": np.int32,
        "loss_mask": np.float32,
        "positions": np.int32,
        "segment_ids": np.int32,
    }


def test_packed_and_unpacked_hold_same_triples():
    rng = np.random.default_rng(0)
    examples = [
        _example(int(n), first=int(f)) for n, f in zip(rng.integers(2, 12, 40), rng.integers(0, 90, 40), strict=True)
    ]
    packed = make_batch(examples, pack_examples(examples, 16), 16)
    unpacked = make_batch(examples, unpacked_rows(examples), 16)
    assert packed["inputs"].shape[0] < unpacked["inputs"].shape[0] == 40
    assert sorted(_triples(packed)) == sorted(_triples(unpacked))
    assert packed["loss_mask"].sum() == unpacked["loss_mask"].sum()
    assert (packed["loss_mask"][packed["segment_ids"] == 0] == 0).all()


# ----------------------------------------------------------------------------------------------------------
# Iterator.


def _dataset(n=23):
    rng = np.random.default_rng(1)
    return [_example(int(k), first=i * 3) for i, k in enumerate(rng.integers(2, 10, n))]


def _same(a, b):
    return all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("packing", [True, False])
def test_iterator_determinism_and_state(packing):
    examples = _dataset()
    it = SFTDataIterator(examples, batch_size=4, seq_len=12, seed=7, packing=packing)
    first = [next(it) for _ in range(5)]
    for b in first:
        assert all(v.shape == (4, 12) for v in b.values())
    again = SFTDataIterator(examples, batch_size=4, seq_len=12, seed=7, packing=packing)
    assert all(_same(a, b) for a, b in zip(first, [next(again) for _ in range(5)], strict=True))
    other = SFTDataIterator(examples, batch_size=4, seq_len=12, seed=8, packing=packing)
    assert not all(_same(a, b) for a, b in zip(first, [next(other) for _ in range(5)], strict=True))

    # Save mid-stream (JSON round trip), continue, restore into a fresh iterator: identical batches,
    # including across epoch boundaries.
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(12)]
    assert it.epoch >= 2
    restored = SFTDataIterator(examples, batch_size=4, seq_len=12, seed=7, packing=packing)
    restored.set_state(state)
    assert all(_same(a, b) for a, b in zip(expected, [next(restored) for _ in range(12)], strict=True))


def test_iterator_epochs_cover_every_example_once():
    examples = _dataset(12)
    it = SFTDataIterator(examples, batch_size=3, seq_len=12, seed=0, packing=False)
    for _ in range(2):
        batches = [next(it) for _ in range(4)]
        firsts = sorted(int(b["inputs"][r, 0]) for b in batches for r in range(3))
        assert firsts == sorted(int(ex["tokens"][0]) for ex in examples)
    assert it.get_state()["epoch"] == 2 and it.get_state()["position"] == 0
    ordered = SFTDataIterator(examples, batch_size=3, seq_len=12, seed=0, packing=False, shuffle=False)
    assert next(ordered)["inputs"][:, 0].tolist() == [0, 3, 6]


def test_iterator_state_errors():
    examples = _dataset()
    it = SFTDataIterator(examples, batch_size=2, seq_len=12, seed=1)
    with pytest.raises(ValueError, match="seed"):
        it.set_state({"epoch": 0, "position": 0, "seed": 2, "num_items": len(examples)})
    with pytest.raises(ValueError, match="invalid"):
        it.set_state({"epoch": 0, "position": 10_000})
    with pytest.raises(ValueError, match="empty"):
        SFTDataIterator([], batch_size=2, seq_len=12, seed=1)


def test_build_sft_dataset_shipped_arithmetic(tmp_path, char_tokenizer):
    records = load_records("data/arithmetic/train.jsonl", cache_dir=str(tmp_path / "cache"))
    assert detect_format(records.column_names) == "prompt_completion"
    examples = build_sft_dataset(records.select(range(100)), char_tokenizer, seq_len=64)
    assert len(examples) == 100
    first = records[0]
    assert char_tokenizer.decode(examples[0]["tokens"]) == f"<bos>{first['prompt']}{first['completion']}<eos>"
    batch = next(SFTDataIterator(examples, batch_size=2, seq_len=64, seed=0))
    assert batch["inputs"].shape == (2, 64) and batch["segment_ids"].max() > 1


def test_build_sft_dataset_messages_and_drops(tmp_path, char_tokenizer, caplog):
    path = tmp_path / "chat.jsonl"
    rows = [{"messages": CONVERSATION}, {"messages": [{"role": "user", "content": "hi"}]}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with caplog.at_level("WARNING"):
        examples = build_sft_dataset(str(path), char_tokenizer, seq_len=128, cache_dir=str(tmp_path / "cache"))
    assert len(examples) == 1 and "dropped 1" in caplog.text
    with pytest.raises(ValueError, match="expected"):
        build_sft_dataset([{"foo": "bar"}], char_tokenizer, seq_len=32)


def test_fallback_search_skips_earlier_messages(fresh_tokenizer):
    """The searched span must be the reply, not the same string inside the preceding user message."""
    fresh_tokenizer.chat_template = REWRITING
    conversation = [
        {"role": "user", "content": "say 2"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "x"},
    ]
    ex = tokenize_example({"messages": conversation}, fresh_tokenizer, "messages", 512)
    text = fresh_tokenizer.decode(ex["tokens"])
    assert text == ("<bos><|user|>say 2<|end|><|assistant|>2<|end|><|user|>again<|end|><|assistant|>[final] x<|end|>")
    assert masked_text(fresh_tokenizer, ex) == "2<|end|>[final] x<|end|>"
    assert fresh_tokenizer.decode(ex["tokens"][6]) == "2" and ex["loss_mask"][6] == 0  # the "2" in "say 2"
