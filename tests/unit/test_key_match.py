""" "Key matches certificate" and "written whole": one Python and one shell implementation each."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from operations.util import key_matches_command
from pkinfra.agent.files import drop_staged, stage, write_atomic
from pkinfra.keys import KeyTypeError, key_matches, pem_public_key
from tests.helpers import self_signed


@pytest.fixture
def pairs(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    found = {}
    for name in ("a", "b"):
        key, cert = tmp_path / f"{name}.key", tmp_path / f"{name}.crt"
        self_signed(key, cert, f"/CN={name}")
        found[name] = (key, cert)
    return found


def test_python_and_shell_agree(pairs: dict[str, tuple[Path, Path]]) -> None:
    for key_name, (key_path, _) in pairs.items():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        for cert_name, (_, cert_path) in pairs.items():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            same = key_name == cert_name
            assert key_matches(key, cert) is same  # type: ignore[arg-type]
            assert (
                pem_public_key(key_path.read_bytes()) == pem_public_key(cert_path.read_bytes())
            ) is same
            shell = subprocess.run(["sh", "-c", key_matches_command(str(key_path), str(cert_path))])
            assert (shell.returncode == 0) is same


def test_unreadable_key_or_certificate(tmp_path: Path) -> None:
    with pytest.raises(KeyTypeError, match="cannot read the key"):
        pem_public_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyTypeError, match="cannot read the certificate"):
        pem_public_key(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


def test_written_whole_with_the_exact_mode(tmp_path: Path) -> None:
    target = tmp_path / "file"
    old = os.umask(0o077)
    try:
        write_atomic(target, b"data", 0o644)
    finally:
        os.umask(old)
    assert target.read_bytes() == b"data" and target.stat().st_mode & 0o7777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_staged_leftovers_are_dropped_and_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "cert.pem"
    left = stage(target, b"half", 0o600)
    (tmp_path / ".cert.pem.pkinfra-new").write_text("the shell's staging: not ours here")
    (tmp_path / "other").write_text("x")
    drop_staged(target)
    assert not left.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cert.pem.pkinfra-new", "other"]
