"""`pkinfra ca list|revoke|crl` on a copy of the lab inventory with its own CA store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from pkinfra.ca import CAStore, Issued, PassphraseSource
from pkinfra.cli import main
from pkinfra.keys import generate_private_key

ROOT = Path(__file__).resolve().parents[2]
SECRET = "correct horse battery staple"


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, CAStore, Issued]:
    for name in ("inventory.py", "config.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "group_data", tmp_path / "group_data")
    (tmp_path / ".lab").mkdir()
    (tmp_path / ".lab" / "ca-passphrase").write_text(SECRET + "\n")
    (tmp_path / ".lab" / "ca-passphrase").chmod(0o600)  # else the inventory warns
    source = PassphraseSource.from_file(tmp_path / ".lab" / "ca-passphrase")
    store = CAStore(tmp_path / "pki")
    store.create_root("duckcorp", key_type="ec-p256", passphrase=source)
    store.create_sub_ca(
        "duckcorp-monitoring",
        "duckcorp",
        parent_passphrase=source,
        permitted=["monitoring.example.test"],
        passphrase=source,
    )
    key = generate_private_key("ec-p256")
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    issued = store.sign_csr(
        "duckcorp-monitoring",
        csr.sign(key, hashes.SHA256()).public_bytes(Encoding.PEM),
        names=["mon1.monitoring.example.test"],
        usages=["client"],
        validity_days=90,
        host="mon1.example.test",
        cert_name="monitoring",
        passphrase=source,
    )
    return tmp_path / "inventory.py", store, issued


def test_list_shows_cas_and_certificates_with_expiry(
    site: tuple[Path, CAStore, Issued], capsys: pytest.CaptureFixture[str]
) -> None:
    inventory, _, issued = site
    assert main(["-i", str(inventory), "ca", "list"]) == 0
    out = capsys.readouterr().out
    assert "duckcorp-monitoring  duckcorp" in out
    line = next(x for x in out.splitlines() if f"{issued.serial:x}" in x)
    assert "mon1.example.test" in line and "monitoring" in line and "valid" in line
    assert f"{issued.not_after:%Y-%m-%d}" in line
    assert SECRET not in out


def test_revoke_then_crl_lists_the_serial(
    site: tuple[Path, CAStore, Issued], capsys: pytest.CaptureFixture[str]
) -> None:
    inventory, store, issued = site
    serial = f"{issued.serial:x}"
    args = ["-i", str(inventory), "ca", "revoke", "duckcorp-monitoring", serial]
    assert main([*args, "--reason", "key_compromise"]) == 0
    assert f"revoked duckcorp-monitoring {serial}" in capsys.readouterr().out
    assert store.get_record("duckcorp-monitoring", serial).revocation_reason == "key_compromise"
    assert main(args) == 0
    assert "already revoked" in capsys.readouterr().out

    assert main(["-i", str(inventory), "ca", "crl", "duckcorp-monitoring"]) == 0
    assert "1 revoked" in capsys.readouterr().out
    pem = store.current_crl("duckcorp-monitoring")
    assert pem is not None
    crl = x509.load_pem_x509_crl(pem)
    assert crl.get_revoked_certificate_by_serial_number(issued.serial) is not None

    assert main(["-i", str(inventory), "ca", "list", "--valid"]) == 0
    assert serial not in capsys.readouterr().out


def test_errors_are_one_line(
    site: tuple[Path, CAStore, Issued], capsys: pytest.CaptureFixture[str]
) -> None:
    inventory = site[0]
    assert main(["-i", str(inventory), "ca", "revoke", "duckcorp-backup", "ab"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pkinfra: no CA 'duckcorp-backup'") and err.count("\n") == 1
    assert main(["-i", str(inventory), "ca", "revoke", "duckcorp", "abcdef"]) == 1
    assert "no certificate with serial abcdef" in capsys.readouterr().err
    (inventory.parent / ".lab" / "ca-passphrase").write_text("wrong\n")
    assert main(["-i", str(inventory), "ca", "crl", "duckcorp"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "wrong" not in err.split(":", 1)[1].replace(
        "wrong passphrase", ""
    )
