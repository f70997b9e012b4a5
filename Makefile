# Two contracts (README): `make demo` runs the main job, `make test` runs the test suite; each sets up its own
# virtual environments from a fresh clone.
#
# Two stacks (README, "Tested versions"):
# - $(VENV) on $(PYTHON) (3.11, the oldest supported Python; pip gives it jax 0.10.x, the last jax for 3.11) with
#   the CPU build of torch, the parity reference (its wheel here is cp311 only; on 3.12 PyPI's torch is a ~6 GB CUDA
#   build);
# - $(VENV_NEW) on Python 3.12 with the newest jax / flax / optax / orbax that pip resolves when it is created
#   (`rm -rf .venv-new` to take newer releases) and no torch: tests marked requires_torch skip there.
# `make test` runs ruff, then the whole suite on the newest stack, then on 3.11 the requires_torch tests plus the
# smoke files below (SMOKE_OLDEST). Measured on 2 CPU cores shared with other jobs: newest stack 12.3 min, 3.11
# requires_torch 1.8 min + smoke 0.4 min (the whole `make test`, venvs up to date: 14.1 min); a second full suite on
# 3.11 would add 14 min.
# `make test-oldest` runs the full suite on 3.11. Without a Python 3.12 (or with `PYTHON_NEW=`) `make test` says so
# and runs the full suite on 3.11 alone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
VENV_NEW ?= .venv-new
# Python 3.12: python3.12 on PATH, else the newest of pyenv's versions/3.12*; each candidate must actually run (a
# pyenv shim for a version that is not selected fails).
ifndef PYTHON_NEW
PYTHON_NEW := $(shell for p in python3.12 $$(ls -d "$$(pyenv root 2>/dev/null || echo $${PYENV_ROOT:-$$HOME/.pyenv})"/versions/3.12*/bin/python3 2>/dev/null | sort -rV); do "$$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 && { command -v "$$p"; break; }; done)
endif
# The 3.11 run besides the requires_torch tests: config, meshes, checkpoints, CLI errors, data (about 20 s).
SMOKE_OLDEST ?= tests/test_config.py tests/test_sharding.py tests/test_checkpoint.py tests/test_cli_errors.py \
	tests/test_data_sft.py tests/test_data_tokenizer.py tests/test_data_preference.py
# `make demo` runs on the newest stack where there is one.
DEMO_VENV := $(if $(PYTHON_NEW),$(VENV_NEW),$(VENV))
WORKDIR ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PY) -m pip install -q -e ".[test]"
	touch $@

$(VENV_NEW)/.base: pyproject.toml
	$(PYTHON_NEW) -m venv $(VENV_NEW)
	$(VENV_NEW)/bin/python -m pip install -q --upgrade pip
	$(VENV_NEW)/bin/python -m pip install -q --upgrade -e .
	touch $@

$(VENV_NEW)/.test: $(VENV_NEW)/.base
	$(VENV_NEW)/bin/python -m pip install -q -e ".[test-core]"
	touch $@

.PHONY: demo test test-oldest lint bench
demo: $(DEMO_VENV)/.base
	$(DEMO_VENV)/bin/jaxpt demo --workdir=$(WORKDIR)

test: $(VENV)/.test $(if $(PYTHON_NEW),$(VENV_NEW)/.test)
	$(VENV)/bin/ruff check jaxpt tests tools configs experiments
	$(VENV)/bin/ruff format --check jaxpt tests tools configs experiments
ifeq ($(PYTHON_NEW),)
	@echo "make test: no Python 3.12 found (python3.12 on PATH, pyenv's versions/3.12*; or set PYTHON_NEW=...):" \
		"the newest jax stack is NOT tested; running the full suite on $(PYTHON) only" >&2
	$(PY) -m pytest
else
	$(VENV_NEW)/bin/python -m pytest
	$(PY) -m pytest -m requires_torch
	$(PY) -m pytest $(SMOKE_OLDEST)
endif

test-oldest: $(VENV)/.test
	$(PY) -m pytest

lint: $(VENV)/.test
	$(VENV)/bin/ruff check jaxpt tests tools configs experiments
	$(VENV)/bin/ruff format --check jaxpt tests tools configs experiments

bench: $(VENV)/.test
	$(PY) tools/bench.py
