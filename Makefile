# Thin entry points; the work is in scripts/, lab/ and the deploys.
.PHONY: setup demo test lint unit lab-up lab-down lab-status bench

PY := .venv/bin/python

setup:
	@bash scripts/setup.sh

lab-up: setup
	$(PY) -m lab up

lab-down: setup
	$(PY) -m lab down

lab-status: setup
	$(PY) -m lab status

demo: lab-up
	.venv/bin/pyinfra -y inventory.py lab/site.py

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

unit: setup
	.venv/bin/pytest -q -m "not lab"

test: lint lab-up
	.venv/bin/pytest -q

bench: lab-up
	$(PY) -m bench
