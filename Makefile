# Feynman: `make run` and `make test` do all set-up on a fresh machine (no server, no keys, no internet
# beyond the package registries). The venv is reused while pyproject.toml is unchanged.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/data/dagster_home
UI_PORT ?= 3000

.PHONY: setup run test ui bench clean-data

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Feynman needs Python >= 3.11 (set PYTHON=...)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# the CPU build of torch first: left to the resolver it would fetch a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m orchestration.setup_steps
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/feynman run

test: $(STAMP)
	# layers orchestration > sensors | assets > resources > quant, no cycles, quant pure (pyproject.toml)
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q

ui: $(STAMP)
	$(BIN)/python -m orchestration.setup_steps
	$(BIN)/dagster dev -h 127.0.0.1 -p $(UI_PORT) -w workspace.yaml

bench: $(STAMP)
	$(BIN)/feynman bench all

clean-data:
	-$(BIN)/feynman redis-stop
	rm -rf data
