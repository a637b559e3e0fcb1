"""DANE in the lab: TLSA records published for the lab's services, checked by pkinfra's checker
and by independent clients (openssl's DANE mode) through the lab's validating resolver."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pkinfra import dane

ROOT = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).parent / "pyinfra"
PKINFRA = Path(sys.executable).parent / "pkinfra"
RESOLVER = "172.29.53.53"
DB1 = "172.29.53.30"

pytestmark = pytest.mark.lab


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PKINFRA), "dane", "check", *args, "--resolver", RESOLVER],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def published(site_deployed: str) -> None:
    # A new CA-issued certificate's TLSA record is rendered from the CA store, so it is
    # published by the DNS deploy of the run after the one that issued it: run that one.
    run = subprocess.run(
        [str(PYINFRA), "-y", "inventory.py", "deploys/dns.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def test_ca_issued_postgresql_passes_the_checker(published: None) -> None:
    run = check(f"{DB1}:5432", "--name", "db1.example.test", "--starttls", "postgres", "--json")
    report = json.loads(run.stdout)
    assert run.returncode == 0, run.stdout
    assert report["verdict"] == "valid" and report["lookup"]["status"] == "secure"
    assert [r["matched"] for r in report["records"]] == [True]


def test_openssl_dane_client_agrees(published: None) -> None:
    dig = subprocess.run(
        ["dig", "+dnssec", f"@{RESOLVER}", "_5432._tcp.db1.example.test", "TLSA"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    assert " ad" in dig.split(";; flags:")[1].split(";")[0], dig
    rrdata = [
        line.split("TLSA", 1)[1].strip()
        for line in dig.splitlines()
        if "\tTLSA\t" in line and not line.startswith(";")
    ]
    assert rrdata, dig
    args = [
        "openssl",
        "s_client",
        "-connect",
        f"{DB1}:5432",
        "-starttls",
        "postgres",
        "-dane_tlsa_domain",
        "db1.example.test",
        "-verify_return_error",
        "-brief",
    ]
    for data in rrdata:
        args += ["-dane_tlsa_rrdata", data]
    run = subprocess.run(args, input="", capture_output=True, text=True, timeout=30)
    out = run.stdout + run.stderr
    assert "Verification: OK" in out and "DANE TLSA 3 1 1" in out, out


def test_a_name_in_the_unsigned_zone_is_no_dane(published: None) -> None:
    run = check(f"{DB1}:5432", "--name", "db1.unsigned.test", "--starttls", "postgres")
    assert run.returncode == 2, run.stdout


def test_python_api_reports_the_same(published: None) -> None:
    report = dane.check(DB1, 5432, name="db1.example.test", starttls="postgres", resolver=RESOLVER)
    assert report.verdict is dane.Verdict.VALID
    assert report.lookup is not None and report.lookup.owner == "_5432._tcp.db1.example.test"
