"""Host memory on transparent huge pages: glibc's ``malloc.hugetlb`` tunable, set by re-executing once.

XLA:CPU allocates each execution's temporary buffers afresh; above glibc's mmap threshold (32 MB at most) that
memory comes straight from ``mmap`` and every 4 KB page faults on first touch, every step. The bench-small SFT
step touched ~86k fresh pages (~340 MB) per step. With ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` glibc asks
for transparent huge pages on those mappings (``madvise``), faults drop to ~500 per step and the step gets
10–20% faster (``docs/benchmarks.md``). The tunable is read only at process start-up, hence the re-exec.

Nothing happens unless this is Linux with glibc >= 2.35 and the kernel's THP mode is ``madvise`` (with
``always`` there is nothing to gain, with ``never`` nothing to win). ``JAXPT_HUGEPAGES=0`` turns it off.
"""

from __future__ import annotations

import os
import sys

_TUNABLE = "glibc.malloc.hugetlb=1"
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version() -> tuple[int, int] | None:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # e.g. "glibc 2.36"
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, ValueError, OSError):
        return None


def _thp_mode() -> str | None:
    try:
        with open(_THP_MODE) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def wanted(environ: dict[str, str] | None = None) -> bool:
    """Whether re-executing with the tunable would change anything here."""
    env = os.environ if environ is None else environ
    if sys.platform != "linux" or env.get("JAXPT_HUGEPAGES", "1") == "0":
        return False
    if "glibc.malloc.hugetlb" in env.get("GLIBC_TUNABLES", ""):
        return False  # already set (by us or by the user)
    version = _glibc_version()
    return version is not None and version >= (2, 35) and _thp_mode() == "madvise"


def reexec_with_hugepages() -> None:
    """Re-executes this process (same interpreter, same arguments) with the tunable set, once.

    Call it first thing in a command-line entry point, before any work. Returns (doing nothing) when not
    ``wanted`` or when the process cannot be re-executed.
    """
    if not wanted():
        return
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    env = dict(os.environ, GLIBC_TUNABLES=f"{tunables}:{_TUNABLE}" if tunables else _TUNABLE)
    argv = list(getattr(sys, "orig_argv", []) or [sys.executable, *sys.argv])
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, argv, env)
    except OSError:
        return


__all__ = ["reexec_with_hugepages", "wanted"]
