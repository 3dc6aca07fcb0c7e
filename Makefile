# The README's two commands: `make run` (install + the default CPU training job as a local Ray service) and `make test`.
# Both create/reuse .venv and are idempotent: the install step re-runs only when pyproject/constraints change.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := deploy/constraints-cpu.txt
STAMP := $(VENV)/.stepopsd-installed
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup run test lint bench prometheus clean-venv

$(STAMP): pyproject.toml $(CONSTRAINTS) deploy/install.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash deploy/install.sh
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/stepopsd train --config deploy/configs/learn_cpu.yaml $(ARGS)

test: setup
	bash deploy/install_system.sh
	$(BIN)/ruff check learner services actors envs tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check learner
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/run_all.py

# Watch a run's Std(Δ) live: Prometheus on deploy/prometheus.yml (it finds a Ray run through the file-SD targets
# the driver writes, an in-process run on :9464), then open http://127.0.0.1:9090/consoles/stepopsd.html
prometheus:
	bash deploy/install_system.sh prometheus
	prometheus --config.file=deploy/prometheus.yml --storage.tsdb.path=/tmp/prom-stepopsd \
	  --web.listen-address=127.0.0.1:9090 \
	  --web.console.templates=deploy/consoles --web.console.libraries=deploy/console_libraries

clean-venv:
	rm -rf $(VENV)
