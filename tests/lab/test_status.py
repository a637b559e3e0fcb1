"""``pkinfra status`` against the deployed lab: days left as the hosts' own openssl says, a
broken TLSA RRset, a pending notification, a held delivery and a CRL that lapses before the
next due run, each seen in the JSON, the exit status and the Prometheus file."""

from __future__ import annotations

import datetime as dt
import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pkinfra import issue, services
from pkinfra.agent import paths
from pkinfra.model import load_inventory_file
from tests.lab.run import docker_command
from tests.lab.test_dane import ShadowTlsa, mx1_tlsa, published  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[2]
PKINFRA = Path(sys.executable).parent / "pkinfra"
RESOLVER = "172.29.53.53"

pytestmark = pytest.mark.lab


def status(*args: str) -> tuple[int, dict[str, Any]]:
    run = subprocess.run(
        [str(PKINFRA), "-i", "inventory.py", "status", "--json", "--resolver", RESOLVER, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        return run.returncode, json.loads(run.stdout)
    except ValueError:
        pytest.fail(f"pkinfra status printed no JSON:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")


def docker(
    container: str, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``args`` in ``container`` with bytes in and out (``docker exec -i``)."""
    return subprocess.run(
        docker_command(container, *args, interactive=True),
        input=stdin,
        capture_output=True,
        timeout=60,
    )


def container(fqdn: str) -> str:
    return f"pkinfra-{fqdn.split('.')[0]}"


def row(data: dict[str, Any], host: str, name: str) -> dict[str, Any]:
    found = next(h for h in data["hosts"] if h["host"] == host)
    return next(c for c in found["certificates"] if c["name"] == name)


def test_every_lab_certificate_with_its_days_left(site_deployed: str) -> None:
    code, data = status("--no-live")
    inventory = load_inventory_file(ROOT / "inventory.py")
    now = dt.datetime.strptime(data["generated"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    expected = {(h.fqdn, c.name): c for h in inventory.hosts.values() for c in h.certificates}
    listed = {(c["host"], c["name"]) for h in data["hosts"] for c in h["certificates"]}
    assert listed == set(expected), data
    for (host, name), cert in expected.items():
        path = services.certificate_files(cert)["cert"]
        out = docker(container(host), "openssl", "x509", "-enddate", "-noout", "-in", path)
        assert out.returncode == 0, out.stderr
        end = dt.datetime.strptime(
            out.stdout.decode().strip().removeprefix("notAfter="), "%b %d %H:%M:%S %Y %Z"
        ).replace(tzinfo=dt.UTC)
        got = row(data, host, name)
        assert got["days_left"] == (end - now).days, (host, name, got)
        assert got["not_after"] == f"{end:%Y-%m-%dT%H:%M:%SZ}"
    assert code in (0, 1), data  # a fresh lab: nothing critical, nothing unknown


def test_a_broken_tlsa_rrset_is_critical(mx1_tlsa: ShadowTlsa, tmp_path: Path) -> None:  # noqa: F811
    # mx1's own key, as the DANE tests do: a record that matches nothing.
    mx1_tlsa.replace({"3 1 1 " + "0f" * 32})
    prom = tmp_path / "pkinfra.prom"
    code, data = status("--prometheus", str(prom))
    mail = row(data, "mx1.example.test", "mail")
    assert mail["state"] == "critical", mail
    assert mail["tlsa"][0]["dane"] == "mismatch" and mail["tlsa"][0]["matches_key"] is False
    assert code == 2 and data["exit_code"] == 2
    text = prom.read_text()
    assert (
        'pkinfra_dane_valid{host="mx1.example.test",certificate="mail",'
        'owner="_25._tcp.mx1.example.test"} 0'
    ) in text.splitlines()


@pytest.fixture
def db1_pending() -> Iterator[None]:
    mark = "/var/lib/pkinfra/pending/backup-agent"
    docker(
        "pkinfra-db1", "sh", "-c", f"mkdir -p /var/lib/pkinfra/pending && echo 'lab test' > {mark}"
    )
    try:
        yield
    finally:
        docker("pkinfra-db1", "rm", "-f", mark)


def test_a_pending_notification_is_a_warning(site_deployed: str, db1_pending: None) -> None:
    _, data = status("--no-live", "--limit", "db1.example.test")
    backup = row(data, "db1.example.test", "backup")
    (service,) = backup["services"]
    assert service["summary"] == "pending" and service["pending"] == "lab test"
    assert backup["state"] == "warning", backup


HELD_REASON = "_25._tcp.mx1.example.test: the new key's record is not served yet (lab test)"


@pytest.fixture
def postfix_on_another_key() -> Iterator[None]:
    """Postfix's copies hold another key, and the delivery agent, run with a gate that says
    no, holds the lineage's key back from it (the agent writes the hold down, as it does while
    a new key's TLSA record is not served long enough); the real agent puts the real files back
    afterwards."""
    script = (
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 "
        "-subj /CN=mx1.example.test -keyout /etc/postfix/tls/mail.key "
        "-out /etc/postfix/tls/mail.crt 2>/dev/null"
    )
    assert docker("pkinfra-mx1", "sh", "-c", script).returncode == 0
    mapping = json.loads(docker("pkinfra-mx1", "cat", paths.SERVICES_MAPPING).stdout)
    for service in mapping["services"]:
        assert service.get("gate"), service
        service["gate"] = f"echo {shlex.quote(HELD_REASON)}; exit 1"
    held_mapping = "/run/lab-held-mapping.json"
    written = docker(
        "pkinfra-mx1", "sh", "-c", f"cat > {held_mapping}", stdin=json.dumps(mapping).encode()
    )
    assert written.returncode == 0
    run = docker("pkinfra-mx1", "python3", paths.DELIVERY_AGENT, "--mapping", held_mapping)
    assert b'"held"' in run.stdout and HELD_REASON.encode() in run.stdout, run.stdout + run.stderr
    try:
        yield
    finally:
        # The real files back through the agent; its gate says yes this time (the real gate
        # would wait for the made-up key's record, which nothing ever published).
        for service in mapping["services"]:
            service["gate"] = "true"
        written = docker(
            "pkinfra-mx1", "sh", "-c", f"cat > {held_mapping}", stdin=json.dumps(mapping).encode()
        )
        done = docker("pkinfra-mx1", "python3", paths.DELIVERY_AGENT, "--mapping", held_mapping)
        docker("pkinfra-mx1", "rm", "-f", held_mapping)
        assert done.returncode == 0 and b'"held": null' in done.stdout, done.stdout + done.stderr
        # Delivered: the hold is no longer written down.
        gone = docker("pkinfra-mx1", "ls", f"{paths.STATE_DIR}/held")
        assert b"postfix" not in gone.stdout, gone.stdout


def test_a_held_delivery_is_shown(site_deployed: str, postfix_on_another_key: None) -> None:
    _, data = status("--no-live", "--limit", "mx1.example.test")
    mail = row(data, "mx1.example.test", "mail")
    (service,) = mail["services"]
    assert service["summary"] == "held" and service["held"] == HELD_REASON, mail
    assert any("delivery held" in r and HELD_REASON in r for r in mail["reasons"])
    assert mail["state"] in ("warning", "critical")


@pytest.fixture
def db1_crl_lapsing() -> Iterator[str]:
    """db1's copy of the monitoring CA's CRL replaced by one that lapses in two hours."""
    path = issue.crl_path("duckcorp-monitoring")
    original = docker("pkinfra-db1", "cat", path)
    assert original.returncode == 0, original.stderr
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "lab test")]))
        .last_update(now - dt.timedelta(days=6))
        .next_update(now + dt.timedelta(hours=2))
        .add_extension(x509.CRLNumber(1), False)
        .sign(key, hashes.SHA256())
    )
    pem = crl.public_bytes(serialization.Encoding.PEM)
    assert docker("pkinfra-db1", "sh", "-c", f"cat > {path}", stdin=pem).returncode == 0
    try:
        yield path
    finally:
        docker("pkinfra-db1", "sh", "-c", f"cat > {path}", stdin=original.stdout)


def test_a_crl_lapsing_before_the_next_run_is_critical(
    site_deployed: str, db1_crl_lapsing: str
) -> None:
    code, data = status("--no-live", "--limit", "db1.example.test")
    db1 = next(h for h in data["hosts"] if h["host"] == "db1.example.test")
    crl = next(c for c in db1["crls"] if c["ca"] == "duckcorp-monitoring")
    assert crl["state"] == "critical", crl
    assert any("before the next run is due" in r or "expires in" in r for r in crl["reasons"])
    assert code == 2
