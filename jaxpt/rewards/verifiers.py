"""Verifiers: ``check(prompt, completion, reference) -> bool``, one registry for every pillar.

The same name means the same check everywhere: ``jaxpt eval``'s ``generation.verifier``, data generation's
skills (``jaxpt.datagen.skills``: each prompt family names its verifier) and RL rewards (every verifier is
also a reward kind, ``{"kind": "reverse"}``, scoring 1 / 0; see ``jaxpt.rewards.registry``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jaxpt.data import tasks
from jaxpt.data.tokenizer import is_messages
from jaxpt.errors import UserError

Check = Callable[[str, str, Any], bool]
VERIFIERS: dict[str, Check] = {}


def register_verifier(name: str):
    """Decorator: ``@register_verifier("mine") def check(prompt, completion, reference) -> bool``."""

    def wrap(check: Check) -> Check:
        VERIFIERS[name] = check
        return check

    return wrap


def prompt_text(prompt: Any) -> str:
    """The text a verifier reads: the prompt itself, or a conversation's last user turn."""
    if isinstance(prompt, str):
        return prompt
    if is_messages(prompt):
        users = [m["content"] for m in prompt if m["role"] == "user"]
        return str(users[-1] if users else prompt[-1]["content"])
    if not prompt:
        return ""
    raise ValueError(f"prompt must be a string or chat messages, got {type(prompt).__name__}")


def head(completion: str) -> str:
    """The answer part of a completion: its first whitespace-separated token."""
    parts = completion.strip().split()
    return parts[0] if parts else ""


def first_line(completion: str) -> str:
    """The completion's first line, whitespace collapsed."""
    lines = completion.strip().splitlines()
    return " ".join(lines[0].split()) if lines else ""


@register_verifier("arithmetic")
def check_arithmetic(prompt: str, completion: str, reference: Any) -> bool:
    """``a+b=`` / ``a-b=`` prompts are solved (``jaxpt.data.tasks.check_answer``); other prompts compare the
    completion's leading integer with the reference's."""
    try:
        return tasks.check_answer(prompt, completion)
    except ValueError:  # not an a+b= prompt: fall back to the reference
        return reference is not None and tasks.parse_answer(completion) == tasks.parse_answer(str(reference))


@register_verifier("head")
def check_head(prompt: str, completion: str, reference: Any) -> bool:
    """The completion's first token equals the reference (short answers: ``max``, ``reverse``, ``len``...)."""
    return reference is not None and head(completion) == str(reference).strip()


for _skill in ("compare", "reverse", "count", "sort"):  # data generation's short-answer skills
    register_verifier(_skill)(check_head)


@register_verifier("exact")
def check_exact(prompt: str, completion: str, reference: Any) -> bool:
    """The completion's first line equals the reference (whitespace collapsed)."""
    return reference is not None and first_line(completion) == " ".join(str(reference).split())


def verify(name: str, prompt: Any, completion: str, reference: Any = None) -> bool:
    """Whether ``completion`` answers ``prompt`` correctly by verifier ``name`` (chat prompts: the last user
    turn is the prompt)."""
    if name not in VERIFIERS:
        raise UserError(f"unknown verifier {name!r}; known: {sorted(VERIFIERS)}")
    return bool(VERIFIERS[name](prompt_text(prompt), completion, reference))
