"""TLSA records, checked against openssl's own digests of keys and certificates it made."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pkinfra.tlsa import (
    TLSAError,
    TLSARecord,
    canonical,
    owner_name,
    selected_data,
    tlsa_text,
)


def openssl(*args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(["openssl", *args], input=data, capture_output=True, check=True).stdout


def openssl_digest(data: bytes, algorithm: str) -> str:
    # `openssl dgst -r` prints "<hex> *stdin"
    return openssl("dgst", f"-{algorithm}", "-r", data=data).split()[0].decode()


@dataclass(frozen=True)
class Material:
    """A key and a self-signed certificate made by openssl, with openssl's DER of both."""

    key_pem: bytes
    pubkey_pem: bytes
    spki: bytes
    cert_pem: bytes
    cert_der: bytes


GENPKEY = {
    "ec-p256": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "rsa-2048": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    "ed25519": ["-algorithm", "ED25519"],
}


@pytest.fixture(scope="module", params=sorted(GENPKEY))
def material(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Material:
    directory = tmp_path_factory.mktemp(request.param)
    key = directory / "key.pem"
    openssl("genpkey", *GENPKEY[request.param], "-out", str(key))
    cert = directory / "cert.pem"
    openssl(
        "req", "-x509", "-new", "-key", str(key), "-subj", "/CN=mx1.example.test",
        "-days", "2", "-out", str(cert),
    )  # fmt: skip
    return Material(
        key_pem=key.read_bytes(),
        pubkey_pem=openssl("pkey", "-in", str(key), "-pubout"),
        spki=openssl("pkey", "-in", str(key), "-pubout", "-outform", "DER"),
        cert_pem=cert.read_bytes(),
        cert_der=openssl("x509", "-in", str(cert), "-outform", "DER"),
    )


def test_3_1_1_equals_openssl_digest_of_the_public_key(material: Material) -> None:
    golden = openssl_digest(material.spki, "sha256")
    expected = f"3 1 1 {golden}"
    assert TLSARecord.from_pem(material.key_pem).to_text() == expected
    assert TLSARecord.from_pem(material.pubkey_pem).to_text() == expected
    assert TLSARecord.from_pem(material.cert_pem).to_text() == expected
    assert TLSARecord.build(material.cert_der).to_text() == expected
    assert TLSARecord.build(material.spki).to_text() == expected
    assert TLSARecord.from_spki(material.spki).to_text() == expected
    assert tlsa_text(material.cert_pem.decode()) == expected


def test_every_selector_and_matching_type_against_openssl(material: Material) -> None:
    cert = x509.load_pem_x509_certificate(material.cert_pem)
    for usage in range(4):
        assert (
            TLSARecord.build(cert, usage, 0, 0).to_text()
            == f"{usage} 0 0 {material.cert_der.hex()}"
        )
        assert TLSARecord.build(cert, usage, 0, 1).data.hex() == openssl_digest(
            material.cert_der, "sha256"
        )
        assert TLSARecord.build(cert, usage, 0, 2).data.hex() == openssl_digest(
            material.cert_der, "sha512"
        )
        assert TLSARecord.build(cert, usage, 1, 0).data == material.spki
        assert TLSARecord.build(cert, usage, 1, 2).data.hex() == openssl_digest(
            material.spki, "sha512"
        )
    assert selected_data(cert.public_key(), 1) == material.spki


def test_first_certificate_of_a_chain_is_used(material: Material, tmp_path: Path) -> None:
    other_key = tmp_path / "ca.key"
    openssl("genpkey", *GENPKEY["ec-p256"], "-out", str(other_key))
    other = openssl("req", "-x509", "-new", "-key", str(other_key), "-subj", "/CN=ca", "-days", "2")
    assert TLSARecord.from_pem(material.cert_pem + other) == TLSARecord.from_pem(material.cert_pem)
    assert TLSARecord.from_pem(other + material.cert_pem) != TLSARecord.from_pem(material.cert_pem)


# Ed25519 keys exist only as PKCS#8.
@pytest.mark.parametrize("material", ["ec-p256", "rsa-2048"], indirect=True)
def test_traditional_private_key_formats(material: Material, tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_bytes(material.key_pem)
    # PKCS#1 for RSA, SEC1 for EC.
    traditional = openssl("pkey", "-in", str(key), "-traditional")
    assert TLSARecord.from_pem(traditional).data.hex() == openssl_digest(material.spki, "sha256")


def test_matches(material: Material) -> None:
    record = TLSARecord.from_pem(material.cert_pem)
    assert record.matches(material.key_pem)
    assert record.matches(material.spki)
    full = TLSARecord.from_pem(material.cert_pem, 3, 0, 1)
    assert full.matches(material.cert_pem)
    assert not full.matches(material.pubkey_pem)  # a bare key never matches a Cert selector
    stranger = TLSARecord.from_text("3 1 1 " + "00" * 32)
    assert not stranger.matches(material.cert_pem)


def test_text_round_trip() -> None:
    text = "3 1 1 " + "0f" * 32
    assert TLSARecord.from_text(text).to_text() == text
    split = "2 0 1 " + "AB" * 16 + " " + "CD" * 16
    assert TLSARecord.from_text(split).to_text() == "2 0 1 " + "ab" * 16 + "cd" * 16
    assert str(TLSARecord.from_text(text)) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3 1 1", "needs usage"),
        ("x 1 1 00", "are numbers"),
        ("3 1 1 zz", "not hex"),
        ("4 1 1 " + "00" * 32, "usage 4 is not one of"),
        ("3 2 1 " + "00" * 32, "selector 2"),
        ("3 1 3 " + "00" * 32, "matching type 3"),
        ("3 1 1 " + "00" * 31, "31 octets, not 32"),
        ("3 1 2 " + "00" * 32, "32 octets, not 64"),
    ],
)
def test_bad_text(text: str, message: str) -> None:
    with pytest.raises(TLSAError, match=message):
        TLSARecord.from_text(text)


def test_bad_sources(material: Material, tmp_path: Path) -> None:
    with pytest.raises(TLSAError, match=r"selector 0 .* needs a certificate"):
        TLSARecord.from_pem(material.key_pem, 3, 0, 1)
    with pytest.raises(TLSAError, match="no PEM block"):
        TLSARecord.from_pem(b"hello")
    with pytest.raises(TLSAError, match="neither a certificate nor a SubjectPublicKeyInfo"):
        TLSARecord.build(b"\x30\x03\x02\x01\x00")
    with pytest.raises(TLSAError, match="usage 7"):
        TLSARecord.build(material.cert_pem, usage=7)
    encrypted = serialization.load_pem_private_key(material.key_pem, None).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass phrase"),
    )
    with pytest.raises(TLSAError, match="encrypted"):
        TLSARecord.from_pem(encrypted)
    with pytest.raises(TLSAError, match="neither a certificate nor a key"):
        TLSARecord.from_pem(b"-----BEGIN X509 CRL-----\nMAA=\n-----END X509 CRL-----\n")


def test_owner_name() -> None:
    assert owner_name(25, "tcp", "MX1.example.test.") == "_25._tcp.mx1.example.test"
    assert owner_name(853, "udp", "ns1.example.test") == "_853._udp.ns1.example.test"
    with pytest.raises(TLSAError, match="port 0"):
        owner_name(0, "tcp", "x.test")
    with pytest.raises(TLSAError, match="protocol 'TCP'"):
        owner_name(25, "TCP", "x.test")
    with pytest.raises(TLSAError, match="needs a host name"):
        owner_name(25, "tcp", ".")


def test_canonical_text_is_the_one_form_records_are_compared_in() -> None:
    text = "3 1 1 " + "0f" * 32
    assert canonical("3  1 1 " + "0F" * 16 + " " + "0f" * 16) == text
    assert canonical(text) == text
    # What a server serves is compared as it is, unknown parameters and odd lengths included.
    assert canonical("255 7 9 AB CD") == "255 7 9 abcd"
    with pytest.raises(TLSAError, match="not hex"):
        canonical("3 1 1 zz")


def test_records_from_dns_may_be_unusable() -> None:
    @dataclass
    class Rdata:  # the attributes of dnspython's TLSA rdata
        usage: int
        selector: int
        mtype: int
        cert: bytes

    usable = TLSARecord.from_rdata(Rdata(3, 1, 1, b"\x00" * 32))
    assert usable == TLSARecord.from_text("3 1 1 " + "00" * 32) and usable.usable
    for rdata in (Rdata(4, 1, 1, b"\x00"), Rdata(3, 2, 1, b"\x00"), Rdata(3, 1, 3, b"\x00")):
        record = TLSARecord.from_rdata(rdata)
        assert not record.usable
        assert not record.matches(b"anything: an unusable record is never compared")
    with pytest.raises(TLSAError, match="usage 256 is not an octet"):
        TLSARecord(256, 1, 1, b"\x00")
