# Two entry points for a fresh clone; each sets itself up (idempotently) first.
#   make demo       run the example pipeline end to end, offline
#   make test       lint, then run the whole test suite (what CI runs)
#   make test-fast  the daily lane: no subprocess or long fault-loop tests (marker `slow`)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast lint bytecode bench bench-verbs bench-startup bench-concurrency bench-postgres bench-peers screenshot clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/steplog --db runs/demo.db run examples/factory/pipeline.toml --input idea="a command-line todo list"
	$(BIN)/steplog --db runs/demo.db status

# two workers: the machine (and CI) has two cores
PYTEST := $(BIN)/python -m pytest -q -n 2

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The suite starts steplog in hundreds of subprocesses. Compiled once here, the project's modules
# are not compiled again by each of them (they would be with PYTHONDONTWRITEBYTECODE set, or in a
# checkout Python cannot write to): about a quarter of a second saved per `steplog run`.
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q -j 0 -x '/(\.venv|bench/\.peers-venv|\.git)/' .

test: lint bytecode
	$(PYTEST)

test-fast: bytecode
	$(PYTEST) -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/limits.py
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/verbs.py
	$(BIN)/python bench/concurrency.py

# each read verb at 1,000 and 10,000 steps, chain and fan-out, and the 10k/1k ratio (about 3 minutes)
bench-verbs: $(STAMP)
	$(BIN)/python bench/verbs.py

# 1,000 steps against a loopback server answering after 200 ms, 100 at once, beside raw httpx
# (and raw httpx over aiohttp) in the same run (about 1 minute)
bench-concurrency: $(STAMP)
	$(BIN)/python bench/concurrency.py

# start-up of `steplog --help`, `jobs` and `status` against `sqlite-utils --help`, then the
# example's time to the first step as a share of the job, from its log (about 20 s)
bench-startup: $(STAMP)
	$(BIN)/python bench/startup.py

# PostgreSQL beside SQLite (about 2 minutes; --quick about 25 s): starts its own throw-away
# cluster on 127.0.0.1 (needs Debian's postgresql binaries) and stops it. Not part of `make test`.
bench-postgres: $(STAMP)
	$(BIN)/python bench/postgres.py

# LangGraph and DBOS on the same workload as steplog, in the same run (about 2 minutes; the
# first run installs them into bench/.peers-venv, never into the project's). Not part of `make test`.
bench-peers: $(STAMP)
	$(BIN)/python bench/peers.py

# the README's picture of `steplog ui` (docs/ui-job.png), from the running app in headless
# chromium (Debian's /usr/bin/chromium)
screenshot: $(STAMP)
	$(BIN)/python scripts/screenshot.py

clean:
	rm -rf $(VENV) runs *.egg-info
