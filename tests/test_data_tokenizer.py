import json
import os

import numpy as np
import pytest
from transformers import AutoTokenizer

from jaxpt.data.tokenizer import (
    CHAR_SPECIAL_TOKENS,
    DEFAULT_ALPHABET,
    build_char_tokenizer,
    encode_chat_completion,
    encode_prompt,
    encode_prompts,
    has_generation_markers,
    load_tokenizer,
    special_prefix,
)

CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "1+1="},
    {"role": "assistant", "content": "2"},
    {"role": "user", "content": "2+2="},
    {"role": "assistant", "content": "4"},
]


def test_special_ids_and_vocab(char_tokenizer):
    tok = char_tokenizer
    ids = tok.convert_tokens_to_ids(list(CHAR_SPECIAL_TOKENS))
    assert ids == list(range(8))
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert len(tok) == 8 + len(DEFAULT_ALPHABET) == 104
    assert tok.convert_tokens_to_ids("\n") == 103 and tok.convert_tokens_to_ids(" ") == 8


def test_char_roundtrip_and_unknown(char_tokenizer):
    tok = char_tokenizer
    ids = tok(DEFAULT_ALPHABET, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(DEFAULT_ALPHABET) and ids == list(range(8, 104))
    assert tok.decode(ids) == DEFAULT_ALPHABET  # no cleanup of spaces, no separators
    assert tok("ab", add_special_tokens=True)["input_ids"][0] == tok.bos_token_id
    assert tok("a€b", add_special_tokens=False)["input_ids"][1] == tok.unk_token_id
    # Special-token strings in text become single tokens.
    assert tok("<|user|>hi<|end|>", add_special_tokens=False)["input_ids"] == [5, 80, 81, 7]


def test_reload_offline_matches(char_tokenizer_dir):
    built = build_char_tokenizer()
    reloaded = AutoTokenizer.from_pretrained(char_tokenizer_dir, local_files_only=True)
    text = "Hello, world!\n 12+30=42 ~"
    assert reloaded(text)["input_ids"] == built(text)["input_ids"]
    assert reloaded.chat_template == built.chat_template
    assert reloaded.apply_chat_template(CONVERSATION, tokenize=False) == built.apply_chat_template(
        CONVERSATION, tokenize=False
    )
    assert os.path.exists(os.path.join(char_tokenizer_dir, "tokenizer.json"))


def test_chat_template_text(char_tokenizer):
    text = char_tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert text == (
        "<bos><|system|>be brief<|end|><|user|>1+1=<|end|><|assistant|>2<|end|><eos>"
        "<|user|>2+2=<|end|><|assistant|>4<|end|><eos>"
    )
    prompt = char_tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == "<bos><|system|>be brief<|end|><|user|>1+1=<|end|><|assistant|>"
    with pytest.raises(Exception, match="unsupported chat role"):
        char_tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_assistant_tokens_mask(char_tokenizer):
    assert has_generation_markers(char_tokenizer)
    out = char_tokenizer.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    ids = np.asarray(out["input_ids"])
    mask = np.asarray(out["assistant_masks"], bool)
    assert char_tokenizer.decode(ids[mask]) == "2<|end|><eos>4<|end|><eos>"


def test_load_tokenizer_pad_fallback(tmp_path, char_tokenizer_dir):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_tokenizer(str(tmp_path / "missing"))
    # A tokenizer without a pad token (like Llama / GPT-2) gets eos as pad.
    config_path = os.path.join(char_tokenizer_dir, "tokenizer_config.json")
    config = json.load(open(config_path))
    config.pop("pad_token")
    out = tmp_path / "nopad"
    out.mkdir()
    for name in os.listdir(char_tokenizer_dir):
        (out / name).write_bytes(open(os.path.join(char_tokenizer_dir, name), "rb").read())
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(str(out))
    assert tok.pad_token == "<eos>" and tok.pad_token_id == tok.eos_token_id == 2


def test_encode_prompt_paths(char_tokenizer):
    tok = char_tokenizer
    assert special_prefix(tok) == [1]
    plain = encode_prompt(tok, "3+4=")
    assert tok.convert_ids_to_tokens(plain) == ["<bos>", "3", "+", "4", "="]
    chat = encode_prompt(tok, "3+4=", chat=True)
    assert tok.decode(chat) == "<bos><|user|>3+4=<|end|><|assistant|>"
    assert encode_prompt(tok, [{"role": "user", "content": "3+4="}]) == chat
    prompt_ids, completion_ids = encode_chat_completion(tok, [{"role": "user", "content": "3+4="}], "7")
    assert prompt_ids == chat and tok.decode(completion_ids) == "7<|end|><eos>"


def test_encode_prompts_left_pad_and_truncate(char_tokenizer):
    tok = char_tokenizer
    out = encode_prompts(tok, ["1+2=", "10+20=", "123456789"], max_length=8, chat=False)
    assert out["tokens"].shape == out["mask"].shape == (3, 8)
    assert out["tokens"].dtype == np.int32 and out["mask"].dtype == np.int32
    assert out["mask"][0].tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    assert out["tokens"][0, :3].tolist() == [0, 0, 0]
    assert tok.decode(out["tokens"][0, 3:]) == "<bos>1+2="
    # 10 tokens (bos + 9 chars) keep their last 8: truncation from the left.
    assert out["mask"][2].all() and tok.decode(out["tokens"][2]) == "23456789"

    chat = encode_prompts(tok, [[{"role": "user", "content": "5-3="}]], max_length=32, chat=True)
    row = chat["tokens"][0][chat["mask"][0] == 1]
    assert tok.decode(row).endswith("5-3=<|end|><|assistant|>")

    longest = encode_prompts(tok, ["1+2=", "10+20="], max_length=64, chat=False, pad_to_longest=True)
    assert longest["tokens"].shape == (2, 7)
