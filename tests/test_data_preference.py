import json

import numpy as np
import pytest

from jaxpt.data.preference import (
    PreferenceDataIterator,
    build_preference_batch,
    build_preference_dataset,
    build_shared_prompt_batch,
    empty_pair,
    encode_scored,
    fixed_preference_batches,
    shared_prompt_shape,
    tokenize_pair,
)


def decode(tok, ids):
    return tok.decode(np.asarray(ids).tolist())


def test_string_pair(char_tokenizer):
    pair = tokenize_pair({"prompt": "12+5=", "chosen": "17", "rejected": "18"}, char_tokenizer, max_length=64)
    assert decode(char_tokenizer, pair["prompt_ids"]) == "<bos>12+5="
    assert decode(char_tokenizer, pair["chosen_ids"]) == "17<eos>"
    assert decode(char_tokenizer, pair["rejected_ids"]) == "18<eos>"
    assert all(v.dtype == np.int32 for v in pair.values())


def test_chat_pair(char_tokenizer):
    prompt = [{"role": "system", "content": "math"}, {"role": "user", "content": "2+2="}]
    example = {"prompt": prompt, "chosen": [{"role": "assistant", "content": "4"}], "rejected": "5"}
    pair = tokenize_pair(example, char_tokenizer, max_length=64)
    expected_prompt = "<bos><|system|>math<|end|><|user|>2+2=<|end|><|assistant|>"
    assert decode(char_tokenizer, pair["prompt_ids"]) == expected_prompt
    assert decode(char_tokenizer, pair["chosen_ids"]) == "4<|end|><eos>"
    assert decode(char_tokenizer, pair["rejected_ids"]) == "5<|end|><eos>"


def test_scored_text_matches_the_pairs(char_tokenizer):
    """A reward model reads a completion as its preference pairs were written; unfinished ones get no end tokens."""
    tok = char_tokenizer
    plain = encode_scored(tok, "12+5=", "17", max_length=64)
    assert decode(tok, plain) == "<bos>12+5=17<eos>"
    assert decode(tok, encode_scored(tok, "12+5=", "17", 64, finished=False)) == "<bos>12+5=17"
    chat = [{"role": "user", "content": "2+2="}]
    expected_prompt = "<bos><|user|>2+2=<|end|><|assistant|>"
    assert decode(tok, encode_scored(tok, chat, "4", 64)) == expected_prompt + "4<|end|><eos>"
    assert decode(tok, encode_scored(tok, chat, "4", 64, finished=False)) == expected_prompt + "4"
    assert encode_scored(tok, "2+2=", "4", 64, chat=True) == encode_scored(tok, chat, "4", 64)
    pair = tokenize_pair({"prompt": chat, "chosen": "4", "rejected": "5"}, tok, max_length=64)
    assert encode_scored(tok, chat, "4", 64) == [*pair["prompt_ids"], *pair["chosen_ids"]]
    assert decode(tok, encode_scored(tok, "0123456789=", "abc", max_length=6)) == "9=abc<eos>"  # keeps the end
    with pytest.raises(ValueError, match="max_length"):
        encode_scored(tok, "1=", "1", max_length=0)


def test_truncation_policy(char_tokenizer):
    example = {"prompt": "0123456789=", "chosen": "abcdefgh", "rejected": "xy"}
    pair = tokenize_pair(example, char_tokenizer, max_length=64, max_prompt_length=4, max_completion_length=5)
    assert decode(char_tokenizer, pair["prompt_ids"]) == "789="  # prompt keeps its end
    assert decode(char_tokenizer, pair["chosen_ids"]) == "abcde"  # completion keeps its beginning
    assert decode(char_tokenizer, pair["rejected_ids"]) == "xy<eos>"
    total = tokenize_pair(example, char_tokenizer, max_length=8, max_prompt_length=4)
    assert len(total["prompt_ids"]) + len(total["chosen_ids"]) == 8
    assert decode(char_tokenizer, total["chosen_ids"]) == "abcd"
    no_limit = tokenize_pair(example, char_tokenizer, max_length=6)  # prompt leaves room for one token
    assert decode(char_tokenizer, no_limit["prompt_ids"]) == "6789=" and len(no_limit["chosen_ids"]) == 1
    with pytest.raises(ValueError, match="max_prompt_length"):
        tokenize_pair(example, char_tokenizer, max_length=4, max_prompt_length=4)


def test_errors_name_columns_and_rows(char_tokenizer):
    with pytest.raises(ValueError, match=r"missing \['rejected'\], found \['chosen', 'prompt'\]"):
        build_preference_dataset([{"prompt": "a", "chosen": "b"}], char_tokenizer, max_length=16)
    rows = [
        {"prompt": "1+1=", "chosen": "2", "rejected": "3"},
        {"prompt": "1+2=", "chosen": "3", "rejected": " "},
    ]
    with pytest.raises(ValueError, match=r"row 1: empty 'rejected'"):
        build_preference_dataset(rows, char_tokenizer, max_length=16)
    with pytest.raises(ValueError, match="row 0: empty 'chosen'"):
        build_preference_dataset([{"prompt": "x", "chosen": [], "rejected": "y"}], char_tokenizer, 16)


def test_preference_batch_layout(char_tokenizer):
    pairs = [
        tokenize_pair({"prompt": "1+1=", "chosen": "2", "rejected": "30"}, char_tokenizer, 32),
        tokenize_pair({"prompt": "9+9=", "chosen": "18", "rejected": "17"}, char_tokenizer, 32),
    ]
    batch = build_preference_batch(pairs, seq_len=10)
    assert all(v.shape[0] == 4 for v in batch.values()) and batch["inputs"].shape == (4, 10)
    # Row 0: chosen of pair 0 = <bos>1+1=2<eos>; row 2: rejected of pair 0 = <bos>1+1=30<eos>.
    assert decode(char_tokenizer, batch["inputs"][0][batch["segment_ids"][0] == 1]) == "<bos>1+1=2"
    assert decode(char_tokenizer, batch["targets"][2][batch["segment_ids"][2] == 1]) == "1+1=30<eos>"
    assert decode(char_tokenizer, batch["targets"][0][batch["loss_mask"][0] > 0]) == "2<eos>"
    assert decode(char_tokenizer, batch["targets"][2][batch["loss_mask"][2] > 0]) == "30<eos>"
    assert batch["completion_lengths"].tolist() == [2, 3, 3, 3]
    assert batch["completion_lengths"].dtype == np.int32
    assert batch["positions"][0].tolist() == [0, 1, 2, 3, 4, 5, 0, 0, 0, 0]
    assert batch["segment_ids"][0].tolist() == [1] * 6 + [0] * 4
    assert (batch["loss_mask"][batch["segment_ids"] == 0] == 0).all()


def test_iterator_determinism_and_state(char_tokenizer):
    rows = [{"prompt": f"{i}+{i}=", "chosen": str(2 * i), "rejected": str(2 * i + 1)} for i in range(11)]
    pairs = build_preference_dataset(rows, char_tokenizer, max_length=16)
    it = PreferenceDataIterator(pairs, batch_size=3, seq_len=16, seed=3)
    batches = [next(it) for _ in range(3)]
    assert batches[0]["inputs"].shape == (6, 16)
    again = PreferenceDataIterator(pairs, batch_size=3, seq_len=16, seed=3)
    assert all(
        all(np.array_equal(a[k], b[k]) for k in a)
        for a, b in zip(batches, [next(again) for _ in range(3)], strict=True)
    )
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(8)]  # crosses epoch boundaries (11 pairs, 3 per batch)
    restored = PreferenceDataIterator(pairs, batch_size=3, seq_len=16, seed=3)
    restored.set_state(state)
    got = [next(restored) for _ in range(8)]
    assert all(all(np.array_equal(a[k], b[k]) for k in a) for a, b in zip(expected, got, strict=True))
    # One epoch (11 pairs) covers every prompt exactly once.
    fresh = PreferenceDataIterator(pairs, batch_size=1, seq_len=16, seed=5)
    firsts = sorted(decode(char_tokenizer, next(fresh)["inputs"][0, 1:3]) for _ in range(11))
    assert firsts == sorted(f"{i}+" if i < 10 else "10" for i in range(11))


def test_shipped_preference_data(tmp_path, char_tokenizer):
    pairs = build_preference_dataset(
        "data/arithmetic/prefs_eval.jsonl", char_tokenizer, max_length=16, cache_dir=str(tmp_path / "cache")
    )
    assert len(pairs) == 200
    batch = build_preference_batch(pairs[:4], seq_len=16)
    assert batch["inputs"].shape == (8, 16) and (batch["completion_lengths"] >= 2).all()


def test_shared_prompt_layout_keeps_the_flat_layouts_tokens():
    """Varied lengths, rows cut at seq_len, an empty prompt and padding pairs: each shared-prompt row holds
    exactly the tokens (and loss targets) of the same row in the flat layout."""
    rng = np.random.default_rng(0)
    seq_len = 12

    def ids(n):
        return rng.integers(3, 50, n).astype(np.int32)

    pairs = [
        {"prompt_ids": ids(p), "chosen_ids": ids(c), "rejected_ids": ids(r)}
        for p, c, r in [(4, 3, 5), (1, 9, 2), (7, 8, 1), (0, 4, 6), (11, 3, 2)]
    ]
    assert shared_prompt_shape(pairs, seq_len) == (11, 9)
    padded = pairs + [empty_pair(pairs[0])]
    flat = fixed_preference_batches(padded, 3, seq_len, 0)
    shared = fixed_preference_batches(padded, 3, seq_len, 0, shared_prompt=True)
    for f, s in zip(flat, shared, strict=True):
        assert s["prompt_tokens"].shape == (3, 11) and s["completion_tokens"].shape == (6, 9)
        np.testing.assert_array_equal(s["completion_lengths"], f["completion_lengths"])
        for r in range(6):
            prompt = s["prompt_tokens"][r % 3][s["prompt_mask"][r % 3] > 0]
            completion = s["completion_tokens"][r][s["completion_segment_ids"][r] > 0]
            row = np.concatenate([f["inputs"][r, :1], f["targets"][r]])[: f["segment_ids"][r].sum() + 1]
            if f["segment_ids"][r].sum():
                np.testing.assert_array_equal(np.concatenate([prompt, completion]), row)
            targets = s["completion_tokens"][r][s["completion_mask"][r] > 0]
            np.testing.assert_array_equal(targets, f["targets"][r][f["loss_mask"][r] > 0])
    with pytest.raises(ValueError, match="does not fit the shared-prompt shape"):
        build_shared_prompt_batch(pairs, seq_len, (11, 3))
