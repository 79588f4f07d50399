# Two entry points for a fresh clone; each sets itself up (idempotently) first.
#   make demo   run the example pipeline end to end, offline
#   make test   run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/steplog --db runs/demo.db run examples/factory/pipeline.toml --input idea="a command-line todo list"
	$(BIN)/steplog --db runs/demo.db status

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/limits.py

clean:
	rm -rf $(VENV) runs *.egg-info
