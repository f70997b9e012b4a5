"""Tokenizers: loading local HF tokenizers, a tiny character-level tokenizer, and prompt encoding.

Every path that turns a prompt into token ids (SFT, preference data, generation prompts) goes through
:func:`encode_prompt` / :func:`encode_chat_completion`, so a prompt is tokenised identically at training and
at generation time.

The tiny tokenizer (:func:`build_char_tokenizer`) has one token per character and these fixed ids::

    0 <pad>  1 <bos>  2 <eos>  3 <unk>  4 <|system|>  5 <|user|>  6 <|assistant|>  7 <|end|>
    8.. the alphabet, in order (default: ' ' .. '~' then '\\n'; 104 tokens in all)

Its chat template (:data:`CHAR_CHAT_TEMPLATE`) renders ``<bos>`` once, then per message
``<|system|>content<|end|>`` / ``<|user|>content<|end|>`` / ``<|assistant|>content<|end|><eos>``, and
``<|assistant|>`` as the generation prompt. ``{% generation %}`` wraps ``content<|end|><eos>`` of assistant
turns, so ``return_assistant_tokens_mask`` marks exactly what the model must learn to emit (the answer, its
end-of-turn marker and EOS, where generation stops).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from jaxpt.errors import UserError

Messages = list[dict[str, Any]]

CHAR_SPECIAL_TOKENS = (
    "<pad>",
    "<bos>",
    "<eos>",
    "<unk>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
)
DEFAULT_ALPHABET = "".join(chr(c) for c in range(32, 127)) + "\n"

CHAR_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>{% generation %}{{ message['content'] }}<|end|>{{ eos_token }}{% endgeneration %}"
    "{% elif message['role'] == 'user' or message['role'] == 'system' %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% else %}"
    "{{ raise_exception('unsupported chat role: ' ~ message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_GENERATION_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """Loads a tokenizer from a local directory (never the hub) and guarantees a pad token.

    Batches are padded explicitly and padding is excluded by ``segment_ids == 0``, so the pad id's value never
    reaches the loss; tokenizers without one (Llama, GPT-2) therefore simply reuse EOS as pad.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer directory not found: {path!r} (only local directories are supported)")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(f"tokenizer at {path!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_char_tokenizer(
    out_dir: str | os.PathLike | None = None, alphabet: str = DEFAULT_ALPHABET
) -> PreTrainedTokenizerFast:
    """A tiny character-level tokenizer (fast, offline) for tests, demos and the quickstart.

    Unknown characters map to ``<unk>``. The post-processor prepends ``<bos>`` when ``add_special_tokens`` is
    true (like Llama), decoding joins characters verbatim. Saved with ``save_pretrained`` when ``out_dir`` is
    given, after which ``AutoTokenizer.from_pretrained(out_dir)`` reloads it offline.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    chars = list(dict.fromkeys(alphabet))
    if any(len(c) != 1 for c in chars) or not chars:
        raise ValueError("alphabet must be a non-empty string of characters")
    vocab = {tok: i for i, tok in enumerate(CHAR_SPECIAL_TOKENS)}
    for ch in chars:
        if ch in vocab:
            continue
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    backend.add_special_tokens(list(CHAR_SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        extra_special_tokens=list(CHAR_SPECIAL_TOKENS[4:]),
        chat_template=CHAR_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,  # the default cleanup would eat spaces before punctuation
        model_max_length=1 << 16,
    )
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


# ----------------------------------------------------------------------------------------------------------
# Encoding helpers shared by SFT, preference data and generation.


def is_messages(value: Any) -> bool:
    """True for a chat conversation: a list of ``{"role", "content"}`` dicts."""
    return (
        isinstance(value, list | tuple)
        and len(value) > 0
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
    )


def has_generation_markers(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the chat template supports ``return_assistant_tokens_mask`` (``{% generation %}`` blocks)."""
    try:
        template = tokenizer.get_chat_template()
    except (ValueError, TypeError):
        return False
    return bool(_GENERATION_RE.search(template))


def special_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Tokens the tokenizer itself prepends to plain text with ``add_special_tokens=True`` (e.g. BOS).

    We follow each tokenizer's own policy (Llama and the char tokenizer add BOS; Qwen and GPT-2 add nothing)
    rather than forcing BOS, so raw-text prompts match what the model saw in pre-training.
    """
    probe = "a"
    with_special = tokenizer(probe, add_special_tokens=True)["input_ids"]
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return list(with_special[:start])
    return []


def _encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: Messages, add_generation_prompt: bool = False) -> str:
    """The chat template's text for ``messages`` (templates write their own BOS, if any)."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str | Messages, chat: bool | None = None) -> list[int]:
    """Token ids of a prompt, exactly as training sequences start and generation continues from.

    ``chat=None`` infers from the type: a list of messages is rendered with the chat template plus the
    generation prompt; a string is plain text after the tokenizer's special prefix (BOS). ``chat=True`` with a
    string wraps it as a single user message.
    """
    if chat is None:
        chat = not isinstance(prompt, str)
    if chat:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if not is_messages(messages):
            raise ValueError(f"chat prompt must be a string or a list of {{role, content}} messages, got {prompt!r}")
        return _encode_text(tokenizer, render_chat(tokenizer, messages, add_generation_prompt=True))
    if not isinstance(prompt, str):
        raise ValueError(f"plain-text prompt must be a string, got {type(prompt).__name__}")
    return special_prefix(tokenizer) + _encode_text(tokenizer, prompt)


def as_assistant_messages(completion: str | Messages) -> Messages:
    """A completion as assistant messages (strings become one assistant message)."""
    if isinstance(completion, str):
        return [{"role": "assistant", "content": completion}]
    if not is_messages(completion):
        raise ValueError(f"completion must be a string or a list of messages, got {completion!r}")
    return list(completion)


def encode_chat_completion(
    tokenizer: PreTrainedTokenizerBase, prompt: Messages, completion: str | Messages
) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) for a chat prompt and its assistant reply, both through the template.

    The completion is the text the template adds after the generation prompt, so it carries the template's own
    end-of-turn tokens (``<|end|><eos>``, ``<|im_end|>``, ``<|eot_id|>``) and no extra EOS is appended. If a
    template does not render prefixes consistently (e.g. it rewrites earlier turns), the completion falls back
    to the content followed by EOS.
    """
    prompt_text = render_chat(tokenizer, prompt, add_generation_prompt=True)
    full_text = render_chat(tokenizer, list(prompt) + as_assistant_messages(completion))
    if full_text.startswith(prompt_text) and len(full_text) > len(prompt_text):
        completion_ids = _encode_text(tokenizer, full_text[len(prompt_text) :])
    else:
        content = completion if isinstance(completion, str) else "".join(m["content"] for m in completion)
        completion_ids = _encode_text(tokenizer, content) + _eos(tokenizer)
    return _encode_text(tokenizer, prompt_text), completion_ids


def encode_prompt_completion(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | Messages,
    completion: str | Messages,
    chat: bool = False,
    finished: bool = True,
) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of a prompt and its reply, as SFT examples, preference pairs and reward-model
    scores write them.

    A conversation (or, with ``chat=True``, a string prompt wrapped as one user message) goes through the chat
    template (:func:`encode_chat_completion`: the reply ends with the template's end-of-turn tokens); a plain-text
    prompt follows the tokenizer's special prefix and the reply's text ends with EOS. ``finished=False`` (a
    generation cut at ``max_new_tokens``): the reply's text alone, without end tokens.
    """
    text = "".join(m["content"] for m in as_assistant_messages(completion))
    if chat or is_messages(prompt):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if finished:
            return encode_chat_completion(tokenizer, messages, completion)
        return encode_prompt(tokenizer, messages, chat=True), _encode_text(tokenizer, text)
    ids = _encode_text(tokenizer, text)
    return encode_prompt(tokenizer, prompt, chat=False), ids + (_eos(tokenizer) if finished else [])


def _eos(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no eos token; completions need one to learn where to stop")
    return [int(tokenizer.eos_token_id)]


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str] | Sequence[Messages],
    max_length: int,
    chat: bool,
    pad_to_longest: bool = False,
) -> dict[str, np.ndarray]:
    """Generation prompts as ``tokens`` [B, P] int32 (left-padded with the pad id), ``mask`` [B, P] int32 and
    ``truncated`` [B] bool (the prompt was longer than ``max_length``).

    Left padding puts every row's last prompt token in the same slot (what the sampler expects). Prompts
    longer than ``max_length`` lose their *beginning*: the end of a prompt (the question, the generation
    prompt) is what the model must continue from. ``P`` is ``max_length`` (one compiled shape) unless
    ``pad_to_longest``.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("tokenizer has neither a pad nor an eos token")
    full = [encode_prompt(tokenizer, p, chat=chat) for p in prompts]
    rows = [r[-max_length:] for r in full]
    width = max((len(r) for r in rows), default=0) if pad_to_longest else max_length
    tokens = np.full((len(rows), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(rows), width), dtype=np.int32)
    for i, row in enumerate(rows):
        if row:
            tokens[i, width - len(row) :] = row
            mask[i, width - len(row) :] = 1
    return {"tokens": tokens, "mask": mask, "truncated": np.asarray([len(r) > max_length for r in full], bool)}
