"""DANE in the lab: TLSA records published for the lab's services, checked by pkinfra's checker
and by independent clients (Postfix's posttls-finger, ldns-dane, openssl's DANE mode) through
the lab's validating resolver; mismatches made with a host's own TSIG key are caught. Forced
renewals and a key rollover under a continuous probe: tests/lab/test_rollover.py."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pkinfra import dane, tsig
from pkinfra.agent.paths import DANE_PUBLISH
from pkinfra.dnsupdate import RFC2136Client, TSIGKey
from pkinfra.tlsa import canonical
from tests.lab.dane_probe import MX1_SMTP, WEB1_HTTPS, DaneProbe, Target
from tests.lab.run import certbot_renew, docker_exec, pyinfra

ROOT = Path(__file__).resolve().parents[2]
SECRETS = ROOT / "pki" / "secrets"
PKINFRA = Path(sys.executable).parent / "pkinfra"
RESOLVER = "172.29.53.53"
DB1 = "172.29.53.30"
# Independent clients run on mon1: a lab host that is neither the server nor the DNS, and whose
# resolv.conf names the lab resolver (with trust-ad), as a remote MTA's would.
CLIENT = "pkinfra-mon1"
MX1_OWNER = "_25._tcp.mx1.example.test"
WEB1_OWNER = "_443._tcp.web1.example.test"

pytestmark = pytest.mark.lab


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PKINFRA), "dane", "check", *args, "--resolver", RESOLVER],
        capture_output=True,
        text=True,
        timeout=60,
    )


def check_json(target: Target) -> tuple[int, dict[str, Any]]:
    """The CLI's exit code and JSON report for a target."""
    args = [f"{target.host}:{target.port}", "--name", target.name, "--json"]
    if target.starttls:
        args += ["--starttls", target.starttls]
    run = check(*args)
    try:
        report = json.loads(run.stdout)
    except ValueError:
        pytest.fail(f"pkinfra dane check printed no JSON: {run.stdout}{run.stderr}")
    return run.returncode, report


def dig_tlsa(owner: str) -> list[str]:
    """The TLSA RRset of ``owner`` from ``dig +dnssec`` through the lab resolver, as rrdata
    strings; the answer must carry the AD flag (the resolver validated it)."""
    dig = subprocess.run(
        ["dig", "+dnssec", f"@{RESOLVER}", owner, "TLSA"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    assert " ad" in dig.split(";; flags:")[1].split(";")[0], dig
    rrdata = []
    for line in dig.splitlines():
        fields = line.split()
        if line.startswith(";") or len(fields) < 8 or fields[3] != "TLSA":
            continue
        rrdata.append(canonical(" ".join(fields[4:])))
    assert rrdata, dig
    return rrdata


def served_tlsa(owner: str) -> tuple[str, set[str]]:
    """(status, records) of ``owner`` as the lab resolver answers now (cache included)."""
    lookup = dane.lookup_tlsa(owner, RESOLVER)
    return lookup.status, {r.to_text() for r in lookup.records}


def flush_resolver_until(owner: str, expected: set[str], within: float = 15.0) -> float:
    """Flush the lab resolver's cache, then wait until it validates exactly ``expected`` for
    ``owner``; return the seconds that took.

    unbound's remote control is not enabled in the lab's rendered unbound.conf (the packaged
    ``unbound.conf.d/remote-control.conf`` is not included), so ``unbound-control flush`` cannot
    work: SIGHUP (reload, which empties every cache) is what the deploy itself sends.
    """
    begin = time.monotonic()
    hup = docker_exec(
        "pkinfra-resolver", "sh", "-c", 'kill -HUP "$(cat /run/unbound.pid)"', timeout=60
    )
    assert hup.returncode == 0, hup.stderr
    seen: tuple[str, set[str]] = ("", set())
    while time.monotonic() - begin < within:
        with contextlib.suppress(dane.DaneError):  # unbound is reloading: no answer for a moment
            seen = served_tlsa(owner)
        if seen == ("secure", expected):
            return time.monotonic() - begin
        time.sleep(0.1)
    pytest.fail(f"after a flush the resolver serves {seen} for {owner}, not {expected}")


def posttls_finger_mx1() -> str:
    """Postfix's DANE client against mx1 from mon1. No CA file or path is given, so only DANE
    can make the connection "Verified"; posttls-finger exits 0 either way."""
    run = docker_exec(
        CLIENT, "posttls-finger", "-c", "-l", "dane", "[mx1.example.test]:25", timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout + run.stderr


@pytest.fixture(scope="module")
def published(site_deployed: str) -> None:
    # A new CA-issued certificate's TLSA record is rendered from the CA store, so it is
    # published by the DNS deploy of the run after the one that issued it: run that one.
    run = pyinfra("deploys/dns.py", inventory="inventory.py", timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


# -- every published service passes pkinfra's checker ----------------------------------------


def test_ca_issued_postgresql_passes_the_checker(published: None) -> None:
    run = check(f"{DB1}:5432", "--name", "db1.example.test", "--starttls", "postgres", "--json")
    report = json.loads(run.stdout)
    assert run.returncode == 0, run.stdout
    assert report["verdict"] == "valid" and report["lookup"]["status"] == "secure"
    assert [r["matched"] for r in report["records"]] == [True]


@pytest.mark.parametrize("target", [MX1_SMTP, WEB1_HTTPS], ids=lambda t: t.label)
def test_acme_services_pass_the_checker(published: None, target: Target) -> None:
    code, report = check_json(target)
    assert code == 0, report
    assert report["verdict"] == "valid"
    lookup = report["lookup"]
    # Asked at the main-zone owner; the resolver followed the CNAME into the shadow zone and
    # validated both zones.
    assert lookup["owner"] == f"_{target.port}._tcp.{target.name}"
    assert lookup["status"] == "secure"
    assert lookup["records"] == dig_tlsa(f"_{target.port}._tcp.{target.name}")
    assert [r["matched"] for r in report["records"]] == [True]
    assert report["chain"][0] == target.name


# -- independent clients agree ---------------------------------------------------------------


def test_postfix_dane_client_verifies_mx1(published: None) -> None:
    out = posttls_finger_mx1()
    [record] = dig_tlsa(MX1_OWNER)
    assert "Verified TLS connection established to mx1.example.test" in out, out
    # Postfix 3.10 with OpenSSL 3.5 (Debian 13) on both ends negotiates a raw public key
    # (RFC 7250), which a 3 1 1 record allows; Postfix 3.7 (Debian 12) matches the certificate.
    matched = (
        f"Matched DANE EE certificate at depth 0: {record.upper()}",
        f"Matched DANE raw public key: {record.upper()}",
    )
    assert any(line in out for line in matched), out


def test_ldns_dane_verifies_web1(published: None) -> None:
    # -T: a PKIX-valid connection without a secure TLSA RRset would be exit 2, not success.
    run = docker_exec(
        CLIENT, "ldns-dane", "-r", RESOLVER, "-T", "verify", "web1.example.test", "443", timeout=60
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "172.29.53.20 dane-validated successfully" in out, out


def openssl_dane(
    target: Target, rrdata: list[str], servername: bool = True
) -> subprocess.CompletedProcess[str]:
    args = ["openssl", "s_client", "-connect", f"{target.host}:{target.port}"]
    if target.starttls:
        args += ["-starttls", target.starttls]
    if servername:
        args += ["-servername", target.name]
    args += ["-dane_tlsa_domain", target.name, "-verify_return_error", "-brief"]
    for data in rrdata:
        args += ["-dane_tlsa_rrdata", data]
    return subprocess.run(args, input="", capture_output=True, text=True, timeout=30)


def test_openssl_dane_client_agrees(published: None) -> None:
    db1 = Target(DB1, 5432, "db1.example.test", "postgres")
    run = openssl_dane(db1, dig_tlsa("_5432._tcp.db1.example.test"), servername=False)
    out = run.stdout + run.stderr
    assert "Verification: OK" in out and "DANE TLSA 3 1 1" in out, out


def test_openssl_dane_client_verifies_web1(published: None) -> None:
    run = openssl_dane(WEB1_HTTPS, dig_tlsa(WEB1_OWNER))
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "Verification: OK" in out and "DANE TLSA 3 1 1" in out, out
    # The same client refuses a record that is not the server's: the check above can fail.
    wrong = openssl_dane(WEB1_HTTPS, ["3 1 1 " + uuid.uuid4().hex * 2])
    assert wrong.returncode != 0 and "Verification: OK" not in wrong.stdout + wrong.stderr


def test_a_name_in_the_unsigned_zone_is_no_dane(published: None) -> None:
    run = check(f"{DB1}:5432", "--name", "db1.unsigned.test", "--starttls", "postgres")
    assert run.returncode == 2, run.stdout


def test_python_api_reports_the_same(published: None) -> None:
    report = dane.check(DB1, 5432, name="db1.example.test", starttls="postgres", resolver=RESOLVER)
    assert report.verdict is dane.Verdict.VALID
    assert report.lookup is not None and report.lookup.owner == "_5432._tcp.db1.example.test"


# -- mismatches, made with mx1's own TSIG key -------------------------------------------------


@dataclass
class ShadowTlsa:
    """mx1's TLSA RRset where its CNAME points (the shadow zone), changed with mx1's own key."""

    client: RFC2136Client
    target: str
    original: set[str]

    def replace(self, values: set[str]) -> None:
        self.client.replace(self.target, "TLSA", sorted(values), 60)
        for value in values:
            self.client.wait_visible(self.target, "TLSA", value, timeout=10)
        for value in self.original - values:
            self.client.wait_visible(self.target, "TLSA", value, present=False, timeout=10)
        flush_resolver_until(MX1_OWNER, values)


@pytest.fixture
def mx1_tlsa(published: None) -> Iterator[ShadowTlsa]:
    """mx1's TLSA RRset to tamper with; afterwards the host's own publisher restores it."""
    key = TSIGKey.from_file(tsig.host_keys(SECRETS, "mx1.example.test").current.path)
    client = RFC2136Client(key, resolvers=[RESOLVER], timeout=3)
    target, _ = client.follow_cnames(MX1_OWNER)
    original = {canonical(v) for v in client.values(target, "TLSA")}
    assert len(original) == 1 and check_json(MX1_SMTP)[0] == 0, original
    try:
        yield ShadowTlsa(client, target.to_text(omit_final_dot=True), original)
    finally:
        restore = docker_exec("pkinfra-mx1", DANE_PUBLISH, timeout=120)
        assert restore.returncode == 0, restore.stdout + restore.stderr
        assert {canonical(v) for v in client.values(target, "TLSA")} == original
        flush_resolver_until(MX1_OWNER, original)
        code, report = check_json(MX1_SMTP)
        assert code == 0, report


def test_a_replaced_rrset_that_matches_nothing_exits_1(mx1_tlsa: ShadowTlsa) -> None:
    wrong = "3 1 1 " + uuid.uuid4().hex * 2
    mx1_tlsa.replace({wrong})
    code, report = check_json(MX1_SMTP)
    assert code == 1, report
    assert report["verdict"] == "mismatch"
    assert report["records"] == [
        {
            "record": wrong,
            "usage": "DANE-EE",
            "usable": True,
            "matched": False,
            "note": "does not match the leaf",
        }
    ]
    # Postfix's DANE client sees the same mismatch: no verified connection.
    out = posttls_finger_mx1()
    assert "Verified TLS connection" not in out, out
    assert "Matched DANE" not in out, out
    # The continuous probe reports it as a failure too (so its "zero failures" means something).
    with DaneProbe([MX1_SMTP, WEB1_HTTPS], interval=0.3) as probe:
        time.sleep(1.5)
    summary = probe.summary
    assert summary is not None
    assert summary.failures and all(r.target == MX1_SMTP.label for r in summary.failures)
    assert set(summary.counts[MX1_SMTP.label]) == {"MISMATCH"}, summary.describe()
    assert set(summary.counts[WEB1_HTTPS.label]) == {"VALID"}, summary.describe()


def test_a_stale_record_beside_the_matching_one_keeps_valid_and_is_reported(
    mx1_tlsa: ShadowTlsa,
) -> None:
    [good] = mx1_tlsa.original
    stale = "3 1 1 " + uuid.uuid4().hex * 2
    mx1_tlsa.replace({good, stale})
    code, report = check_json(MX1_SMTP)
    assert code == 0, report
    assert report["verdict"] == "valid"
    assert {r["record"]: (r["usable"], r["matched"]) for r in report["records"]} == {
        good: (True, True),
        stale: (True, False),
    }
    assert report["summary"] == "1 of 2 usable record(s) match"
    assert any("match nothing" in w for w in report["warnings"]), report


# -- forced renewals under the continuous probe ----------------------------------------------

# container, certbot lineage, the service that serves it
LINEAGES = (("pkinfra-mx1", "mail", MX1_SMTP), ("pkinfra-web1", "web", WEB1_HTTPS))


def renew(container: str, lineage: str) -> None:
    """certbot alone in a clean environment, as cron runs it: its deploy hooks publish TLSA,
    then deliver the files into the service and tell it."""
    run = certbot_renew(container, lineage)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]


def lineage_serial(container: str, lineage: str) -> int:
    path = f"/etc/letsencrypt/live/{lineage}/cert.pem"
    run = docker_exec(container, "openssl", "x509", "-noout", "-serial", "-in", path, timeout=60)
    assert run.returncode == 0, run.stderr
    return int(run.stdout.strip().split("=", 1)[1], 16)


def wait_served(target: Target, serial: int, within: float = 10.0) -> float:
    """Seconds until ``target`` serves the certificate ``serial`` (a reload takes a moment)."""
    begin = time.monotonic()
    served = None
    while time.monotonic() - begin < within:
        chain = dane.fetch_chain(
            target.host, target.port, name=target.name, starttls=target.starttls
        )
        served = chain[0].serial_number
        if served == serial:
            return time.monotonic() - begin
        time.sleep(0.2)
    pytest.fail(f"{target.label} still serves serial {served:x}, not the renewed {serial:x}")
