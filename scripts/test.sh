#!/usr/bin/env bash
# `make test`: lint, the unit tests and the lab tests, with what can overlap overlapped.
#
# The lab's images build (if missing) while lint and the unit tests run, and the
# unit tests go on while the lab tests start: the lab tests spend most of their time waiting
# for DNS, certbot and TTLs, the unit tests use a CPU. Lint and unit output goes to a log that
# is shown when they end (all of it if they failed); the lab's progress is shown as it happens.
# The exit status is non-zero if any part failed.
set -uo pipefail
cd "$(dirname "$0")/.."

BIN=.venv/bin
LOGS=build/test
mkdir -p "$LOGS"
rm -rf "$LOGS/tmp-unit" "$LOGS/tmp-lab"
say() { printf 'test: %s\n' "$*" >&2; }
started=$(date +%s)

(
  set -e
  "$BIN/ruff" check .
  "$BIN/ruff" format --check .
  "$BIN/mypy"
  "$BIN/pytest" -q -m "not lab" -p no:cacheprovider --basetemp="$LOGS/tmp-unit"
) >"$LOGS/unit.log" 2>&1 &
unit=$!
say "lint and unit tests running (log: $LOGS/unit.log)"

# Only the images here: the lab tests' first test (the down/up round trip) makes the containers,
# so that they are not made twice.
lab_status=0
"$BIN/python" -m lab images || lab_status=$?
if [ "$lab_status" -eq 0 ]; then
  say "lab tests"
  "$BIN/pytest" -q -m lab --durations=25 --basetemp="$LOGS/tmp-lab" || lab_status=$?
else
  say "lab images failed (exit $lab_status): no lab test ran"
fi

unit_status=0
wait "$unit" || unit_status=$?
if [ "$unit_status" -eq 0 ]; then
  say "lint and unit tests passed:"
  grep -E "^(All checks passed|[0-9]+ files? already formatted|Success:)|passed" "$LOGS/unit.log" >&2
else
  say "lint or unit tests failed (exit $unit_status):"
  cat "$LOGS/unit.log" >&2
fi
say "lab: exit $lab_status; lint and unit: exit $unit_status; $(($(date +%s) - started)) s"
[ "$lab_status" -eq 0 ] && [ "$unit_status" -eq 0 ]
