"""Certificate files into the lab's services, and the services told: PostgreSQL with mutual TLS
(db1, mon1 as its client), a service that must be restarted (db1's backup agent), and the faults:
a failing notification is named, remembered on the host, and retried."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from fnmatch import fnmatch
from functools import partial
from pathlib import Path

import pytest

from pkinfra import zones
from pkinfra.model import SECRET_CONTENTS, HostSpec, Inventory, load_inventory_file
from tests.helpers import lab_inventory_copy
from tests.lab import run as lab_run
from tests.lab.run import INVENTORY, certbot_renew, pyinfra_output

ROOT = Path(__file__).resolve().parents[2]
PKINFRA = Path(sys.executable).parent / "pkinfra"
DEPLOYS = [
    "deploys/pki.py",
    "lab/deploys/services.py",
    "deploys/services.py",
    "lab/deploys/start.py",
]
LIMIT = ["--limit", "db1.example.test", "--limit", "mon1.example.test"]
CLIENT = "/etc/pkinfra/certs/monitoring"
ROOT_CA = "/usr/local/share/ca-certificates/pkinfra-duckcorp.crt"

pytestmark = pytest.mark.lab


def deploy(inventory: Path = INVENTORY, ok: bool = True) -> str:
    return pyinfra_output(*DEPLOYS, *LIMIT, inventory=inventory, timeout=600, ok=ok, tail=4000)


def changed(out: str) -> str:
    found = re.search(r"Grand total\s+\d+\s+(\S+)", out)
    assert found is not None, out[-3000:]
    return found.group(1)


sh = partial(lab_run.sh, timeout=60)


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
    return sh("pkinfra-db1", "systemctl show -p MainPID --value lab-backup-agent").stdout.strip()


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


def test_a_sibling_sub_ca_client_certificate_is_refused(deployed: str) -> None:
    """PostgreSQL's clients.pem holds duckcorp-monitoring and the duckcorp root (OpenSSL needs
    the root to build a chain), so a certificate of the sibling sub-CA duckcorp-backup chains to
    a trusted root. What refuses it is the CRL set: clients.crl holds the CRLs of every CA of
    the monitoring chain and none of duckcorp-backup, and PostgreSQL checks CRLs along the
    whole chain, so the handshake fails ("unknown ca"). Behind it, the ``cert`` method's CN map
    (pg_ident.conf maps only mon1.monitoring.example.test) would refuse the login, and a
    duckcorp-backup certificate's names can only lie under backup.example.test (its name
    constraints, enforced by pkinfra when it signs). Tried from db1 with its own backup
    certificate (client usage)."""
    backup = "/etc/pkinfra/certs/backup"
    conninfo = (
        "host=db1.example.test dbname=postgres user=monitoring sslmode=verify-full "
        f"sslrootcert={ROOT_CA} sslcert={backup}/fullchain.pem sslkey={backup}/key.pem"
    )
    refused = sh("pkinfra-db1", f"psql '{conninfo}' -tAc 'select current_user'")
    assert refused.returncode != 0
    assert "tlsv1 alert unknown ca" in refused.stderr, refused.stderr
    # The same client with the monitoring certificate is let in: the refusal is the CA's.
    assert psql(f"{CLIENT}/fullchain.pem", f"{CLIENT}/key.pem").stdout.strip() == "monitoring"


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


#: Where deploys/dns.py installs a delegating host's own TSIG key (README, "DNS master").
HOST_TSIG_KEY = ("/etc/pkinfra/tsig.key", "600 root root")
#: deploys/dns.py: each BIND server's TSIG keys, readable by named's group only.
SERVER_TSIG_STATE = "640 root bind"
#: operations/pki.py: a CA-issued certificate's key, made on the host (umask 077), 0600 root.
CA_ISSUED_KEY_STATE = "600 root root"
#: deploys/pebble.py: the lab ACME server's key in its DIRECTORY, made there (umask 077).
PEBBLE_KEY = ("/etc/pebble/key.pem", "600 root root")
#: certbot's own modes, which pkinfra keeps (it passes no --key-path and changes no mode):
#: lineage keys 0600 (a renewal keeps the previous key's owner and mode), the copy of each new
#: key certbot keeps in keys/ 0600, account keys 0400.
CERTBOT_KEY_STATE = "600 root root"
CERTBOT_KEYS = {
    "/etc/letsencrypt/accounts/*/private_key.json": "400 root root",
}
#: certbot 2.1 (Debian 12) also keeps a copy of every key it made in keys/; certbot 4.0
#: (Debian 13) no longer writes that directory.
CERTBOT_2_KEYS = {"/etc/letsencrypt/keys/*_key-certbot.pem": "600 root root"}
#: Keys that pkinfra does not write, made by the lab image's Debian packages: only checked for
#: access by others. Anything else that holds a key fails the walk.
NOT_PKINFRA = (
    "/etc/ssh/ssh_host_*_key",  # openssh-server
    "/etc/ssl/private/ssl-cert-snakeoil.key",  # ssl-cert (never served: DESIGN.md)
    "/etc/bind/rndc.key",  # bind9
    f"{zones.Layout().dnssec_key_dir}/K*.private",  # named's own DNSSEC keys (dnssec-policy)
)
#: Where private keys may be; every file holding one is found, whatever its name (/root and
#: /tmp are the tests' own scratch space).
KEY_SEARCH = "/etc /usr/local /var/lib /srv /opt"
KEY_PATTERNS = (
    r"-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY-----",  # PEM: PKCS#8, SEC1, PKCS#1, OpenSSH
    r'^[[:space:]]*secret[[:space:]]+"',  # BIND key clause (TSIG, rndc)
    r"^Private-key-format:",  # BIND DNSSEC key
)


def container_of(spec: HostSpec) -> str:
    """The lab container of an inventory host (managed hosts are reached over SSH, by FQDN)."""
    if spec.pyinfra_name.startswith("@docker/"):
        return spec.pyinfra_name.removeprefix("@docker/")
    return f"pkinfra-{spec.fqdn.split('.')[0]}"


def expected_keys(site: Inventory, spec: HostSpec, release: str = "13") -> dict[str, str]:
    """Path (or glob) -> "mode owner group" of every key file pkinfra puts on ``spec``."""
    wanted = {
        f.path: f"{int(f.file_mode, 8):o} {f.owner} {f.group}"
        for s in spec.services
        for f in s.files
        if f.content in SECRET_CONTENTS
    }
    for cert in spec.certificates:
        if cert.is_acme:
            # The live name is a link into the archive, which keeps every renewal's copy.
            wanted[f"{cert.host_directory}/privkey.pem"] = CERTBOT_KEY_STATE
            wanted[f"/etc/letsencrypt/archive/{cert.name}/privkey*.pem"] = CERTBOT_KEY_STATE
        else:
            wanted[f"{cert.host_directory}/key.pem"] = CA_ISSUED_KEY_STATE
    if any(c.is_acme for c in spec.certificates):
        wanted |= CERTBOT_KEYS | (CERTBOT_2_KEYS if release == "12" else {})
    dns = zones.render_site(site, keys=zones.key_names(site))
    if spec.fqdn in dns.key_holders:
        wanted[HOST_TSIG_KEY[0]] = HOST_TSIG_KEY[1]
    server = dns.server(spec.fqdn)
    for name in server.keys if server is not None else ():
        wanted[zones.Layout().key_file(name)] = SERVER_TSIG_STATE
    if "acme_servers" in spec.groups:
        wanted[PEBBLE_KEY[0]] = PEBBLE_KEY[1]
    return wanted


def key_files(container: str) -> dict[str, str]:
    """Every file on the host that holds a private key or secret -> "mode owner group"."""
    patterns = " ".join(f"-e '{p}'" for p in KEY_PATTERNS)
    run = sh(
        container,
        f"{{ grep -rlIE {patterns} {KEY_SEARCH} 2>/dev/null;"
        f" find {KEY_SEARCH} -name private_key.json 2>/dev/null; }}"
        " | sort -u | xargs -r stat -c '%n %a %U %G'",
    )
    assert run.returncode == 0, run.stderr
    return dict(line.split(" ", 1) for line in run.stdout.splitlines())


def stat_of(container: str, path: str) -> str:
    run = sh(container, f"stat -L -c '%a %U %G' {path}")
    assert run.returncode == 0, f"{container}:{path}: {run.stderr}"
    return run.stdout.strip()


def test_every_key_file_has_the_inventory_owner_group_and_mode(deployed: str) -> None:
    """Every lab host: each key pkinfra wrote has the inventory's (or the documented default)
    owner, group and mode; no file with a key is readable by others; none is unaccounted for."""
    site = load_inventory_file(ROOT / "inventory.py")
    seen: dict[str, int] = {}
    for spec in site.hosts.values():
        container = container_of(spec)
        release = sh(container, "cut -d. -f1 /etc/debian_version").stdout.strip()
        wanted = expected_keys(site, spec, release)
        found = key_files(container)
        for path, state in sorted(found.items()):
            mode = int(state.split()[0], 8)
            assert not mode & 0o007, f"{spec.fqdn}:{path} is open to others ({state})"
            assert any(fnmatch(path, p) for p in [*wanted, *NOT_PKINFRA]), (
                f"{spec.fqdn}:{path} holds a key that pkinfra did not put there ({state})"
            )
        for pattern, state in wanted.items():
            if any(c in pattern for c in "*?["):
                matches = [p for p in found if fnmatch(p, pattern)]
                assert matches, f"{spec.fqdn}: no key file {pattern}"
            else:
                # Stat'ed even where the search did not list it: certbot's live name is a link.
                matches = [pattern]
            for path in matches:
                assert stat_of(container, path) == state, f"{spec.fqdn}:{path}: want {state}"
            seen[spec.fqdn] = seen.get(spec.fqdn, 0) + len(matches)
    # The inventory gives every lab host keys to check but the resolver (where a key would
    # still fail the walk above, as pkinfra puts none there).
    keyless = {"resolver.example.test"}
    assert set(seen) == set(site.hosts) - keyless, seen


@pytest.fixture
def broken_restart(tmp_path: Path) -> Iterator[Path]:
    """The lab inventory with the backup agent's restart command failing."""
    lab_inventory_copy(tmp_path)
    text = (tmp_path / "inventory.py").read_text()
    good = '"systemctl restart lab-backup-agent"'
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
    assert "[db1.example.test]" in out
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
    renew = certbot_renew("pkinfra-mx1", "mail")
    assert renew.returncode == 0, renew.stdout[-2000:] + renew.stderr[-2000:]
    after = file_serial("pkinfra-mx1", live)
    assert after != before
    assert served_serial(25, "smtp", "mx1.example.test") == after
    assert master_pid() == pid, "a reload, not a restart"
