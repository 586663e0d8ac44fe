# Two commands on a fresh clone (Python 3.11+ and pip):
#   make run   — set up .venv and start the hub on the embedded default (SQLite in ./var, in-process queue)
#   make test  — set up .venv and run the whole test suite (SQLite and the real PostgreSQL/Redis)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test bench setup

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

run: setup
	$(BIN)/hub serve

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/mllp_throughput.py --db both --markdown-out docs/benchmarks.md
