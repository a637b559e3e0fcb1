"""A fake host file system for ``pkinfra status`` tests: real keys, certificates and CRLs made
with ``cryptography`` under a temporary root, laid out where the lab inventory says they live,
and the status probe run locally against it (``python3 -`` with the script on stdin)."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pkinfra import issue, services, status
from pkinfra.cli_status import load_site, run_probe
from pkinfra.model import Certificate, HostSpec, Inventory

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)


def copy_site(tmp: Path) -> tuple[Path, Inventory, dict[str, dict[str, Any]]]:
    """The lab inventory in ``tmp`` (its own passphrase file, no CA store)."""
    tmp.mkdir(parents=True, exist_ok=True)
    for name in ("inventory.py", "config.py"):
        shutil.copy(ROOT / name, tmp / name)
    shutil.copytree(ROOT / "group_data", tmp / "group_data")
    (tmp / ".lab").mkdir()
    (tmp / ".lab" / "ca-passphrase").write_text("not a real passphrase\n")
    (tmp / ".lab" / "ca-passphrase").chmod(0o600)
    inventory, reach = load_site(tmp / "inventory.py")
    return tmp / "inventory.py", inventory, reach


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_cert(
    key: ec.EllipticCurvePrivateKey,
    names: list[str],
    not_before: dt.datetime,
    not_after: dt.datetime,
    issuer: str = "Test CA",
) -> bytes:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, names[0])]))
        .issuer_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
    )
    cert = builder.sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM)


def make_crl(next_update: dt.datetime, this_update: dt.datetime, number: int = 1) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Test CA")]))
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), False)
        .sign(key, hashes.SHA256())
    )
    return crl.public_bytes(serialization.Encoding.PEM)


class HostFiles:
    """One host's files under ``root``, as the deploys leave them."""

    def __init__(self, root: Path, inventory: Inventory, fqdn: str) -> None:
        self.root = root
        self.inventory = inventory
        self.host: HostSpec = inventory.hosts[fqdn]
        self.keys: dict[str, ec.EllipticCurvePrivateKey] = {}

    def path(self, path: str) -> Path:
        full = self.root / path.lstrip("/")
        full.parent.mkdir(parents=True, exist_ok=True)
        return full

    def write(self, path: str, data: bytes) -> None:
        self.path(path).write_bytes(data)

    def certificate(
        self,
        cert: Certificate,
        *,
        days_left: float = 60,
        lifetime: float = 90,
        new_key: bool = False,
    ) -> None:
        """Key and certificate files of ``cert``, expiring ``days_left`` days after NOW."""
        if new_key or cert.name not in self.keys:
            self.keys[cert.name] = ec.generate_private_key(ec.SECP256R1())
        key = self.keys[cert.name]
        not_after = NOW + dt.timedelta(days=days_left)
        pem = make_cert(key, list(cert.names), not_after - dt.timedelta(days=lifetime), not_after)
        files = services.certificate_files(cert)
        self.write(files["key"], pem_key(key))
        self.write(files["cert"], pem)
        self.write(files["chain"], b"")
        self.write(files["fullchain"], pem)
        if "ca_bundle" in files:
            self.write(files["ca_bundle"], b"")
        if cert.is_acme:
            self.write(
                f"{status.RENEWAL_DIR}/{cert.name}.conf",
                b"version = 2.1.0\narchive_dir = /x\n[renewalparams]\naccount = 0123abcd\n"
                b"authenticator = webroot\nserver = https://acme.example.test:14000/dir\n"
                b"key_type = ecdsa\nreuse_key = True\n",
            )

    def crls(self, next_update: dt.datetime, number: int = 1) -> None:
        for ca in issue.host_plan(self.inventory, self.host.fqdn).crls:
            self.write(
                issue.crl_path(ca), make_crl(next_update, NOW - dt.timedelta(days=1), number)
            )
            self.write(issue.ca_bundle_path(ca), b"")

    def deliver(self) -> None:
        """Every service file as the delivery agent writes it (its sources concatenated)."""
        for service in services.mapping(self.inventory, self.host)["services"]:
            for f in service["files"]:
                parts = [self.path(src).read_bytes() for src in f["sources"]]
                self.write(f["path"], b"".join(parts))

    def everything(self, days_left: float = 60) -> None:
        for cert in self.host.certificates:
            self.certificate(cert, days_left=days_left)
        self.crls(NOW + dt.timedelta(days=6))
        self.deliver()

    def request(self) -> dict[str, Any]:
        return {**status.probe_request(self.inventory, self.host), "root": str(self.root)}


def python3() -> str:
    """A host-like python3 with cryptography (the system's if it has it)."""
    found = shutil.which("python3")
    if found:
        check = subprocess.run([found, "-c", "import cryptography"], capture_output=True)
        if check.returncode == 0:
            return found
    return sys.executable


def probe(files: HostFiles) -> dict[str, Any]:
    return run_probe([python3(), "-"], files.request())
