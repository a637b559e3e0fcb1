"""deploys/pki.py against the lab: a real CA hierarchy, host certificates, CRLs, no leaks.

One deploy per module (``deployed``); the tests after it run in file order and each leaves the
lab converged for the next one. Checks run openssl inside the containers (mon1 too, through
``docker exec``: the deploy itself reaches mon1 over SSH).
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lab.topology import SSH_USER
from pkinfra.ca import PassphraseSource
from tests.helpers import lab_inventory_copy
from tests.lab import run as lab_run
from tests.lab.run import pyinfra, pyinfra_command, pyinfra_output

ROOT = Path(__file__).resolve().parents[2]
PKINFRA = Path(sys.executable).parent / "pkinfra"
PKI = ROOT / "pki"
PASSPHRASE_FILE = ROOT / ".lab" / "ca-passphrase"

# (container, certificate directory, issuing CA, purpose)
CERTS = [
    ("pkinfra-db1", "/etc/pkinfra/certs/postgres", "duckcorp", "sslserver"),
    ("pkinfra-db1", "/etc/pkinfra/certs/backup", "duckcorp-backup", "sslserver"),
    ("pkinfra-mon1", "/etc/pkinfra/certs/monitoring", "duckcorp-monitoring", "sslclient"),
]
ROOT_PEM = "/usr/local/share/ca-certificates/pkinfra-duckcorp.crt"

pytestmark = pytest.mark.lab


#: deploys/pki.py (then ``--limit`` and other arguments), which must succeed: its output.
deploy_pki = partial(pyinfra_output, "deploys/pki.py")


def totals(out: str) -> tuple[int, str, str, int]:
    """(operations, changed, errors, no change) of pyinfra's results table."""
    found = re.search(r"Grand total\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)", out)
    assert found is not None, out
    no_change = found.group(4)
    return int(found.group(1)), found.group(2), found.group(3), int(no_change.strip("-") or 0)


sh = partial(lab_run.sh, timeout=60, interactive=True)


def verify(container: str, cert: str, *, untrusted: str = "", extra: str = "") -> tuple[bool, str]:
    chain = f"-untrusted {untrusted}" if untrusted else ""
    run = sh(container, f"openssl verify -x509_strict -CAfile {ROOT_PEM} {chain} {extra} {cert}")
    return run.returncode == 0, run.stdout + run.stderr


def key_states() -> dict[tuple[str, str], str]:
    """Mode, owner and public-key hash of every host key."""
    result = {}
    for container, directory, _, _ in CERTS:
        run = sh(
            container,
            f"stat -c '%a %U' {directory}/key.pem && "
            f"openssl pkey -in {directory}/key.pem -pubout | sha256sum",
        )
        assert run.returncode == 0, run.stderr
        result[(container, directory)] = run.stdout
    return result


@pytest.fixture(scope="module")
def deployed(site_deployed: str) -> str:
    return deploy_pki()


def test_every_host_certificate_verifies_with_its_chain(deployed: str) -> None:
    for container, directory, ca, purpose in CERTS:
        chain = f"{directory}/chain.pem"
        # chain.pem is empty for a certificate of the root itself.
        untrusted = chain if sh(container, f"test -s {chain}").returncode == 0 else ""
        ok, out = verify(
            container, f"{directory}/cert.pem", untrusted=untrusted, extra=f"-purpose {purpose}"
        )
        assert ok, f"{container} {directory}: {out}"
        issuer = sh(container, f"openssl x509 -in {directory}/cert.pem -noout -issuer").stdout
        # OpenSSL 3.5 (Debian 13) prints `CN=x`, 3.0 (Debian 12) `CN = x`.
        assert f"CN={ca}" in issuer.replace(" = ", "=")
        fullchain = sh(container, f"cat {directory}/cert.pem {chain}").stdout
        assert sh(container, f"cat {directory}/fullchain.pem").stdout == fullchain


def test_client_certificate_is_client_only(deployed: str) -> None:
    cert = "/etc/pkinfra/certs/monitoring"
    ok, _ = verify(
        "pkinfra-mon1",
        f"{cert}/cert.pem",
        untrusted=f"{cert}/chain.pem",
        extra="-purpose sslserver",
    )
    assert not ok, "the monitoring certificate must not be usable as a server certificate"


def _hand_signed(name: str) -> str:
    """A leaf for `name` signed directly with the backup sub-CA's key, bypassing the store."""
    ca_cert = x509.load_pem_x509_certificate((PKI / "duckcorp-backup" / "ca.crt").read_bytes())
    secret = PassphraseSource.from_file(PASSPHRASE_FILE).read()
    ca_key = serialization.load_pem_private_key(
        (PKI / "duckcorp-backup" / "ca.key").read_bytes(), secret
    )
    from cryptography.hazmat.primitives.asymmetric import ec

    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_name_constraints_of_the_backup_sub_ca_are_real(deployed: str) -> None:
    sh("pkinfra-db1", "cat > /tmp/inside.pem", stdin=_hand_signed("x.backup.example.test"))
    sh("pkinfra-db1", "cat > /tmp/outside.pem", stdin=_hand_signed("evil.example.test"))
    chain = "/etc/pkinfra/certs/backup/chain.pem"
    ok, out = verify("pkinfra-db1", "/tmp/inside.pem", untrusted=chain)
    assert ok, out  # the control: the same signing inside the subtree verifies
    ok, out = verify("pkinfra-db1", "/tmp/outside.pem", untrusted=chain)
    assert not ok
    assert "permitted subtree violation" in out, out


def test_second_run_changes_nothing_and_keeps_keys(deployed: str) -> None:
    before = key_states()
    out = deploy_pki()
    operations, changed, errors, no_change = totals(out)
    assert (changed, errors) == ("-", "-"), out
    assert no_change == operations
    after = key_states()
    assert after == before
    assert all(state.startswith("600 root") for state in after.values()), after


def _serial(container: str, directory: str) -> str:
    out = sh(container, f"openssl x509 -in {directory}/cert.pem -noout -serial").stdout
    return out.strip().removeprefix("serial=").lower().lstrip("0")


def test_revoked_certificate_fails_crl_check_and_is_reissued(deployed: str) -> None:
    directory = "/etc/pkinfra/certs/monitoring"
    old_pem = sh("pkinfra-mon1", f"cat {directory}/cert.pem").stdout
    serial = _serial("pkinfra-mon1", directory)
    run = subprocess.run(
        [str(PKINFRA), "ca", "revoke", "duckcorp-monitoring", serial, "--reason", "key_compromise"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    out = deploy_pki()
    assert f"revoked (serial {serial})" in out
    new_pem = sh("pkinfra-mon1", f"cat {directory}/cert.pem").stdout
    assert new_pem != old_pem

    # db1 verifies mon1's client certificate: it has the CRLs of the whole chain.
    sh("pkinfra-db1", "cat > /tmp/old-client.pem", stdin=old_pem)
    sh("pkinfra-db1", "cat > /tmp/new-client.pem", stdin=new_pem)
    sh(
        "pkinfra-db1",
        "openssl x509 -in /etc/pkinfra/ca/duckcorp-monitoring.pem > /tmp/monitoring-ca.pem",
    )
    crls = (
        "-crl_check_all -CRLfile /etc/pkinfra/crl/duckcorp-monitoring.pem "
        "-CRLfile /etc/pkinfra/crl/duckcorp.pem -purpose sslclient"
    )
    ok, text = verify(
        "pkinfra-db1", "/tmp/old-client.pem", untrusted="/tmp/monitoring-ca.pem", extra=crls
    )
    assert not ok and "certificate revoked" in text, text
    ok, text = verify(
        "pkinfra-db1", "/tmp/new-client.pem", untrusted="/tmp/monitoring-ca.pem", extra=crls
    )
    assert ok, text


def _secrets() -> list[str]:
    """What must never appear in any output: the CA passphrase, the CA keys as stored, and each
    host key's private part (the first line of its PEM and its private scalar, as openssl prints
    it; the rest of an EC key's PEM is its public key, which a CSR rightly shows)."""
    found = [PASSPHRASE_FILE.read_text().strip()]
    for container, directory, _, _ in CERTS:
        pem = sh(container, f"cat {directory}/key.pem").stdout.splitlines()
        found.append(pem[1])
        text = sh(container, f"openssl pkey -in {directory}/key.pem -noout -text").stdout
        private = text.split("priv:", 1)[1].split("pub:", 1)[0].split()
        found += private
        found.append("".join(private).replace(":", ""))
    for ca in ("duckcorp", "duckcorp-backup", "duckcorp-monitoring"):
        ca_key = (PKI / ca / "ca.key").read_text().splitlines()
        found += [line for line in ca_key if line and not line.startswith("-----")]
    return found


def test_no_secret_in_dry_diff_or_verbose_output(deployed: str) -> None:
    # Make the runs do real work: mon1 loses its certificate, db1 its CRLs.
    sh("pkinfra-mon1", "rm -f /etc/pkinfra/certs/monitoring/cert.pem")
    sh("pkinfra-db1", "rm -f /etc/pkinfra/crl/*.pem")
    outputs = [deploy_pki("--dry", yes=False), deploy_pki("--dry", "--diff", yes=False)]
    # A dry run says exactly why, and changes nothing (no CRL either).
    assert "certificate monitoring: will issue: missing" in outputs[0]
    assert "CRLs: will write /etc/pkinfra/crl/duckcorp-monitoring.pem" in outputs[0]
    assert sh("pkinfra-mon1", "ls /etc/pkinfra/certs/monitoring/cert.pem").returncode != 0
    assert sh("pkinfra-db1", "ls /etc/pkinfra/crl/duckcorp.pem").returncode != 0
    outputs.append(deploy_pki("-vvv"))
    secrets = _secrets()
    for out in outputs:
        assert "PRIVATE KEY" not in out
        for secret in secrets:
            assert secret not in out
    again = deploy_pki()
    assert totals(again)[1] == "-", again


@pytest.fixture
def inventory_copy(tmp_path: Path) -> Iterator[Path]:
    """The lab inventory in a temporary directory, sharing the CA store and the lab state."""
    lab_inventory_copy(tmp_path)
    yield tmp_path / "inventory.py"


def test_name_change_reissues_exactly_that_certificate_with_the_same_key(
    deployed: str, inventory_copy: Path
) -> None:
    text = inventory_copy.read_text()
    original = '{"name": "postgres", "names": ["db1.example.test"], "issuer": "duckcorp"}'
    assert original in text
    inventory_copy.write_text(
        text.replace(
            original,
            original.replace('"db1.example.test"', '"db1.example.test", "pg.example.test"'),
        )
    )
    directory = "/etc/pkinfra/certs/postgres"
    keys = key_states()
    serials = {d: _serial(c, d) for c, d, _, _ in CERTS}

    out = deploy_pki(inventory=inventory_copy)
    assert "names changed from db1.example.test to db1.example.test, pg.example.test" in out
    assert totals(out)[1] == "1", out  # that certificate, nothing else
    names = sh("pkinfra-db1", f"openssl x509 -in {directory}/cert.pem -noout -ext subjectAltName")
    assert "DNS:pg.example.test" in names.stdout

    out = deploy_pki()  # the name removed again
    assert "names changed from db1.example.test, pg.example.test to db1.example.test" in out
    assert totals(out)[1] == "1", out
    names = sh("pkinfra-db1", f"openssl x509 -in {directory}/cert.pem -noout -ext subjectAltName")
    assert "pg.example.test" not in names.stdout
    assert key_states() == keys
    now = {d: _serial(c, d) for c, d, _, _ in CERTS}
    assert [d for d in now if now[d] != serials[d]] == [directory]


#: A test-only login shell for the SSH user on db1: a command that contains the pattern in
#: HANG_ON never runs; the shell marks HIT and waits, so the test can kill the pyinfra run at
#: exactly that point (the host is reached over SSH: every command goes through this shell).
TEST_SHELL = "/usr/local/sbin/pkinfra-test-shell"
HANG_ON = "/etc/pkinfra-test-hang-on"
HIT = "/tmp/pkinfra-test-hit"
_TEST_SHELL_TEXT = f"""#!/bin/sh
pattern=$(cat {HANG_ON} 2>/dev/null)
if [ "$1" = -c ] && [ -n "$pattern" ]; then
    case "$2" in *"$pattern"*) : > {HIT}; exec sleep 300 ;; esac
fi
exec /bin/bash "$@"
"""


@contextmanager
def _hanging_shell(pattern: str) -> Iterator[None]:
    """db1's SSH user gets the hanging login shell for ``pattern``; put back afterwards."""
    sh("pkinfra-db1", f"cat > {TEST_SHELL} <<'EOF'\n{_TEST_SHELL_TEXT}EOF\nchmod 755 {TEST_SHELL}")
    sh("pkinfra-db1", f"printf '%s' {shlex.quote(pattern)} > {HANG_ON}; rm -f {HIT}")
    sh("pkinfra-db1", f"usermod -s {TEST_SHELL} {SSH_USER}")
    try:
        yield
    finally:
        sh("pkinfra-db1", f"usermod -s /bin/bash {SSH_USER}; rm -f {HANG_ON} {HIT} {TEST_SHELL}")
        sh("pkinfra-db1", "pkill -f '^sleep 300$' || true")


def _run_until_hit(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run pyinfra until the host marks HIT, then kill it with SIGKILL (as a crash would)."""
    process = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if sh("pkinfra-db1", f"test -e {HIT}").returncode == 0:
            process.kill()
            break
        time.sleep(0.2)
    else:
        if process.poll() is None:
            process.kill()
    out, _ = process.communicate(timeout=30)
    return subprocess.CompletedProcess(args, process.returncode, out, "")


@pytest.mark.parametrize(
    ("point", "pattern", "remove"),
    [
        ("making the key", "openssl genpkey", "key.pem cert.pem"),
        # One command writes the new files beside, checks the key and renames them into place.
        ("writing the certificate", ".cert.pem.pkinfra-new", "cert.pem"),
        ("checking it against the key", "-pubout -outform DER", "cert.pem"),
    ],
)
def test_killed_issuance_converges_on_rerun(
    deployed: str, point: str, pattern: str, remove: str
) -> None:
    directory = "/etc/pkinfra/certs/backup"
    sh("pkinfra-db1", f"cd {directory} && rm -f {remove}")
    with _hanging_shell(pattern):
        killed = _run_until_hit(
            pyinfra_command(
                "deploys/pki.py", "--limit", "db1.example.test", inventory="inventory.py"
            )
        )
    assert killed.returncode == -9, f"not killed while {point}: {killed.stdout}"
    # Whatever was left: a live certificate never mismatches its key.
    live = sh(
        "pkinfra-db1",
        f"cd {directory} && [ ! -e cert.pem ] || [ "
        '"$(openssl x509 -in cert.pem -noout -pubkey | openssl pkey -pubin -outform DER | md5sum)"'
        ' = "$(openssl pkey -in key.pem -pubout -outform DER | md5sum)" ]',
    )
    assert live.returncode == 0, f"mismatched live certificate after a kill while {point}"
    out = deploy_pki("--limit", "db1.example.test")
    assert totals(out)[2] == "-", out
    ok, text = verify("pkinfra-db1", f"{directory}/cert.pem", untrusted=f"{directory}/chain.pem")
    assert ok, text
    assert totals(deploy_pki("--limit", "db1.example.test"))[1] == "-"


def test_wrong_passphrase_is_one_clear_line_and_nothing_is_overwritten(
    deployed: str, tmp_path: Path
) -> None:
    for name in ("inventory.py", "config.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "group_data", tmp_path / "group_data")
    (tmp_path / "pki").symlink_to(PKI)
    shutil.copytree(
        ROOT / ".lab", tmp_path / ".lab", ignore=shutil.ignore_patterns("build", "logs")
    )
    (tmp_path / ".lab" / "ca-passphrase").write_text("not the passphrase\n")
    directory = "/etc/pkinfra/certs/backup"
    before = sh("pkinfra-db1", f"cat {directory}/fullchain.pem {directory}/key.pem").stdout
    sh("pkinfra-db1", f"rm -f {directory}/cert.pem")  # a reissue is due
    limit = ["--limit", "db1.example.test"]
    run = pyinfra("deploys/pki.py", *limit, inventory=tmp_path / "inventory.py")
    out = run.stdout + run.stderr
    assert run.returncode != 0
    lines = [line for line in out.splitlines() if "wrong passphrase" in line]
    assert len(lines) == 1 and "certificate backup" in lines[0], out
    assert "Traceback" not in out
    assert sh("pkinfra-db1", f"cat {directory}/fullchain.pem {directory}/key.pem").stdout == before
    assert not sh("pkinfra-db1", f"ls -a {directory}").stdout.count("pkinfra-new")
    assert totals(deploy_pki("--limit", "db1.example.test"))[2] == "-"


def test_revoke_removed_revokes_a_certificate_dropped_from_the_inventory(
    deployed: str, inventory_copy: Path
) -> None:
    text = inventory_copy.read_text()
    cert = text[text.index('                {\n                    "name": "backup",') :]
    cert = cert[: cert.index("                },\n") + len("                },\n")]
    service = text[text.index("                {\n                    # Stands in for a backup") :]
    service = service[: service.index("                },\n") + len("                },\n")]
    inventory_copy.write_text(text.replace(cert, "").replace(service, ""))
    all_py = inventory_copy.parent / "group_data" / "all.py"
    all_py.write_text(all_py.read_text() + "\nrevoke_removed = True\n")
    serial = _serial("pkinfra-db1", "/etc/pkinfra/certs/backup")

    out = deploy_pki(inventory=inventory_copy)
    assert "db1.example.test/backup" in out and "will revoke it (revoke_removed)" in out
    crl = subprocess.run(
        ["openssl", "crl", "-in", str(PKI / "duckcorp-backup" / "crl.pem"), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.upper()
    assert serial.upper() in crl.replace(":", "")

    # The real inventory has it again: a new certificate replaces the revoked one.
    out = deploy_pki()
    assert "revoked" in out
    assert _serial("pkinfra-db1", "/etc/pkinfra/certs/backup") != serial
