"""The CLI's one-time re-exec that puts host memory on transparent huge pages (jaxpt/utils/hugepages.py)."""

import os
import subprocess
import sys

from jaxpt.utils import hugepages

SNIPPET = (
    "import os, sys; from jaxpt.utils.hugepages import reexec_with_hugepages; reexec_with_hugepages(); "
    "print(os.environ.get('GLIBC_TUNABLES', '')); print(sys.argv[1:])"
)


def _run(env):
    out = subprocess.run(
        [sys.executable, "-c", SNIPPET, "a", "--b=1"], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()


def test_reexec_sets_the_tunable_once_and_keeps_arguments():
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JAXPT_HUGEPAGES")}
    tunables, args = _run(env)
    assert args == "['a', '--b=1']"  # the re-executed process got the same arguments
    if hugepages.wanted(env):  # Linux, glibc >= 2.35, THP in madvise mode (as on the CI machines)
        assert tunables == "glibc.malloc.hugetlb=1"
    else:
        assert tunables == ""


def test_reexec_keeps_user_tunables_and_can_be_turned_off():
    env = {k: v for k, v in os.environ.items() if k != "JAXPT_HUGEPAGES"}
    env["GLIBC_TUNABLES"] = "glibc.malloc.trim_threshold=1000000"
    tunables, _ = _run(env)
    expected = "glibc.malloc.trim_threshold=1000000"
    assert tunables == (f"{expected}:glibc.malloc.hugetlb=1" if hugepages.wanted(env) else expected)
    env["JAXPT_HUGEPAGES"] = "0"
    assert not hugepages.wanted(env)
    assert _run(env)[0] == expected
    assert not hugepages.wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})
