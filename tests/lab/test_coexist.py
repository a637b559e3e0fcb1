"""pkinfra on a site whose admin keeps BIND, Postfix, PostgreSQL and nginx by hand: a run of the
product (``deploys/site.py``, nothing lab-only) delivers, reloads and publishes, and leaves every
file of the admin's byte for byte as it was (the one documented exception: the serial of a zone
the admin keeps moves when pkinfra's include file for it changes).

The run uses a copy of the lab inventory in which web1 also publishes its ACME certificate's
record in the kept zone: pkinfra's include file then holds a delegation CNAME into the shadow
zone as well as a CA-issued TLSA record. The lab inventory is run again afterwards."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from lab.topology import HOSTS
from pkinfra import tlsa, zones
from tests.helpers import lab_inventory_copy
from tests.lab.run import docker, pyinfra
from tests.lab.test_pki import totals

pytestmark = pytest.mark.lab

LAYOUT = zones.Layout()
ADMIN_ZONE = "unsigned.test"
ADMIN_ZONE_FILE = "/etc/bind/db.unsigned.test"
#: container -> the files its admin keeps (what the lab's admin steps under lab/deploys wrote).
ADMINS_FILES = {
    "pkinfra-ns1": ["/etc/bind/named.conf", LAYOUT.options_file, LAYOUT.include_into],
    "pkinfra-ns2": ["/etc/bind/named.conf", LAYOUT.options_file, LAYOUT.include_into],
    "pkinfra-mx1": ["/etc/postfix/main.cf", "/etc/postfix/master.cf"],
    "pkinfra-db1": [
        "/etc/postgresql/15/main/postgresql.conf",
        "/etc/postgresql/15/main/pg_hba.conf",
        "/etc/postgresql/15/main/pg_ident.conf",
        "/etc/postgresql/15/main/conf.d/pkinfra-tls.conf",
    ],
    "pkinfra-web1": ["/etc/nginx/nginx.conf", "/etc/nginx/sites-enabled/default"],
}
#: web1's certificate published in the kept zone too (copy of the inventory): a delegation.
WEB_TLSA = '"tlsa": [{"port": 443, "certificate": "web"}]'
KEPT_OWNER = f"_443._tcp.www.{ADMIN_ZONE}"
KEPT_TARGET = f"{KEPT_OWNER}.shadow.test"
SERIAL = re.compile(r"^(\s*)(\d{10})(\s*; serial)", re.M)


def digests() -> dict[str, str]:
    found = {}
    for container, paths in ADMINS_FILES.items():
        out = docker(container, "sha256sum " + " ".join(paths))
        for line in out.splitlines():
            digest, path = line.split()
            found[f"{container}:{path}"] = digest
    return found


def admin_zone() -> str:
    return docker("pkinfra-ns1", f"cat {ADMIN_ZONE_FILE}")


def served(server: str, name: str, rdtype: str) -> list[str]:
    out = subprocess.run(
        ["dig", "+norec", "+short", "+time=2", "+tries=1", f"@{server}", name, rdtype],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    return sorted(line.strip().lower() for line in out.splitlines() if line.strip())


def assert_published(target: str, record: str, timeout: float = 30) -> None:
    """web1's agent publishes its record at ``target`` by RFC 2136 after the run's delivery: every
    authoritative server serves it within ``timeout``."""
    want = tlsa.canonical(record)
    deadline = time.monotonic() + timeout
    while True:
        sets = [
            {tlsa.canonical(r) for r in served(server, target, "TLSA")}
            for server in (HOSTS["ns1"], HOSTS["ns2"])
        ]
        if all(want in found for found in sets):
            return
        assert time.monotonic() < deadline, f"{target}: {sets}, not {want}"
        time.sleep(0.5)


def spki(container: str, cert: str) -> str:
    return docker(
        container,
        f"openssl x509 -in {cert} -noout -pubkey | openssl pkey -pubin -outform DER | sha256sum",
    ).split()[0]


def with_delegation_in_the_kept_zone(directory: Path) -> Path:
    inventory = lab_inventory_copy(directory)
    text = inventory.read_text()
    assert text.count(WEB_TLSA) == 1
    added = WEB_TLSA[:-1] + f', {{"port": 443, "certificate": "web", "name": "www.{ADMIN_ZONE}"}}]'
    inventory.write_text(text.replace(WEB_TLSA, added))
    return inventory


def test_product_run_keeps_the_admins_files_and_serves_the_kept_zone(
    site_deployed: str, tmp_path: Path
) -> None:
    inventory = with_delegation_in_the_kept_zone(tmp_path)
    try:
        _product_run_keeps_the_admins_files(inventory)
    finally:
        restored = pyinfra("deploys/site.py")
        assert restored.returncode == 0, (restored.stdout + restored.stderr)[-4000:]
    assert served(HOSTS["ns1"], KEPT_OWNER, "CNAME") == []


def _product_run_keeps_the_admins_files(inventory: Path) -> None:
    # From a converged site: earlier lab tests leave work behind (a TLSA set, a held delivery).
    converge = pyinfra("deploys/site.py")
    assert converge.returncode == 0, (converge.stdout + converge.stderr)[-4000:]
    before, zone_before = digests(), admin_zone()
    assert "$INCLUDE" in zone_before and 'info\tIN\tTXT\t"kept by hand"' in zone_before
    postfix_pid = docker("pkinfra-mx1", "systemctl show -p MainPID --value postfix@-").strip()
    cursor = (
        docker("pkinfra-mx1", "journalctl -n 0 --show-cursor --no-pager")
        .rsplit("-- cursor: ", 1)[1]
        .strip()
    )
    # Work for pkinfra: a delivered copy lost on mx1, its include file for the kept zone gone.
    docker("pkinfra-mx1", "rm -f /etc/postfix/tls/mail.crt")
    docker("pkinfra-ns1", f"rm -f {LAYOUT.admin_include(ADMIN_ZONE)}")

    run = pyinfra("deploys/site.py", inventory=inventory)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert totals(out)[2] == "-", out[-4000:]

    assert digests() == before, "a file the admin keeps was changed"
    zone_after = admin_zone()
    assert SERIAL.sub(r"\1SERIAL\3", zone_after) == SERIAL.sub(r"\1SERIAL\3", zone_before)
    old, new = (int(SERIAL.search(z).group(2)) for z in (zone_before, zone_after))  # type: ignore[union-attr]
    assert new > old, "the serial moves when pkinfra's include changes"
    # Postfix has its files again and was told by a reload through systemd, not a restart.
    assert spki("pkinfra-mx1", "/etc/postfix/tls/mail.crt") == spki(
        "pkinfra-mx1", "/etc/letsencrypt/live/mail/cert.pem"
    )
    journal = docker("pkinfra-mx1", f"journalctl -o cat --no-pager --after-cursor '{cursor}'")
    assert "Reloading" in journal, journal[-2000:]
    assert docker("pkinfra-mx1", "systemctl show -p MainPID --value postfix@-").strip() == (
        postfix_pid
    )
    # Every authoritative server serves the kept zone with the admin's records and pkinfra's.
    web_record = tlsa.TLSARecord.from_pem(
        docker("pkinfra-web1", "cat /etc/letsencrypt/live/web/cert.pem").encode()
    ).to_text()
    want = f"3 1 1 {spki('pkinfra-db1', '/etc/pkinfra/certs/postgres/cert.pem')}"
    for server in (HOSTS["ns1"], HOSTS["ns2"]):
        assert served(server, f"info.{ADMIN_ZONE}", "TXT") == ['"kept by hand"'], server
        kept = served(server, f"_5432._tcp.db1.{ADMIN_ZONE}", "TLSA")
        assert [t.replace(" ", "") for t in kept] == [want.replace(" ", "")], (server, kept)
        soa = served(server, ADMIN_ZONE, "SOA")
        assert soa and soa[0].split()[2] == str(new), (server, soa)
        # pkinfra's delegation in the kept zone, and the record web1 published at its target.
        assert served(server, KEPT_OWNER, "CNAME") == [f"{KEPT_TARGET}."], server
    assert_published(KEPT_TARGET, web_record)

    again = pyinfra("deploys/site.py", inventory=inventory)
    again_out = again.stdout + again.stderr
    assert again.returncode == 0, again_out[-4000:]
    assert totals(again_out)[1] == "-", "a second run changed something:\n" + again_out[-4000:]
    assert digests() == before and admin_zone() == zone_after
