"""pkinfra/acme.py: when a lineage must move to the host's current ACME account (and what a
dry run says about it), and the lab ACME server's CA (made once through the CA store's builder,
name-constrained; what it signs verifies as a TLS server certificate for the ACME name)."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import NameOID

from pkinfra import acme

NAME = "acme.example.test"
SAVED = "207ca35830346542e3cd01455b9b43c8"
OTHER = "5f1e0c2d9a8b7c6d5e4f3a2b1c0d9e8f"
NOT_HERE = f"certificate mail: its ACME account {SAVED} is not on this host; moving to {OTHER}"


def lineage(account: str | None) -> acme.LineageInfo:
    renewal = {"server": "https://acme.example.test:14000/dir"}
    if account is not None:
        renewal["account"] = account
    return {
        "renewal": renewal,
        "webroot_map": {},
        "names": ["mx1.example.test"],
        "not_before": None,
        "not_after": None,
        "issuer": None,
        "key_spki_sha256": None,
    }


@pytest.mark.parametrize(
    ("account", "ids", "state", "expected"),
    [
        (SAVED, [SAVED], "valid", (None, False)),
        (SAVED, [OTHER, SAVED], "valid", (None, False)),
        (
            SAVED,
            [OTHER],
            "valid",
            (
                NOT_HERE,
                False,
            ),
        ),
        (
            SAVED,
            [OTHER],
            "unchecked",
            (
                NOT_HERE,
                False,
            ),
        ),
        (
            SAVED,
            [],
            "none",
            (
                f"certificate mail: its ACME account {SAVED} is not on this host; moving to the"
                " account registered in this run",
                False,
            ),
        ),
        (
            SAVED,
            [SAVED],
            "unknown",
            (
                f"certificate mail: its ACME account {SAVED} is unknown to the server; moving to"
                " the account registered again",
                False,
            ),
        ),
        (
            SAVED,
            [SAVED],
            "unchecked",
            (
                f"certificate mail: its ACME account {SAVED} could not be checked; renewed if it"
                " is registered again",
                True,
            ),
        ),
        # Nothing saved to move from.
        (None, [OTHER], "valid", (None, False)),
        ("", [], "none", (None, False)),
    ],
)
def test_account_move(
    account: str | None, ids: list[str], state: str, expected: tuple[str | None, bool]
) -> None:
    assert acme.account_move(lineage(account), {"ids": ids, "state": state}, "mail") == expected


def test_no_lineage_has_nothing_to_move() -> None:
    assert acme.account_move(None, {"ids": [], "state": "none"}, "mail") == (None, False)


def csr_pem(name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def verify(ca_pem: bytes, leaf_pem: bytes, name: str) -> None:
    store = verification.Store([x509.load_pem_x509_certificate(ca_pem)])
    verifier = (
        verification.PolicyBuilder()
        .store(store)
        .time(dt.datetime.now(dt.UTC))
        .build_server_verifier(x509.DNSName(name))
    )
    verifier.verify(x509.load_pem_x509_certificate(leaf_pem), [])


def test_the_ca_is_made_once_constrained_and_its_key_private(tmp_path: Path) -> None:
    bundle = tmp_path / "lab" / "pebble-ca.pem"
    pem = acme.ensure_server_ca(bundle, [NAME])
    key_path = acme.ca_key_path(bundle)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert acme.ensure_server_ca(bundle, [NAME]) == pem == bundle.read_bytes()

    cert = x509.load_pem_x509_certificate(pem)
    assert cert.subject == cert.issuer
    assert cert.subject.rfc4514_string() == "CN=pkinfra lab ACME server CA,O=pkinfra lab"
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    constraints = cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    assert constraints.value.permitted_subtrees == [x509.DNSName(NAME)]
    # The key beside it is the certificate's key.
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert key.public_key() == cert.public_key()
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert acme.ca_key_id(bundle) == x509.SubjectKeyIdentifier.from_public_key(public).digest.hex()


def test_a_signed_server_certificate_verifies_for_its_name_only(tmp_path: Path) -> None:
    bundle = tmp_path / "pebble-ca.pem"
    ca_pem = acme.ensure_server_ca(bundle, [NAME])
    leaf = acme.sign_server_csr(bundle, csr_pem(NAME), [NAME])
    verify(ca_pem, leaf, NAME)
    # Outside the constraint: the CA signs, but no verifier accepts it.
    stray = acme.sign_server_csr(bundle, csr_pem("www.example.test"), ["www.example.test"])
    with pytest.raises(verification.VerificationError):
        verify(ca_pem, stray, "www.example.test")


def test_half_a_pair_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "pebble-ca.pem"
    bundle.write_text("left over\n")
    with pytest.raises(acme.AcmeError, match="exists without its pair"):
        acme.ensure_server_ca(bundle, [NAME])
    assert not acme.ca_key_path(bundle).exists()
