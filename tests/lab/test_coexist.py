"""pkinfra on a site whose admin keeps BIND, Postfix, PostgreSQL and nginx by hand: a run of the
product (``deploys/site.py``, nothing lab-only) delivers, reloads and publishes, and leaves every
file of the admin's byte for byte as it was (the one documented exception: the serial of a zone
the admin keeps moves when pkinfra's include file for it changes)."""

from __future__ import annotations

import re
import subprocess

import pytest

from lab.topology import HOSTS
from pkinfra import zones
from tests.lab.test_dns import docker, pyinfra
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


def spki(container: str, cert: str) -> str:
    return docker(
        container,
        f"openssl x509 -in {cert} -noout -pubkey | openssl pkey -pubin -outform DER | sha256sum",
    ).split()[0]


def test_product_run_keeps_the_admins_files_and_serves_the_kept_zone(site_deployed: str) -> None:
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

    run = pyinfra("deploys/site.py")
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
    want = f"3 1 1 {spki('pkinfra-db1', '/etc/pkinfra/certs/postgres/cert.pem')}"
    for server in (HOSTS["ns1"], HOSTS["ns2"]):
        assert served(server, f"info.{ADMIN_ZONE}", "TXT") == ['"kept by hand"'], server
        tlsa = served(server, f"_5432._tcp.db1.{ADMIN_ZONE}", "TLSA")
        assert [t.replace(" ", "") for t in tlsa] == [want.replace(" ", "")], (server, tlsa)
        soa = served(server, ADMIN_ZONE, "SOA")
        assert soa and soa[0].split()[2] == str(new), (server, soa)

    again = pyinfra("deploys/site.py")
    again_out = again.stdout + again.stderr
    assert again.returncode == 0, again_out[-4000:]
    assert totals(again_out)[1] == "-", "a second run changed something:\n" + again_out[-4000:]
    assert digests() == before and admin_zone() == zone_after
