# Quick start: `make run` (serve on the embedded default) and `make test` (the whole suite with its peers).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PEERS_DIR ?= $(CURDIR)/.peers
export PEERS_DIR
export FHIRVAL_DIR ?= $(PEERS_DIR)/fhirval

.PHONY: run test venv venv-test peers lint samples bench fuzz lock clean

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "python venv support missing: installing python3-venv"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv; \
	  else sudo apt-get install -y python3-venv; fi; \
	  rm -rf $(VENV); $(PYTHON) -m venv $(VENV); }
	@$(BIN)/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	@touch $@ $(VENV)/.installed

venv: $(VENV)/.installed
venv-test: $(VENV)/.installed-test

run: venv
	$(BIN)/python -m adapter serve

peers:
	bash tools/install-peers.sh

# TEST_WORKERS processes run the suite (pytest-xdist), each test file in one of them; 0: in this one.
TEST_WORKERS ?= 2
test: venv-test peers
	$(BIN)/python -m pytest -p no:cacheprovider $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

samples: venv
	$(BIN)/python samples/make_samples.py samples

bench: venv-test peers
	$(BIN)/python benchmarks/ingest.py --start -n 300 -c 8

# Coverage-guided fuzzing of the parsers (fuzz/README.md): not part of `make test`.
fuzz: venv-test
	$(BIN)/pip install -q atheris
	bash fuzz/run.sh

lint: venv-test
	$(BIN)/pip install -q ruff mypy types-PyYAML
	$(BIN)/ruff check adapter tests fuzz
	$(BIN)/mypy

# constraints.txt anew: the runtime dependencies (postgres extra included) as pip resolves pyproject.toml today.
lock: | $(BIN)/python
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q --disable-pip-version-check '.[postgres]'
	{ sed -n '/^#/p' constraints.txt; .lock-venv/bin/pip freeze --exclude-editable | grep -iv '^clinical-image-adapter' | LC_ALL=C sort; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .lock-venv build *.egg-info

clean:
	rm -rf $(VENV) .peers data .pytest_cache
