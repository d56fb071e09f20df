# dynscreen: make setup | run | demo | test | bench  (as root)
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup run demo test bench lint clean

setup:
	@bash scripts/setup.sh

run: setup
	$(VENV)/bin/dynscreen run

demo: setup
	$(PY) -m dynscreen.control.lab demo

test: setup
	$(VENV)/bin/ruff check bpf control cli tests bench
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(PY) bench/run.py

lint: setup
	$(VENV)/bin/ruff check bpf control cli tests bench

clean:
	rm -rf $(VENV) .pytest_cache
