"""Certificate files into the lab's services, and the services told: PostgreSQL with mutual TLS
(db1, mon1 as its client), a service that must be restarted (db1's backup agent), and the faults:
a failing notification is named, remembered on the host, and retried."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pkinfra.model import load_inventory_file
from pkinfra.services import mapping

ROOT = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).parent / "pyinfra"
PKINFRA = Path(sys.executable).parent / "pkinfra"
DEPLOYS = [
    "deploys/pki.py",
    "deploys/lab_services.py",
    "deploys/services.py",
    "deploys/lab_start.py",
]
HOSTS = {"db1.example.test": "pkinfra-db1", "mon1.example.test": "pkinfra-mon1"}
LIMIT = ["--limit", "@docker/pkinfra-db1", "--limit", "mon1.example.test"]
CLIENT = "/etc/pkinfra/certs/monitoring"
ROOT_CA = "/usr/local/share/ca-certificates/pkinfra-duckcorp.crt"

pytestmark = pytest.mark.lab


def deploy(inventory: Path = ROOT / "inventory.py", ok: bool = True) -> str:
    run = subprocess.run(
        [str(PYINFRA), "-y", str(inventory), *DEPLOYS, *LIMIT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = run.stdout + run.stderr
    assert (run.returncode == 0) == ok, out[-4000:]
    return out


def changed(out: str) -> str:
    found = re.search(r"Grand total\s+\d+\s+(\S+)", out)
    assert found is not None, out[-3000:]
    return found.group(1)


def sh(container: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "exec", container, "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=60,
    )


def psql(cert: str, key: str) -> subprocess.CompletedProcess[str]:
    conninfo = (
        f"host=db1.example.test dbname=postgres user=monitoring sslmode=verify-full "
        f"sslrootcert={ROOT_CA} sslcert={cert} sslkey={key}"
    )
    return sh("pkinfra-mon1", f"psql '{conninfo}' -tAc 'select current_user'")


def served_serial(port: int, starttls: str | None = None, host: str = "db1.example.test") -> str:
    """The serial of the certificate ``host`` serves on ``port``, seen from mon1."""
    tls = f"-starttls {starttls}" if starttls else ""
    run = sh(
        "pkinfra-mon1",
        f"openssl s_client -connect {host}:{port} {tls} "
        "</dev/null 2>/dev/null | openssl x509 -noout -serial",
    )
    assert run.returncode == 0, run.stderr
    return run.stdout.strip().split("=")[1].lower()


def file_serial(container: str, path: str) -> str:
    run = sh(container, f"openssl x509 -in {path} -noout -serial")
    return run.stdout.strip().split("=")[1].lower()


def postmaster_pid() -> str:
    return sh("pkinfra-db1", "head -n 1 /var/run/postgresql/15-main.pid").stdout.strip()


def agent_pid() -> str:
    return sh("pkinfra-db1", "pgrep -f '^openssl s_server -accept 9102'").stdout.strip()


def revoke(ca: str, serial: str) -> None:
    run = subprocess.run(
        [str(PKINFRA), "ca", "revoke", ca, serial],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr


@pytest.fixture(scope="module")
def deployed(site_deployed: str) -> str:
    return deploy()


def test_mon1_connects_to_postgresql_with_its_client_certificate(deployed: str) -> None:
    run = psql(f"{CLIENT}/fullchain.pem", f"{CLIENT}/key.pem")
    assert run.stdout.strip() == "monitoring", run.stderr
    # Without a client certificate the monitoring role is refused.
    conninfo = (
        f"host=db1.example.test dbname=postgres user=monitoring sslmode=verify-full "
        f"sslrootcert={ROOT_CA}"
    )
    refused = sh("pkinfra-mon1", f"psql '{conninfo}' -tAc 'select 1'")
    assert refused.returncode != 0


def reloads() -> int:
    """How often PostgreSQL has reloaded its configuration (its log says so each time)."""
    log = "/var/log/postgresql/postgresql-15-main.log"
    return int(sh("pkinfra-db1", f"grep -c 'received SIGHUP' {log} || true").stdout.strip() or 0)


def test_a_run_with_nothing_changed_reloads_nothing(deployed: str) -> None:
    pids, before = (postmaster_pid(), agent_pid()), reloads()
    out = deploy()
    assert changed(out) == "-", out[-3000:]
    assert (postmaster_pid(), agent_pid()) == pids
    assert reloads() == before


def test_renewal_reaches_postgresql_by_reload_and_the_agent_by_restart(deployed: str) -> None:
    pg_pid, old_agent = postmaster_pid(), agent_pid()
    pg_serial = file_serial("pkinfra-db1", "/etc/pkinfra/certs/postgres/cert.pem")
    backup_serial = file_serial("pkinfra-db1", "/etc/pkinfra/certs/backup/cert.pem")
    assert served_serial(5432, "postgres") == pg_serial
    assert served_serial(9102) == backup_serial

    revoke("duckcorp", pg_serial)  # the next run renews both, keeping their keys
    revoke("duckcorp-backup", backup_serial)
    deploy()
    new_pg = file_serial("pkinfra-db1", "/etc/pkinfra/certs/postgres/cert.pem")
    new_backup = file_serial("pkinfra-db1", "/etc/pkinfra/certs/backup/cert.pem")
    assert new_pg != pg_serial and new_backup != backup_serial
    assert served_serial(5432, "postgres") == new_pg
    assert postmaster_pid() == pg_pid, "a reload, not a restart"
    assert reloads() > 0
    assert served_serial(9102) == new_backup
    assert agent_pid() != old_agent, "this one had to be restarted"


def test_revoked_client_certificate_is_refused_while_another_connects(deployed: str) -> None:
    sh(
        "pkinfra-mon1",
        f"cp {CLIENT}/fullchain.pem /root/old.crt && cp {CLIENT}/key.pem /root/old.key",
    )
    revoke("duckcorp-monitoring", file_serial("pkinfra-mon1", f"{CLIENT}/cert.pem"))
    deploy()  # new CRLs to db1, delivered into PostgreSQL; mon1 gets a new certificate
    old = psql("/root/old.crt", "/root/old.key")
    assert old.returncode != 0 and "revoked" in old.stderr, old.stdout + old.stderr
    new = psql(f"{CLIENT}/fullchain.pem", f"{CLIENT}/key.pem")
    assert new.stdout.strip() == "monitoring", new.stderr


def test_every_key_file_has_the_inventory_owner_group_and_mode(deployed: str) -> None:
    site = load_inventory_file(ROOT / "inventory.py")
    checked = 0
    for fqdn, container in HOSTS.items():
        spec = site.host(fqdn)
        wanted = {
            f["path"]: f"{f['mode'].lstrip('0')} {f['owner']} {f['group']}"
            for s in mapping(site, spec)["services"]
            for f in s["files"]
            if f["content"] in ("key", "combined")
        }
        wanted |= {f"{c.host_directory}/key.pem": "600 root root" for c in spec.certificates}
        for path, state in wanted.items():
            run = sh(container, f"stat -c '%a %U %G' {path}")
            assert run.stdout.strip() == state, f"{fqdn}:{path}: {run.stdout}{run.stderr}"
            checked += 1
    assert checked >= 5


@pytest.fixture
def broken_restart(tmp_path: Path) -> Iterator[Path]:
    """The lab inventory with the backup agent's restart command failing."""
    for name in ("inventory.py", "config.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "group_data", tmp_path / "group_data")
    (tmp_path / "pki").symlink_to(ROOT / "pki")
    (tmp_path / ".lab").symlink_to(ROOT / ".lab")
    text = (tmp_path / "inventory.py").read_text()
    good = '"/usr/local/sbin/lab-backup-agent restart"'
    assert good in text
    (tmp_path / "inventory.py").write_text(
        text.replace(good, '"echo agent config is broken >&2; exit 3"')
    )
    yield tmp_path / "inventory.py"


def test_failed_restart_is_named_remembered_and_retried(
    deployed: str, broken_restart: Path
) -> None:
    pg_serial = file_serial("pkinfra-db1", "/etc/pkinfra/certs/postgres/cert.pem")
    revoke("duckcorp", pg_serial)
    revoke("duckcorp-backup", file_serial("pkinfra-db1", "/etc/pkinfra/certs/backup/cert.pem"))
    old_agent = agent_pid()

    out = deploy(broken_restart, ok=False)
    assert "backup-agent" in out and "agent config is broken" in out and "exit 3" in out
    assert "[@docker/pkinfra-db1]" in out
    # The other service got its files and its reload; the new, valid files stay in place.
    assert served_serial(5432, "postgres") != pg_serial
    new_backup = file_serial("pkinfra-db1", "/etc/pkinfra/certs/backup/cert.pem")
    in_place = sh("pkinfra-db1", "openssl x509 -in /etc/backup-agent/tls.pem -noout -serial")
    assert in_place.stdout.strip().split("=")[1].lower() == new_backup
    assert sh("pkinfra-db1", "test -f /var/lib/pkinfra/pending/backup-agent").returncode == 0
    assert agent_pid() == old_agent

    deploy()  # the real inventory: the pending restart is retried
    assert sh("pkinfra-db1", "test -f /var/lib/pkinfra/pending/backup-agent").returncode != 0
    assert agent_pid() != old_agent
    assert served_serial(9102) == new_backup


def test_deploy_hook_for_an_unknown_lineage_does_nothing(deployed: str) -> None:
    run = sh(
        "pkinfra-db1",
        "RENEWED_LINEAGE=/etc/letsencrypt/live/nope "
        "python3 /usr/local/lib/pkinfra/delivery.py --mapping /etc/pkinfra/services.json",
    )
    assert run.returncode == 0, run.stderr
    assert "no service uses lineage 'nope'; nothing to do" in run.stdout
    plan = sh(
        "pkinfra-db1",
        "python3 /usr/local/lib/pkinfra/delivery.py --plan --mapping /etc/pkinfra/services.json",
    )
    assert all(not s["changed"] for s in json.loads(plan.stdout)["services"])


def test_clean_environment_renewal_reaches_postfix_without_a_restart(deployed: str) -> None:
    def master_pid() -> str:
        return sh("pkinfra-mx1", "cat /var/spool/postfix/pid/master.pid").stdout.strip()

    live = "/etc/letsencrypt/live/mail/cert.pem"
    pid, before = master_pid(), served_serial(25, "smtp", "mx1.example.test")
    assert before == file_serial("pkinfra-mx1", live)
    # certbot alone, as cron would run it: its deploy hooks publish TLSA, then deliver.
    renew = subprocess.run(
        [
            "docker",
            "exec",
            "pkinfra-mx1",
            "env",
            "-i",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "certbot",
            "renew",
            "--force-renewal",
            "--cert-name",
            "mail",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert renew.returncode == 0, renew.stdout[-2000:] + renew.stderr[-2000:]
    after = file_serial("pkinfra-mx1", live)
    assert after != before
    assert served_serial(25, "smtp", "mx1.example.test") == after
    assert master_pid() == pid, "a reload, not a restart"
