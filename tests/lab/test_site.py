"""lab/site.py against the real lab: every host is reached (managed hosts over SSH as a sudo
user) and converged."""

from __future__ import annotations

import re
import subprocess

import pytest

from lab.topology import HOSTS as LAB_HOSTS
from lab.topology import pyinfra_name
from tests.lab.run import pyinfra

HOSTS = [pyinfra_name(role) for role in LAB_HOSTS]

pytestmark = pytest.mark.lab


def run_site(*args: str) -> subprocess.CompletedProcess[str]:
    return pyinfra("lab/site.py", *args, inventory="inventory.py", timeout=600)


@pytest.fixture(scope="module")
def site_run(site_deployed: str) -> subprocess.CompletedProcess[str]:
    return run_site()


def test_site_reaches_every_lab_host(site_run: subprocess.CompletedProcess[str]) -> None:
    out = site_run.stdout + site_run.stderr
    assert site_run.returncode == 0, out
    connected = set(re.findall(r"\[([^\]]+)\]\s+Connected", out))
    assert connected == set(HOSTS), out[-3000:]
    for name in HOSTS:
        assert re.search(rf"\[{re.escape(name)}\]\s+Ready: lab/site.py", out), name
    # No host errored in any operation of the results table.
    total = re.search(r"Grand total\s+(\d+)\s+(\S+)\s+(\S+)", out)
    assert total is not None, out
    assert total.group(3) == "-", f"errors: {total.group(3)}"


def test_second_run_changes_nothing(site_run: subprocess.CompletedProcess[str]) -> None:
    again = run_site()
    out = again.stdout + again.stderr
    assert again.returncode == 0, out
    total = re.search(r"Grand total\s+(\d+)\s+(\S+)\s+(\S+)\s+(\d+)", out)
    assert total is not None, out
    assert total.group(2) == "-", f"a second run changed something:\n{out[-6000:]}"
    assert total.group(4) == total.group(1)


def test_limit_runs_one_host_with_the_whole_inventory_validated(lab_up: object) -> None:
    # --limit narrows the hosts pyinfra touches, not the model (grants need every host).
    run = pyinfra("lab/site.py", "--limit", "mon1.example.test", "--dry", inventory="inventory.py")
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "[mon1.example.test]" in out
    assert "[mx1.example.test]" not in out
