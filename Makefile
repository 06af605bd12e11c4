# Set-up and entry points. `make test` and `make demo` do all the set-up on a fresh machine.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cnnspark-installed
PYTEST_ARGS ?=

.PHONY: setup test demo bench clean-venv

setup: $(STAMP)

$(STAMP): requirements/lock.txt setup.cfg scripts/build_horovod.sh
	@bash scripts/ensure_java.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel cmake
	$(PY) -m pip install -q -r requirements/lock.txt
	$(PY) -m pip install -q --no-deps -e .
	bash scripts/build_horovod.sh $(PY)
	@touch $(STAMP)

test: setup
	@bash scripts/ensure_java.sh
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	@bash scripts/ensure_java.sh
	$(VENV)/bin/cnnspark demo

bench: setup
	$(PY) benchmarks/ingest.py

clean-venv:
	rm -rf $(VENV)
