"""Fixtures for tests against the Docker lab: `lab_up` brings the lab up once per session.

A lab test takes `lab_up` (the `LabStatus` after `lab.up()`) and may use `docker_client`.
The destructive down/up round trip runs first in the session, before any other lab test has put
state into the containers it recreates.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import lab
from lab.engine import connect
from tests.lab.run import pyinfra


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "lab_roundtrip: runs `lab down` + `lab up`; always first in the session",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    roundtrip = [item for item in items if item.get_closest_marker("lab_roundtrip")]
    if not roundtrip:
        return
    # First in the session: recreating every container after other lab tests have deployed
    # into them would pull the ground from under the tests that follow.
    items[:] = roundtrip + [item for item in items if item not in roundtrip]


@pytest.fixture(scope="session")
def lab_up() -> lab.LabStatus:
    """The lab, up and current (built and started if needed), once per test session."""
    try:
        return lab.up()
    except lab.LabError as exc:
        pytest.fail(f"lab up failed: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A docker SDK client for the local engine."""
    try:
        client = connect()
    except lab.LabError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield client
    client.close()


@pytest.fixture(scope="session")
def site_deployed(lab_up: lab.LabStatus) -> str:
    """The whole lab site deployed once per session (``lab/site.py``, as ``make demo`` does):
    every lab module starts from a converged lab and deploys only what it changes."""
    run = pyinfra("lab/site.py", inventory="inventory.py", timeout=900)
    out = run.stdout + run.stderr
    if run.returncode != 0:
        pytest.fail(f"lab/site.py failed:\n{out[-6000:]}", pytrace=False)
    return out
