# Two contracts (README): `make demo` runs the main job, `make test` runs the test suite; each sets up its own
# virtual environment from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/quickstart-$(shell date +%Y%m%d-%H%M%S)

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PY) -m pip install -q -e ".[test]"
	touch $@

.PHONY: demo test lint bench
demo: $(VENV)/.base
	$(VENV)/bin/jaxpt train --config=configs/sft/quickstart.py --workdir=$(WORKDIR)/sft
	$(VENV)/bin/jaxpt train --config=configs/dpo/quickstart.py --workdir=$(WORKDIR)/dpo \
		--config.model.path=$(WORKDIR)/sft/export
	$(VENV)/bin/jaxpt generate --model=$(WORKDIR)/dpo/export --prompt="12+7=" --prompt="31-4=" --max-new-tokens=8

test: $(VENV)/.test
	$(VENV)/bin/ruff check jaxpt tests tools configs experiments
	$(VENV)/bin/ruff format --check jaxpt tests tools configs experiments
	$(PY) -m pytest -q

lint: $(VENV)/.test
	$(VENV)/bin/ruff check jaxpt tests tools configs experiments
	$(VENV)/bin/ruff format --check jaxpt tests tools configs experiments

bench: $(VENV)/.test
	$(PY) tools/bench.py
