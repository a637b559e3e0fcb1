"""The lab is production-shaped, and pkinfra behaves there as on a real site: managed hosts run
systemd as PID 1 and are reached over SSH as a non-root user with sudo; execution-time commands
run with that sudo; a secret crosses the host only through a private stage."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest

from lab.topology import HOSTS, SSH_ROLES, SSH_USER, hostname
from pkinfra.model import load_inventory_file
from tests.lab.run import docker, pyinfra
from tests.lab.test_services import file_serial, served_serial

ROOT = Path(__file__).resolve().parents[2]
TSIG_KEY = "/etc/pkinfra/tsig.key"

pytestmark = pytest.mark.lab


def test_managed_hosts_are_reached_as_a_sudo_user_and_run_systemd(site_deployed: str) -> None:
    site = load_inventory_file(ROOT / "inventory.py")
    for role in SSH_ROLES:
        spec = site.host(hostname(role))
        assert spec.pyinfra_name == hostname(role)
        container = f"pkinfra-{role}"
        assert docker(container, "cat /proc/1/comm").strip() == "systemd"
        # pyinfra's connections are the non-root user's (sshd logs each login).
        logins = docker(container, "journalctl -u ssh -o cat --no-pager | grep Accepted || true")
        assert f"Accepted publickey for {SSH_USER} from" in logins, role
        assert "Accepted publickey for root" not in logins
    assert f"[{hostname('db1')}]" in site_deployed


def test_certificate_signed_at_execution_time_through_sudo(site_deployed: str) -> None:
    # The CSR is made at execution time from key.pem (root-only): it only works with sudo.
    out = docker("pkinfra-db1", "stat -c '%U %a' /etc/pkinfra/certs/postgres/key.pem").split()
    assert out == ["root", "600"]
    cert = docker(
        "pkinfra-db1", "openssl x509 -in /etc/pkinfra/certs/postgres/cert.pem -noout -subject"
    )
    assert "db1.example.test" in cert


def test_a_secret_upload_through_sudo_is_staged_privately(site_deployed: str) -> None:
    controller = (ROOT / "pki" / "secrets" / "web1.example.test.key").read_bytes()
    shown = docker("pkinfra-web1", "journalctl -n 0 --show-cursor --no-pager")
    cursor = shown.rsplit("-- cursor: ", 1)[1].strip()
    docker("pkinfra-web1", f"echo wrong > {TSIG_KEY}")
    run = pyinfra("deploys/dns.py", "--limit", hostname("web1"))
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    installed = docker("pkinfra-web1", f"sha256sum {TSIG_KEY}").split()[0]
    assert installed == hashlib.sha256(controller).hexdigest()
    assert docker("pkinfra-web1", f"stat -c '%U %G %a' {TSIG_KEY}").split() == [
        "root",
        "root",
        "600",
    ]
    log = docker(
        "pkinfra-web1",
        f"journalctl -t sftp-server -o cat --no-pager --after-cursor '{cursor}'",
    )
    opened = re.findall(r'open "([^"]+)" flags (\S+)', log)
    written = [path for path, flags in opened if "WRITE" in flags]
    # Only the secret was out of date: its one upload went to a 0700 stage of the login user.
    assert len(written) == 1, log
    assert re.fullmatch(r"/tmp/pkinfra-stage-[0-9a-f]{24}/upload", written[0]), written
    assert docker("pkinfra-web1", "ls -d /tmp/pkinfra-stage-* 2>/dev/null || true").strip() == ""
    assert docker("pkinfra-web1", "ls /tmp/pyinfra-* 2>/dev/null || true").strip() == ""


def test_certbot_service_renews_delivers_and_publishes_on_its_own(site_deployed: str) -> None:
    """What Debian's certbot.timer starts, started by hand: a lineage renewed on mx1 (Debian 13,
    certbot 4.0) reaches Postfix by a reload through systemd and its TLSA record is published,
    with nothing run from the controller."""
    live = "/etc/letsencrypt/live/mail/cert.pem"
    conf = "/etc/letsencrypt/renewal/mail.conf"
    unit = "postfix@-.service"
    main_pid = docker("pkinfra-mx1", f"systemctl show -p MainPID --value {unit}").strip()
    before = file_serial("pkinfra-mx1", live)
    assert served_serial(25, "smtp", "mx1.example.test") == before
    shown = docker("pkinfra-mx1", "journalctl -n 0 --show-cursor --no-pager")
    cursor = shown.rsplit("-- cursor: ", 1)[1].strip()
    saved = docker("pkinfra-mx1", f"cat {conf}")
    # Make the lineage due (as time would), then let the timer's service do everything.
    due = "renew_before_expiry = 100000 days"
    docker("pkinfra-mx1", f"sed -i -e '/^renew_before_expiry/d' -e '1i {due}' {conf}")
    try:
        docker("pkinfra-mx1", "systemctl start certbot.service")
    finally:
        subprocess.run(
            ["docker", "exec", "-i", "pkinfra-mx1", "sh", "-c", f"cat > {conf}"],
            input=saved,
            text=True,
            check=True,
            timeout=30,
        )
    result = docker("pkinfra-mx1", "systemctl show -p Result --value certbot.service").strip()
    assert result == "success", docker("pkinfra-mx1", "journalctl -u certbot --no-pager | tail -30")
    after = file_serial("pkinfra-mx1", live)
    assert after != before
    assert served_serial(25, "smtp", "mx1.example.test") == after
    # A reload through systemd: the journal says so, and the main process is the same.
    journal = docker("pkinfra-mx1", f"journalctl -o cat --no-pager --after-cursor '{cursor}'")
    assert "Reloading" in journal and "postfix" in journal.lower(), journal[-2000:]
    assert docker("pkinfra-mx1", f"systemctl show -p MainPID --value {unit}").strip() == main_pid
    # Every authoritative server serves a TLSA record of the key now served (the publisher
    # returns only once they all do).
    spki = docker(
        "pkinfra-mx1",
        f"openssl x509 -in {live} -noout -pubkey | openssl pkey -pubin -outform DER | sha256sum",
    ).split()[0]
    for server in (HOSTS["ns1"], HOSTS["ns2"]):
        records = subprocess.run(
            [
                "dig",
                "+norec",
                "+short",
                f"@{server}",
                "_25._tcp.mx1.example.test.shadow.test",
                "TLSA",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        flat = [line.replace(" ", "").lower() for line in records.splitlines()]
        assert any(line == f"311{spki}" for line in flat), (server, records)
