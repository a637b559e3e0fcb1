"""Runs every operation fixture under tests/operations/ (see harness.py)."""

from __future__ import annotations

import importlib

import pytest

from tests.operations.harness import Case, cases, run_operation

ALL = list(cases())


@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_operation(case: Case) -> None:
    expected_exc = case.data.get("exception")
    if expected_exc:
        with pytest.raises(Exception) as info:
            run_operation(case.module, case.operation, case.data)
        assert type(info.value).__name__ == expected_exc["name"]
        assert expected_exc["message"] in str(info.value)
        return
    commands, host = run_operation(case.module, case.operation, case.data)
    assert commands == case.data["commands"]
    assert host.noop_description == case.data.get("noop_description")
    # Why it changes something, as a run and --dry print it (nothing said: no "announced").
    assert host.announced == case.data.get("announced", [])


def test_every_operation_has_an_already_converged_case() -> None:
    ops = {c.id.split("/")[0] for c in ALL}
    # Every operation of operations/ (and the lab's own), not only those with fixtures already.
    defined = set()
    for module in ("acme", "dane", "dns", "pki", "services", "system", "lab"):
        mod = importlib.import_module(
            "lab.operations" if module == "lab" else f"operations.{module}"
        )
        defined |= {
            f"{module}.{name}"
            for name, value in vars(mod).items()
            if hasattr(value, "_inner") and getattr(value, "__module__", "") == mod.__name__
        }
    assert defined - ops == set(), f"operations without fixtures: {defined - ops}"
    converged = {
        c.id.split("/")[0]
        for c in ALL
        if not c.data.get("commands") and c.data.get("noop_description")
    }
    assert ops, "no operation fixtures found"
    assert ops == converged, f"operations without an already-converged case: {ops - converged}"


def test_every_case_that_changes_something_says_why() -> None:
    """Every operation that would change something says why in one line (``announce``, printed
    by a run and by ``--dry`` alike), and each such case records that line."""
    silent = [c.id for c in ALL if c.data.get("commands") and not c.data.get("announced")]
    assert silent == [], f"cases whose commands come without a reason: {silent}"
