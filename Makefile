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
	.venv/bin/pkinfra status --resolver 172.29.53.53 --html status.html; \
		echo "pkinfra status exit $$? (0 ok, 1 warning, 2 critical, 3 unknown); report: status.html"

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

unit: setup
	.venv/bin/pytest -q -m "not lab"

# Lint, unit and lab tests; the lab starts (or builds) while lint and the unit tests run.
test: setup
	@bash scripts/test.sh

bench: lab-up
	$(PY) -m bench
