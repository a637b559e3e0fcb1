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
rm -rf "$LOGS/tmp-unit" "$LOGS/tmp-lab" "$LOGS/tmp-twin"
say() { printf 'test: %s\n' "$*" >&2; }
started=$(date +%s)

# At a lower CPU priority: the two labs' tests wait on DNS, TTLs and daemons within bounds; the
# unit tests only take longer.
(
  set -e
  renice -n 10 -p "$BASHPID" >/dev/null
  "$BIN/ruff" check .
  "$BIN/ruff" format --check .
  "$BIN/mypy"
  "$BIN/pytest" -q -m "not lab" -p no:cacheprovider --basetemp="$LOGS/tmp-unit"
) >"$LOGS/unit.log" 2>&1 &
unit=$!
say "lint and unit tests running (log: $LOGS/unit.log)"

# Only the images here: each lab's first test (the main lab's down/up round trip, the twin's
# lab_up fixture) makes the containers, so that they are not made twice.
lab_status=0
twin_status=0
"$BIN/python" -m lab images || lab_status=$?
if [ "$lab_status" -ne 0 ]; then
  say "lab images failed (exit $lab_status): no lab test ran"
elif [ "${PKINFRA_TWIN:-1}" = 0 ]; then
  say "lab tests (one lab: PKINFRA_TWIN=0)"
  "$BIN/pytest" -q -m lab --durations=25 --basetemp="$LOGS/tmp-lab" || lab_status=$?
else
  # Two labs side by side (lab/twin.py): the twin's modules (tests/lab/shards.py) run in a
  # second lab with its own namespace, engine and work tree; its log is shown when it ends.
  main_modules=$("$BIN/python" -m tests.lab.shards main)
  twin_modules=$("$BIN/python" -m tests.lab.shards twin)
  say "twin lab tests running (log: $LOGS/twin.log): $twin_modules"
  "$BIN/python" -m lab twin run -- .venv/bin/pytest -q -m lab --durations=15 \
    -p no:cacheprovider --basetemp="$PWD/$LOGS/tmp-twin" $twin_modules >"$LOGS/twin.log" 2>&1 &
  twin=$!
  say "lab tests (main lab)"
  # shellcheck disable=SC2086
  "$BIN/pytest" -q -m lab --durations=25 --basetemp="$LOGS/tmp-lab" $main_modules || lab_status=$?
  wait "$twin" || twin_status=$?
  if [ "$twin_status" -eq 0 ]; then
    say "twin lab tests passed:"
    sed -n '/slowest/,$p' "$LOGS/twin.log" >&2
  else
    say "twin lab tests failed (exit $twin_status):"
    cat "$LOGS/twin.log" >&2
  fi
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
say "lab: exit $lab_status; twin lab: exit $twin_status; lint and unit: exit $unit_status;" \
  "$(($(date +%s) - started)) s"
[ "$lab_status" -eq 0 ] && [ "$twin_status" -eq 0 ] && [ "$unit_status" -eq 0 ]
