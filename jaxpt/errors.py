"""Errors a user fixes by changing what they gave jaxpt (a flag, a config field, a path, a data file).

``jaxpt`` (``jaxpt/cli.py``) prints one of these as ``jaxpt <command>: <message>`` and exits 2, without a
traceback (``--debug`` or ``JAXPT_DEBUG=1`` shows it): the message says what is wrong, where, and how to fix
it. Anything else is a bug and keeps its traceback. Subclassing ``ValueError`` keeps ``except ValueError``
callers (and tests) working where a plain ``ValueError`` used to be raised.
"""

from __future__ import annotations

__all__ = ["PathNotFound", "UserError"]


class UserError(ValueError):
    """A problem with the user's input, explained by the message (no traceback needed to act on it)."""


class PathNotFound(UserError, FileNotFoundError):
    """A path the user named (a data file, a model directory) does not exist."""
