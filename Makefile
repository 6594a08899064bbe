# The two commands a new user needs:
#   make run    set up everything, then serve the bundled default model on 127.0.0.1:8000
#   make test   set up everything, then run format check, lint, type check and the test suite
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: run test setup check lint clean bench

setup:
	@bash scripts/setup.sh

run: setup
	$(PY) -m rawstream serve $(ARGS)

check:
	$(VENV)/bin/ruff format --check rawstream tests benchmarks docs
	$(VENV)/bin/ruff check rawstream tests benchmarks docs
	$(VENV)/bin/mypy

test: setup
	@bash scripts/setup.sh --test-tools
	$(MAKE) check
	$(PY) -m pytest -q -p no:cacheprovider $(ARGS)

# The benchmark matrix (benchmarks/run.py); `make bench BENCH=--quick` takes a minute.
BENCH ?= --full
bench: setup
	$(VENV)/bin/pip install -q -e '.[bench]'
	$(PY) -m benchmarks.run $(BENCH)

clean:
	rm -rf $(VENV) build *.egg-info
