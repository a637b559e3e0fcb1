"""Key rollover of the lab's ACME certificates (mx1's SMTP, web1's HTTPS) without a DANE gap.

A probe checks both services every 0.5 s through the lab's caching, validating resolver (as a
remote MTA or browser would, cache included) while certbot renews each certificate three times
on its own and pyinfra then rolls both keys over, step 1 and step 2 in one run
(``rollover_wait``). Not one check may fail. A second module-level test takes the primary away
during a renewal and a pending rollover.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from pkinfra import tlsa
from pkinfra.ca import CAStore
from pkinfra.model import load_inventory_file
from tests.helpers import lab_inventory_copy
from tests.lab.dane_probe import DB1_POSTGRES, DaneProbe
from tests.lab.run import INVENTORY, certbot_renew, limited_run, sh, site_run
from tests.lab.test_dane import LINEAGES, lineage_serial, renew, wait_served
from tests.lab.tlsd_host import DB1, in_place, inventory_with

ROOT = Path(__file__).resolve().parents[2]
# container -> (lineage, the file its service serves, the shadow name its TLSA owner points to)
HOSTS = {
    "pkinfra-mx1": ("mail", "/etc/postfix/tls/mail.crt", "_25._tcp.mx1.example.test.shadow.test"),
    "pkinfra-web1": ("web", "/etc/nginx/tls/web.crt", "_443._tcp.web1.example.test.shadow.test"),
}
NS = ("172.29.53.10", "172.29.53.11")

pytestmark = pytest.mark.lab


def record_of(container: str, path: str) -> str:
    pem = sh(container, f"cat {path}").stdout.encode()
    return tlsa.TLSARecord.from_pem(pem).to_text()


def authoritative(owner: str) -> list[set[str]]:
    """The TLSA RRset each authoritative server serves at ``owner`` (asked directly)."""
    sets = []
    for server in NS:
        out = subprocess.run(
            ["dig", "+short", "+norec", f"@{server}", owner, "TLSA"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        sets.append({tlsa.canonical(line) for line in out.splitlines() if line.strip()})
    return sets


def state(container: str, lineage: str) -> dict[str, object]:
    out = sh(container, f"cat /etc/pkinfra/rollover/{lineage}.json 2>/dev/null || echo null")
    loaded = json.loads(out.stdout)
    return loaded if isinstance(loaded, dict) else {}


@pytest.fixture
def rollover_inventory(site_deployed: str, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """The lab inventory with a new rollover label on mx1's and web1's certificates, and a run
    allowed to wait for step 2."""
    label = f"lab{int(time.time())}"
    # Earlier lab tests re-create lineages and change TLSA sets (and a delivery may be waiting
    # for its record): start from the converged state the probe is meant to watch.
    limited_run(INVENTORY, "deploys/dane.py deploys/services.py", ("mail", "web"))
    lab_inventory_copy(tmp_path)
    text = (tmp_path / "inventory.py").read_text()
    for marker in ('"challenge": "dns-01",', '"webroot": "/var/www/acme",'):
        assert text.count(marker) == 1, marker
        text = text.replace(marker, f'{marker} "rollover": "{label}",')
    (tmp_path / "inventory.py").write_text(text)
    with (tmp_path / "group_data" / "all.py").open("a") as out:
        out.write("\nrollover_wait = 90\n")
    yield tmp_path / "inventory.py", label


def deploy(inventory: Path, *extra: str) -> str:
    out = limited_run(inventory, "deploys/dane.py", ("mail", "web"), *extra)
    assert "[mx1.example.test]" in out, out[-3000:]
    return out


def test_renewals_and_a_key_rollover_never_break_dane(
    rollover_inventory: tuple[Path, str],
) -> None:
    inventory, label = rollover_inventory
    before = {c: record_of(c, served) for c, (_, served, _) in HOSTS.items()}
    with DaneProbe([t for *_, t in LINEAGES]) as probe:
        time.sleep(1)  # a few checks before the first renewal
        for n in range(1, 4):
            for container, lineage, target in LINEAGES:
                serial = lineage_serial(container, lineage)
                with probe.phase(f"renew {lineage} #{n}"):
                    renew(container, lineage)
                    renewed_serial = lineage_serial(container, lineage)
                    assert renewed_serial != serial, f"{lineage}: certbot did not renew"
                    wait_served(target, renewed_serial)
        renewed = {c: record_of(c, served) for c, (_, served, _) in HOSTS.items()}
        with probe.phase("key rollover"):
            out = deploy(inventory)
        time.sleep(2)  # a few checks after the end, against the final state
    summary = probe.summary
    assert summary is not None
    print(summary.describe())

    assert renewed == before, "renewals keep the key (and so the record)"
    for container, (lineage, served, owner) in HOSTS.items():
        after = record_of(container, served)
        assert after != before[container], f"{container}: the service has the new key"
        assert record_of(container, f"/etc/letsencrypt/live/{lineage}/privkey.pem") == after
        assert authoritative(owner) == [{after}, {after}], f"{owner}: only the new record"
        st = state(container, lineage)
        assert st["step"] == "done" and st["label"] == label, st
        assert sh(container, f"test -e /etc/letsencrypt/live/{lineage}-next").returncode == 1
    assert "step 1 (next key, TLSA for both keys), then step 2 after the TTL" in out

    assert summary.failures == [], summary.describe()
    for *_, target in LINEAGES:
        assert summary.checks(target.label) >= 60, summary.describe()
    # The run waits out the shadow zone's TLSA TTL: the probe kept checking both targets through
    # that wait (at least one check in two intervals: a check may take longer than one).
    ttl = load_inventory_file(inventory).settings.shadow_zone.tlsa_ttl
    least = len(LINEAGES) * ttl / (2 * probe.interval)
    assert summary.phases["key rollover"] >= least, summary.describe()
    renewals = [f"renew {lineage} #{n}" for n in range(1, 4) for _, lineage, _ in LINEAGES]
    assert all(summary.phases[phase] > 0 for phase in renewals), summary.describe()

    again = deploy(inventory, "-v")
    assert f"key rollover mail: rolled over to '{label}'" in again
    assert f"key rollover web: rolled over to '{label}'" in again


def test_primary_down_renewal_goes_on_and_step_two_refuses(site_deployed: str) -> None:
    container, (lineage, served, owner) = "pkinfra-web1", HOSTS["pkinfra-web1"]
    label = f"down{int(time.time())}"
    start = sh(container, f"pkinfra-rollover start {lineage} --label {label}")
    assert start.returncode == 0, start.stdout + start.stderr
    key = record_of(container, served)
    serial = sh(container, f"openssl x509 -in {served} -noout -serial").stdout
    stop = sh("pkinfra-ns1", "rndc stop")
    assert stop.returncode == 0, stop.stderr
    try:
        # The renewal keeps the key: the published record still matches, so it goes on (the
        # TLSA hook cannot reach the primary and says so; the delivery needs no new record).
        run = certbot_renew(container, lineage)
        out = run.stdout + run.stderr
        assert "pkinfra-dane-publish" in out, out
        assert sh(container, f"openssl x509 -in {served} -noout -serial").stdout != serial, out
        assert record_of(container, served) == key

        # Step 2 refuses while the next record cannot be seen on every server, and says why.
        finish = sh(container, f"pkinfra-rollover finish {lineage} --wait 0")
        assert finish.returncode == 1, finish.stdout + finish.stderr
        assert "step 2 refused" in finish.stderr and len(finish.stderr.strip().splitlines()) == 1
        assert record_of(container, served) == key
        assert state(container, lineage)["step"] == "published"
    finally:
        started = sh(
            "pkinfra-ns1",
            "/etc/init.d/named start >/dev/null 2>&1; for i in $(seq 50); do "
            "rndc status >/dev/null 2>&1 && exit 0; sleep 0.2; done; exit 1",
        )
        assert started.returncode == 0, started.stdout + started.stderr
        undo = sh(container, f"pkinfra-rollover abort {lineage}")
    assert undo.returncode == 0 and "aborted" in undo.stdout, undo.stdout + undo.stderr
    assert authoritative(owner) == [{key}, {key}]


def test_ca_issued_key_rollover_never_breaks_dane(site_deployed: str, tmp_path: Path) -> None:
    """db1's PostgreSQL certificate (CA duckcorp): step 1, then step 2 once the next record
    has been served for the TTL, then the old key retired and its record gone; the probe checks
    db1:5432 (STARTTLS postgres) all along."""
    label = f"ca{int(time.time())}"
    # A service reading the certificate in place (lab/tlsd.py, reloads on SIGUSR2) is told of
    # the switch once, and only after the DANE gate let it through.
    DB1.start()
    inventory = inventory_with(tmp_path, {"db": [in_place(DB1, "postgres")]})
    original = '{"name": "postgres", "names": ["db1.example.test"], "issuer": "duckcorp"}'
    text = inventory.read_text()
    assert original in text
    inventory.write_text(text.replace(original, original[:-1] + f', "rollover": "{label}"}}'))
    with (tmp_path / "group_data" / "all.py").open("a") as settings:
        settings.write("\nrollover_wait = 60\n")
    container, served = "pkinfra-db1", "/etc/postgresql/tls/server.crt"
    owner = "_5432._tcp.db1.example.test"
    before = record_of(container, served)
    postmaster = sh(container, "head -n1 /var/run/postgresql/15-main.pid").stdout.strip()

    with DaneProbe([DB1_POSTGRES]) as probe:
        with probe.phase("run 1: step 1"):
            out = site_run(inventory)
        assert "step 1: next key and certificate" in out
        assert state(container, "postgres")["step"] == "issued"
        assert record_of(container, served) == before
        assert tlsa.TLSARecord.from_pem(DB1.served().public_bytes(Encoding.PEM)).to_text() == before
        told = DB1.reloads()
        with probe.phase("run 2: published, TTL, switch"):
            out = site_run(inventory)
        assert "then step 2 after the TTL" in out
        after = record_of(container, served)
        assert after != before, "PostgreSQL serves the next key"
        assert record_of(container, "/etc/pkinfra/certs/postgres/key.pem") == after
        DB1.wait_serving(DB1.file_serial())
        assert tlsa.TLSARecord.from_pem(DB1.served().public_bytes(Encoding.PEM)).to_text() == after
        assert DB1.reloads() == told + 1, DB1.lines()
        # The old record stays until the old key is retired.
        assert authoritative(owner) == [{before, after}] * 2
        with probe.phase("run 3: retire"):
            out = site_run(inventory)
        assert state(container, "postgres")["step"] == "done"
        with probe.phase("run 4: old record gone"):
            out = site_run(inventory)
        time.sleep(1)
    summary = probe.summary
    assert summary is not None
    print(summary.describe())
    assert summary.failures == [], summary.describe()
    assert summary.checks(DB1_POSTGRES.label) >= 40, summary.describe()

    assert authoritative(owner) == [{after}] * 2
    assert sh(container, "test -e /etc/pkinfra/certs/postgres/next").returncode == 1
    assert sh(container, "head -n1 /var/run/postgresql/15-main.pid").stdout.strip() == postmaster
    # Every certificate of the old key is revoked (superseded); the new key's are valid.
    old_spki, new_spki = before.split()[-1], after.split()[-1]
    now = dt.datetime.now(dt.UTC)
    records = [
        r
        for r in CAStore(ROOT / "pki").list_issued("duckcorp")
        if r.host == "db1.example.test" and r.cert_name in ("postgres", "postgres-next")
    ]
    old = [r for r in records if r.spki_sha256 == old_spki]
    # (one may have been revoked before, by an earlier test, for another reason)
    assert old and all(r.revoked_at is not None for r in old), old
    assert any(r.revocation_reason == "superseded" for r in old), old
    assert any(r.spki_sha256 == new_spki and r.status_at(now) == "valid" for r in records)
    # Done: the rollover has no operation left to plan, and the certificate is current.
    again = site_run(inventory, "-v")
    assert "Key rollover" not in again and "Next certificate" not in again, again[-3000:]
    assert "certificate postgres is current" in again
    assert DB1.reloads() == told + 1 and all("SIGUSR2" in line for line in DB1.lines())
    DB1.stop(forget=True)
