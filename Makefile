# Every target installs what is missing by itself: a fresh machine needs only Python 3.11+.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo dev test lint bench-ledger bench-lifecycle bench-git reconcile migrate clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m scripts.demo

dev: $(STAMP)
	$(PY) -m scripts.dev

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

migrate: $(STAMP)
	$(PY) -m scripts.migrate

reconcile: $(STAMP)
	$(PY) -m scripts.reconcile

bench-ledger: $(STAMP)
	$(PY) -m scripts.bench_ledger

bench-lifecycle: $(STAMP)
	$(PY) -m scripts.bench_lifecycle

bench-git: $(STAMP)
	$(PY) -m scripts.bench_git

clean:
	rm -rf $(VENV) .changeflow *.egg-info

# While nothing has shipped, the schema is one revision regenerated from the models.
initial-migration: $(STAMP)
	$(PY) -m scripts.initial_migration
