"""Two pyinfra processes issue certificates from one CA store at the same time: one over 50
@fake hosts, the other over 20 more. All serials are unique, the record holds every certificate
exactly once, and each record line has its certificate file.

The @fake connector answers the host's CSR command with a CSR made here for each of its
certificates (their keys stay in this test); every other remote command succeeds with no
output, so every certificate is "missing" and issued.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from pkinfra.ca import CAStore, PassphraseSource
from pkinfra.keys import generate_private_key
from tests.helpers import FAKE_PASSPHRASE, fake_site

ROOT = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).parent / "pyinfra"
CERTS = ("web", "api")


def csr_response(count: int) -> list[str]:
    """What the host's one CSR command prints for ``count`` certificates: each CSR after its
    marker."""
    lines = []
    for i in range(count):
        key = generate_private_key("ec-p256")
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(key, hashes.SHA256())
            .public_bytes(Encoding.PEM)
            .decode()
        )
        lines += [f"@csr|{i}", *csr.splitlines()]
    return lines


def site(directory: Path, prefix: str, count: int, store: Path) -> Path:
    hosts = []
    for i in range(count):
        fqdn = f"{prefix}{i}.fake.test"
        responses = {"openssl req -new": csr_response(len(CERTS))}
        certificates = [
            {"name": cert, "names": [f"{cert}.{fqdn}"], "issuer": "fake-sub"} for cert in CERTS
        ]
        data = {
            "fqdn": fqdn,
            "certificates": certificates,
            "fake_responses": responses,
            "fake_delay": 0,
            "fake_delay_jitter": 0,
        }
        hosts.append((f"@fake/{prefix}{i}", data))
    inventory = fake_site(directory, hosts, primary=f"{prefix}0.fake.test")
    (directory / "pki").symlink_to(store)
    return inventory


def test_two_processes_sign_concurrently_without_losing_anything(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    secret = tmp_path / "pass"
    secret.write_text(FAKE_PASSPHRASE)
    store = CAStore(store_dir)
    source = PassphraseSource.from_file(secret)
    store.create_root("fake-root", key_type="ec-p256", path_length=1, passphrase=source)
    store.create_sub_ca(
        "fake-sub",
        "fake-root",
        parent_passphrase=source,
        permitted=["fake.test"],
        validity_days=1825,
        passphrase=source,
    )
    runs = {
        "h": site(tmp_path / "a", "h", 50, store_dir),
        "g": site(tmp_path / "b", "g", 20, store_dir),
    }
    procs = [
        subprocess.Popen(
            [str(PYINFRA), "-y", str(inventory), "deploys/pki.py"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for inventory in runs.values()
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
        total = re.search(r"Grand total\s+\d+\s+\S+\s+(\S+)", out)
        assert total is not None and total.group(1) == "-", out[-3000:]

    fresh = CAStore(store_dir)  # what a third process sees
    issued = [r for r in fresh.list_issued("fake-sub") if r.kind == "leaf"]
    serials = [r.serial for r in issued]
    assert len(serials) == len(set(serials)) == (50 + 20) * len(CERTS)
    holders = sorted((r.host, r.cert_name) for r in issued)
    expected = sorted(
        (f"{p}{i}.fake.test", c) for p, n in (("h", 50), ("g", 20)) for i in range(n) for c in CERTS
    )
    assert holders == expected
    lines = (store_dir / "fake-sub" / "record.jsonl").read_text().splitlines()
    assert len(lines) == len(issued)
    for record in issued:
        pem = fresh.certificate_pem("fake-sub", record.serial)
        cert = x509.load_pem_x509_certificate(pem)
        assert cert.serial_number == record.serial
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert tuple(san.get_values_for_type(x509.DNSName)) == record.names
