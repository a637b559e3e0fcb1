"""The lab is production-shaped, and pkinfra behaves there as on a real site: managed hosts run
systemd as PID 1 and are reached over SSH as a non-root user with sudo; execution-time commands
run with that sudo; a secret crosses the host only through a private stage."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from lab.topology import SSH_ROLES, SSH_USER, hostname
from pkinfra.model import load_inventory_file
from tests.lab.test_dns import docker, pyinfra

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
