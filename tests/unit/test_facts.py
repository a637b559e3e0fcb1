"""Facts run their shell command against real files and openssl, and parse what they print."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from operations.facts import PrivateKey
from operations.util import GENPKEY_ARGS, genpkey


def run_fact(command: str) -> list[str]:
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048", "ed25519"])
def test_generated_key_is_private_and_recognised(tmp_path: Path, key_type: str) -> None:
    path = tmp_path / "sub" / "key.pem"
    path.parent.mkdir()
    owner = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    group = subprocess.run(["id", "-gn"], capture_output=True, text=True).stdout.strip()
    subprocess.run(["sh", "-c", genpkey(str(path), key_type, owner, group)], check=True)
    assert path.stat().st_mode & 0o777 == 0o600
    assert not list(path.parent.glob("*.pkinfra-new*"))

    fact = PrivateKey()
    output = run_fact(fact.command(path=str(path)))
    assert fact.process(output) == {
        "mode": "0600",
        "owner": owner,
        "group": group,
        "key_type": key_type,
    }
    # The fact's output is what -vvv shows: it must hold no private material.
    assert "PRIVATE" not in "\n".join(output)
    assert "priv:" not in "\n".join(output)


def test_absent_not_a_file_and_not_a_key(tmp_path: Path) -> None:
    fact = PrivateKey()
    assert fact.process(run_fact(fact.command(path=str(tmp_path / "nope")))) is None
    assert fact.process(run_fact(fact.command(path=str(tmp_path)))) is False
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key\n")
    info = fact.process(run_fact(fact.command(path=str(junk))))
    assert isinstance(info, dict) and info["key_type"] is None


def test_every_model_key_type_has_genpkey_arguments() -> None:
    from pkinfra.keys import KEY_TYPES

    assert set(GENPKEY_ARGS) == set(KEY_TYPES)


def test_certbot_lineage_reads_the_certificate_itself(tmp_path: Path) -> None:
    from operations.facts import CertbotLineage
    from tests.helpers import self_signed

    key, cert = tmp_path / "privkey.pem", tmp_path / "cert.pem"
    self_signed(key, cert, "/CN=Pebble Intermediate", extensions=["subjectAltName=DNS:Mx1.Test"])
    # What the fact's command prints for a lineage: the certificate as it is (public).
    output = [
        "@lineage",
        "r|server = https://acme/dir",
        *(f"c|{line}" for line in cert.read_text().splitlines()),
        "k|ab",
    ]
    info = CertbotLineage().process(output)
    assert info["names"] == ["mx1.test"] and info["issuer"] == "Pebble Intermediate"
    assert info["not_before"] < info["not_after"] and info["not_after"].endswith("+00:00")
    assert info["renewal"] == {"server": "https://acme/dir"} and info["key_spki_sha256"] == "ab"
    broken = CertbotLineage().process(["@lineage", "c|-----BEGIN CERTIFICATE-----", "c|AAAA"])
    assert (broken["names"], broken["not_after"], broken["issuer"]) == (None, None, None)
