"""Behaviour of the CA store (pkinfra/ca.py) and key types (pkinfra/keys.py).

Chains, name constraints, path lengths and CRLs are judged by `openssl verify`, not by our own
code. All key material is generated here, in temporary directories.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st

from pkinfra import ca as ca_mod
from pkinfra import names
from pkinfra.ca import CAError, CAStore, DNSConstraints, PassphraseSource
from pkinfra.keys import (
    KEY_TYPES,
    KeyTypeError,
    PrivateKey,
    generate_private_key,
    genpkey_args,
    key_type_of,
    spki_sha256,
)

PASS = b"test-only passphrase 7f3c"
OTHER_PASS = b"another test passphrase 91aa"
REPO = Path(__file__).resolve().parents[2]


# --- helpers ---------------------------------------------------------------------------------


def make_csr(
    key_type: str = "ec-p256", names: Sequence[str] = ("ignored.example.org",)
) -> tuple[PrivateKey, bytes]:
    key = generate_private_key(key_type)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .sign(key, None if key_type == "ed25519" else hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM)


def sign(store: CAStore, ca: str, names: Sequence[str], **kw: Any) -> ca_mod.Issued:
    _, csr = make_csr(kw.pop("key_type", "ec-p256"))
    args: dict[str, Any] = {
        "usages": {"server"},
        "validity_days": 90,
        "host": "db1",
        "cert_name": "duckcorp",
        "passphrase": PASS,
    }
    args.update(kw)
    return store.sign_csr(ca, csr, names=names, **args)


def verify(
    tmp: Path,
    *,
    root: bytes,
    leaf: bytes,
    untrusted: bytes = b"",
    crls: Sequence[bytes] = (),
) -> subprocess.CompletedProcess[str]:
    """`openssl verify -x509_strict` of `leaf` against `root` (+ intermediates, + CRLs)."""
    work = tmp / f"verify-{os.urandom(4).hex()}"
    work.mkdir()
    (work / "root.pem").write_bytes(root)
    (work / "leaf.pem").write_bytes(leaf)
    cmd = ["openssl", "verify", "-x509_strict", "-CAfile", str(work / "root.pem")]
    if untrusted:
        (work / "untrusted.pem").write_bytes(untrusted)
        cmd += ["-untrusted", str(work / "untrusted.pem")]
    if crls:
        (work / "crls.pem").write_bytes(b"".join(crls))
        cmd += ["-crl_check_all", "-CRLfile", str(work / "crls.pem")]
    cmd.append(str(work / "leaf.pem"))
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def assert_verifies(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr


def assert_rejected(result: subprocess.CompletedProcess[str], why: str) -> None:
    assert result.returncode != 0, result.stdout
    assert why in result.stdout + result.stderr


def ca_key(store: CAStore, name: str, passphrase: bytes | None = PASS) -> Any:
    data = (store.directory / name / "ca.key").read_bytes()
    return serialization.load_pem_private_key(data, passphrase)


def ca_cert(store: CAStore, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((store.directory / name / "ca.crt").read_bytes())


def hand_signed_leaf(
    issuer: x509.Certificate, issuer_key: Any, names: Sequence[x509.GeneralName]
) -> bytes:
    """A leaf signed directly with a CA key, bypassing every check of the store."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hand-made")]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(issuer_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def store(tmp_path: Path) -> CAStore:
    return CAStore(tmp_path / "pki")


@pytest.fixture
def hierarchy(store: CAStore) -> CAStore:
    """duckcorp (root, example.test minus secret.example.test) > duckcorp-backup (sub-CA)."""
    store.create_root(
        "duckcorp",
        organization="DuckCorp",
        permitted=["example.test"],
        excluded=["secret.example.test"],
        passphrase=PASS,
    )
    store.create_sub_ca(
        "duckcorp-backup",
        "duckcorp",
        parent_passphrase=PASS,
        permitted=["backup.example.test"],
        path_length=0,
        passphrase=PASS,
    )
    return store


# --- key types -------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "ed25519", "rsa-2048"])
def test_generated_keys_have_their_type(key_type: str) -> None:
    key = generate_private_key(key_type)
    assert key_type_of(key) == key_type
    assert key_type_of(key.public_key()) == key_type


def test_key_type_names_and_genpkey_args() -> None:
    assert KEY_TYPES == ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096", "ed25519")
    assert genpkey_args("ec-p384")[-1] == "ec_paramgen_curve:P-384"
    assert genpkey_args("rsa-4096")[-1] == "rsa_keygen_bits:4096"
    assert genpkey_args("ed25519") == ["-algorithm", "ED25519"]
    with pytest.raises(KeyTypeError, match="unknown key type 'dsa-1024'"):
        generate_private_key("dsa-1024")
    with pytest.raises(KeyTypeError, match="unsupported elliptic curve"):
        key_type_of(ec.generate_private_key(ec.SECP256K1()).public_key())


# --- passphrases -----------------------------------------------------------------------------


def test_passphrase_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PKINFRA_TEST_PASS", "s3cret-value\n")
    assert PassphraseSource.from_env("PKINFRA_TEST_PASS").read() == b"s3cret-value"
    monkeypatch.delenv("PKINFRA_TEST_PASS")
    with pytest.raises(CAError, match="environment variable PKINFRA_TEST_PASS is not set"):
        PassphraseSource.parse("env:PKINFRA_TEST_PASS").read()


def test_passphrase_from_file(tmp_path: Path) -> None:
    path = tmp_path / "pass"
    path.write_bytes(b"s3cret-value\n\n")
    # Exactly one trailing newline is stripped: a second one may belong to the passphrase.
    assert PassphraseSource.from_file(path).read() == b"s3cret-value\n"
    path.write_bytes(b"\n")
    with pytest.raises(CAError, match="is empty"):
        PassphraseSource.from_file(path).read()
    missing = tmp_path / "nope"
    with pytest.raises(CAError, match=f"cannot read passphrase file {missing}"):
        PassphraseSource.parse(f"file:{missing}").read()
    with pytest.raises(CAError, match="env:NAME or file:PATH"):
        PassphraseSource.parse("literal:s3cret-value")


# --- roots -----------------------------------------------------------------------------------


def test_root_layout_modes_and_extensions(store: CAStore) -> None:
    info = store.create_root(
        "duckcorp",
        organization="DuckCorp",
        path_length=2,
        permitted=["example.test"],
        excluded=["secret.example.test"],
        passphrase=PASS,
    )
    folder = store.directory / "duckcorp"
    assert {p.name for p in folder.iterdir()} >= {"ca.crt", "ca.key", "ca.json", "record.jsonl"}
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "ca.key").stat().st_mode) == 0o600
    assert (folder / "ca.key").read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")

    cert = ca_cert(store, "duckcorp")
    assert cert.subject.rfc4514_string() == "CN=duckcorp,O=DuckCorp"
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 2
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    constraints = cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    assert constraints.value.permitted_subtrees == [x509.DNSName("example.test")]
    assert x509.DNSName("secret.example.test") in (constraints.value.excluded_subtrees or [])
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert info.key_type == "ec-p256" and info.parent is None and info.key_encrypted
    assert info.constraints == DNSConstraints(("example.test",), ("secret.example.test",))
    assert store.names() == ["duckcorp"]


def test_root_key_needs_passphrase_unless_explicitly_unencrypted(store: CAStore) -> None:
    with pytest.raises(CAError, match="a passphrase is required"):
        store.create_root("duckcorp")
    with pytest.raises(CAError, match="choose one"):
        store.create_root("duckcorp", passphrase=PASS, unencrypted=True)
    info = store.create_root("duckcorp", unencrypted=True, key_type="ed25519")
    assert not info.key_encrypted
    assert (
        (store.directory / "duckcorp" / "ca.key")
        .read_bytes()
        .startswith(b"-----BEGIN PRIVATE KEY-----")
    )
    leaf = sign(store, "duckcorp", ["a.example.test"], passphrase=None)
    assert_verifies(verify(store.directory, root=info.cert_pem, leaf=leaf.cert_pem))


def test_existing_ca_is_never_replaced_unless_asked(store: CAStore) -> None:
    first = store.create_root("duckcorp", passphrase=PASS)
    key_before = (store.directory / "duckcorp" / "ca.key").read_bytes()
    with pytest.raises(CAError, match="already exists"):
        store.create_root("duckcorp", passphrase=PASS)
    assert (store.directory / "duckcorp" / "ca.key").read_bytes() == key_before
    second = store.create_root("duckcorp", passphrase=PASS, replace=True)
    assert second.spki_sha256 != first.spki_sha256
    aside = [p for p in store.directory.iterdir() if p.name.startswith(".duckcorp.replaced-")]
    assert len(aside) == 1 and (aside[0] / "ca.key").read_bytes() == key_before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"permitted": ["example.test\n"]}, "space or control character"),
        ({"permitted": ["mx1\n.example.test"]}, "space or control character"),
        ({"permitted": "example.test"}, "not one string"),
        ({"excluded": ["bad_label.test"]}, "label 'bad_label' may only hold"),
        ({"path_length": -1}, "path length must be"),
        ({"validity_days": 0}, "at least 1 day"),
        ({"key_type": "rsa-1024"}, "unknown key type"),
    ],
)
def test_root_argument_errors(store: CAStore, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(CAError, match=message):
        store.create_root("duckcorp", passphrase=PASS, **kwargs)
    assert store.names() == []


def test_invalid_and_unknown_ca_names(store: CAStore) -> None:
    with pytest.raises(CAError, match="invalid CA name"):
        store.create_root("../evil", passphrase=PASS)
    with pytest.raises(CAError, match="unknown CA"):
        sign(store, "nobody", ["a.example.test"])


# --- sub-CAs and leaves ----------------------------------------------------------------------


def test_leaf_from_sub_ca_verifies_strictly(hierarchy: CAStore, tmp_path: Path) -> None:
    issued = sign(hierarchy, "duckcorp-backup", ["db1.backup.example.test", "backup.example.test"])
    root = hierarchy.root_pem("duckcorp-backup")
    assert issued.chain_pem == hierarchy.ca("duckcorp-backup").cert_pem
    assert issued.bundle_pem == issued.chain_pem + root
    assert issued.fullchain_pem == issued.cert_pem + issued.chain_pem
    assert_verifies(verify(tmp_path, root=root, untrusted=issued.chain_pem, leaf=issued.cert_pem))
    # Without the intermediate the chain cannot be built.
    assert_rejected(verify(tmp_path, root=root, leaf=issued.cert_pem), "unable to get local")


def test_leaf_contents(hierarchy: CAStore) -> None:
    _, csr = make_csr("ec-p256", names=["evil.example.org", "other.example.org"])
    issued = hierarchy.sign_csr(
        "duckcorp",
        csr,
        names=["DB1.Example.Test.", "db1-alt.example.test"],
        usages={"server", "client"},
        validity_days=30,
        host="db1",
        cert_name="duckcorp",
        passphrase=PASS,
    )
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    # Names come from the arguments only, never from the CSR.
    assert cert.subject.rfc4514_string() == "CN=db1.example.test"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["db1.example.test", "db1-alt.example.test"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not usage.value.key_encipherment  # EC key: no RSA key transport
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and not basic.value.ca
    root_ski = ca_cert(hierarchy, "duckcorp").extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    )
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == root_ski.value.digest
    assert cert.serial_number.bit_length() == 128
    assert issued.chain_pem == b"" and issued.bundle_pem == hierarchy.ca("duckcorp").cert_pem
    not_after = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=29) < not_after <= dt.timedelta(days=30)


def test_rsa_leaf_gets_key_encipherment(hierarchy: CAStore, tmp_path: Path) -> None:
    issued = sign(hierarchy, "duckcorp-backup", ["b.backup.example.test"], key_type="rsa-2048")
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment
    assert issued.record.key_type == "rsa-2048"
    root = hierarchy.root_pem("duckcorp-backup")
    assert_verifies(verify(tmp_path, root=root, untrusted=issued.chain_pem, leaf=issued.cert_pem))


def test_leaf_validity_is_cut_to_the_ca(store: CAStore) -> None:
    store.create_root("short", validity_days=10, passphrase=PASS)
    issued = sign(store, "short", ["a.example.test"], validity_days=365)
    assert issued.not_after == store.ca("short").not_after


def test_three_levels_with_p384_and_ed25519(store: CAStore, tmp_path: Path) -> None:
    store.create_root("root", key_type="ec-p384", path_length=2, passphrase=PASS)
    store.create_sub_ca(
        "mid",
        "root",
        parent_passphrase=PASS,
        key_type="ed25519",
        path_length=1,
        passphrase=None,
        unencrypted=True,
    )
    store.create_sub_ca("leafca", "mid", parent_passphrase=None, passphrase=PASS)
    issued = sign(store, "leafca", ["x.example.test"])
    assert len(x509.load_pem_x509_certificates(issued.chain_pem)) == 2
    root = store.root_pem("leafca")
    crls = [store.crl("root", PASS), store.crl("mid", None), store.crl("leafca", PASS)]
    result = verify(
        tmp_path, root=root, untrusted=issued.chain_pem, leaf=issued.cert_pem, crls=crls
    )
    assert_verifies(result)


def test_sub_ca_refusals(store: CAStore) -> None:
    store.create_root("root", path_length=1, permitted=["example.test"], passphrase=PASS)
    store.create_sub_ca(
        "mid",
        "root",
        parent_passphrase=PASS,
        path_length=0,
        permitted=["a.example.test"],
        passphrase=PASS,
    )
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("mid", {"permitted": ["x.a.example.test"]}, "allows no further CA"),
        ("root", {"path_length": None, "permitted": ["b.example.test"]}, "wider than the parent"),
        ("root", {"path_length": 1, "permitted": ["b.example.test"]}, "at most 0"),
        ("root", {"permitted": ["example.org"]}, "is wider than CN=root allows"),
        ("root", {"permitted": []}, "needs permitted subtrees"),
        ("root", {"validity_days": 20000, "permitted": ["b.example.test"]}, "outlive its parent"),
    ]
    for parent, kwargs, message in cases:
        kwargs.setdefault("path_length", 0)
        with pytest.raises(CAError, match=message):
            store.create_sub_ca("new", parent, parent_passphrase=PASS, passphrase=PASS, **kwargs)
    assert store.names() == ["mid", "root"]


def test_sub_ca_inside_parent_exclusion_is_refused(hierarchy: CAStore) -> None:
    with pytest.raises(CAError, match=r"excluded subtree secret\.example\.test"):
        hierarchy.create_sub_ca(
            "secret",
            "duckcorp",
            parent_passphrase=PASS,
            permitted=["x.secret.example.test"],
            passphrase=PASS,
        )


def test_store_refuses_names_outside_constraints(hierarchy: CAStore) -> None:
    with pytest.raises(CAError, match=r"db1\.example\.test is outside the permitted subtrees"):
        sign(hierarchy, "duckcorp-backup", ["ok.backup.example.test", "db1.example.test"])
    # The root's exclusion binds what its sub-CAs sign too.
    hierarchy.create_sub_ca(
        "wide", "duckcorp", parent_passphrase=PASS, permitted=["example.test"], passphrase=PASS
    )
    with pytest.raises(CAError, match=r"inside the excluded subtree secret\.example\.test"):
        sign(hierarchy, "wide", ["db.secret.example.test"])
    with pytest.raises(CAError, match="inside the excluded subtree"):
        sign(hierarchy, "wide", ["*.example.test"])  # would cover secret.example.test
    assert hierarchy.list_issued("wide") == []


def test_openssl_enforces_name_constraints_and_ip_exclusion(
    hierarchy: CAStore, tmp_path: Path
) -> None:
    sub = ca_cert(hierarchy, "duckcorp-backup")
    sub_key = ca_key(hierarchy, "duckcorp-backup")
    root = hierarchy.root_pem("duckcorp-backup")
    chain = hierarchy.chain_pem("duckcorp-backup")
    inside = hand_signed_leaf(sub, sub_key, [x509.DNSName("h.backup.example.test")])
    assert_verifies(verify(tmp_path, root=root, untrusted=chain, leaf=inside))
    outside = hand_signed_leaf(sub, sub_key, [x509.DNSName("db1.example.test")])
    assert_rejected(verify(tmp_path, root=root, untrusted=chain, leaf=outside), "subtree")
    ip = x509.IPAddress(__import__("ipaddress").ip_address("192.0.2.7"))
    by_ip = hand_signed_leaf(sub, sub_key, [x509.DNSName("h.backup.example.test"), ip])
    assert_rejected(verify(tmp_path, root=root, untrusted=chain, leaf=by_ip), "subtree")


def test_leading_dot_subtree_is_subdomains_only_in_the_store_and_for_openssl(
    store: CAStore, tmp_path: Path
) -> None:
    store.create_root("root", path_length=2, passphrase=PASS)
    sub = store.create_sub_ca(
        "sub",
        "root",
        parent_passphrase=PASS,
        permitted=[".Example.test"],
        passphrase=PASS,
        path_length=1,
    )
    assert DNSConstraints.of(ca_cert(store, "sub")).permitted == (".example.test",)
    assert sub.name == "sub"
    sign(store, "sub", ["a.example.test", "*.example.test"], cert_name="a")
    with pytest.raises(CAError, match=r"example\.test is outside the permitted subtrees"):
        sign(store, "sub", ["example.test"], cert_name="apex")
    # A sub-CA of it may not take the domain itself back.
    with pytest.raises(CAError, match="wider than"):
        store.create_sub_ca(
            "subsub", "sub", parent_passphrase=PASS, permitted=["example.test"], passphrase=PASS
        )
    # OpenSSL reads the certificate's leading-dot constraint the same way.
    sub_cert, sub_key = ca_cert(store, "sub"), ca_key(store, "sub")
    root, chain = store.root_pem("sub"), store.chain_pem("sub")
    below = hand_signed_leaf(sub_cert, sub_key, [x509.DNSName("a.example.test")])
    assert_verifies(verify(tmp_path, root=root, untrusted=chain, leaf=below))
    apex = hand_signed_leaf(sub_cert, sub_key, [x509.DNSName("example.test")])
    assert_rejected(verify(tmp_path, root=root, untrusted=chain, leaf=apex), "subtree")


def test_openssl_enforces_path_length(store: CAStore, tmp_path: Path) -> None:
    store.create_root("root", path_length=0, passphrase=PASS)
    with pytest.raises(CAError, match="allows no further CA"):
        store.create_sub_ca("sub", "root", parent_passphrase=PASS, passphrase=PASS)
    # Made by hand anyway, such a sub-CA's certificates do not verify.
    rogue_key = generate_private_key("ec-p256")
    now = dt.datetime.now(dt.UTC)
    rogue = ca_mod.build_ca_certificate(
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rogue")]),
        public_key=rogue_key.public_key(),
        issuer_cert=ca_cert(store, "root"),
        issuer_key=ca_key(store, "root"),
        serial=ca_mod.random_serial(),
        not_before=now - dt.timedelta(minutes=1),
        not_after=now + dt.timedelta(days=1),
        path_length=None,
        constraints=DNSConstraints(),
    )
    leaf = hand_signed_leaf(rogue, rogue_key, [x509.DNSName("a.example.test")])
    rogue_pem = rogue.public_bytes(serialization.Encoding.PEM)
    result = verify(tmp_path, root=store.root_pem("root"), untrusted=rogue_pem, leaf=leaf)
    assert_rejected(result, "path length constraint exceeded")


@given(
    labels=st.lists(
        st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True), min_size=1, max_size=3
    ),
    prefix=st.from_regex(r"[a-z0-9]{1,5}", fullmatch=True),
)
def test_subtree_matching_is_label_wise(labels: list[str], prefix: str) -> None:
    subtree = "example.test"
    name = ".".join([*labels, subtree])
    assert names.within_subtree(name, subtree)
    assert names.within_subtree(subtree, subtree)
    assert names.within_subtree(name, "." + subtree)
    assert not names.within_subtree(subtree, "." + subtree)
    # Same suffix, but not on a label boundary: not inside.
    assert not names.within_subtree(prefix + subtree, subtree)
    assert not names.within_subtree(prefix + subtree, "." + subtree)
    constraints = DNSConstraints(permitted=(subtree,), excluded=(f"{labels[-1]}.{subtree}",))
    assert constraints.refusal(f"{prefix}.{labels[-1]}.{subtree}") is not None
    assert constraints.refusal(f"*.{subtree}") is not None  # could be the excluded name
    assert constraints.refusal(f"{prefix}{subtree}") is not None


# --- revocation and CRLs ---------------------------------------------------------------------


def test_revocation_and_crls_with_openssl(hierarchy: CAStore, tmp_path: Path) -> None:
    revoked = sign(hierarchy, "duckcorp-backup", ["a.backup.example.test"], cert_name="a")
    sibling = sign(hierarchy, "duckcorp-backup", ["b.backup.example.test"], cert_name="b")
    assert hierarchy.crl_due("duckcorp-backup", 1)  # no CRL yet
    record = hierarchy.revoke("duckcorp-backup", f"{revoked.serial:X}", "key_compromise")
    assert record.status == "revoked" and record.revocation_reason == "key_compromise"
    assert hierarchy.revoke("duckcorp-backup", revoked.serial, "superseded") == record
    crls = [hierarchy.crl(name, PASS) for name in ("duckcorp", "duckcorp-backup")]
    assert not hierarchy.crl_due("duckcorp-backup", 6)
    assert hierarchy.crl_due("duckcorp-backup", 8)  # nextUpdate is in 7 days

    root = hierarchy.root_pem("duckcorp-backup")
    chain = hierarchy.chain_pem("duckcorp-backup")
    bad = verify(tmp_path, root=root, untrusted=chain, leaf=revoked.cert_pem, crls=crls)
    assert_rejected(bad, "certificate revoked")
    good = verify(tmp_path, root=root, untrusted=chain, leaf=sibling.cert_pem, crls=crls)
    assert_verifies(good)
    # Every CA of the chain needs its CRL with -crl_check_all.
    assert_rejected(
        verify(tmp_path, root=root, untrusted=chain, leaf=sibling.cert_pem, crls=crls[1:]),
        "unable to get certificate CRL",
    )

    crl = x509.load_pem_x509_crl(crls[1])
    entry = crl.get_revoked_certificate_by_serial_number(revoked.serial)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.key_compromise
    )
    assert hierarchy.current_crl("duckcorp-backup") == crls[1]
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    again = x509.load_pem_x509_crl(hierarchy.crl("duckcorp-backup", PASS))
    assert again.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number + 1

    hierarchy.revoke("duckcorp-backup", sibling.serial)
    assert hierarchy.crl_due("duckcorp-backup", 0)  # a revocation the CRL does not carry yet


def test_revoking_a_sub_ca_lands_in_the_parent_crl(hierarchy: CAStore, tmp_path: Path) -> None:
    [sub] = [r for r in hierarchy.list_issued("duckcorp") if r.kind == "ca"]
    assert sub.cert_name == "duckcorp-backup" and sub.serial == hierarchy.ca(sub.cert_name).serial
    leaf = sign(hierarchy, "duckcorp-backup", ["a.backup.example.test"])
    hierarchy.revoke("duckcorp", sub.serial, "cessation_of_operation")
    crls = [hierarchy.crl(name, PASS) for name in ("duckcorp", "duckcorp-backup")]
    root = hierarchy.root_pem("duckcorp-backup")
    chain = hierarchy.chain_pem("duckcorp-backup")
    result = verify(tmp_path, root=root, untrusted=chain, leaf=leaf.cert_pem, crls=crls)
    assert_rejected(result, "certificate revoked")


def test_revoke_errors(hierarchy: CAStore) -> None:
    with pytest.raises(CAError, match="no certificate with serial abc"):
        hierarchy.revoke("duckcorp", "0xabc")
    with pytest.raises(CAError, match="not a hexadecimal number"):
        hierarchy.revoke("duckcorp", "zz")
    issued = sign(hierarchy, "duckcorp", ["a.example.test"])
    with pytest.raises(CAError, match="unknown revocation reason 'oops'"):
        hierarchy.revoke("duckcorp", issued.serial, "oops")
    with pytest.raises(CAError, match="next_update_days"):
        hierarchy.crl("duckcorp", PASS, next_update_days=0)


# --- records ---------------------------------------------------------------------------------


def test_record_lines_and_find_current(hierarchy: CAStore) -> None:
    first = sign(hierarchy, "duckcorp", ["db1.example.test"])
    second = sign(hierarchy, "duckcorp", ["db1.example.test"])
    other = sign(hierarchy, "duckcorp", ["mon1.example.test"], host="mon1", usages={"client"})
    lines = (hierarchy.directory / "duckcorp" / "record.jsonl").read_text().splitlines()
    entry = json.loads(lines[-1])
    assert entry["serial"] == f"{other.serial:x}" and entry["host"] == "mon1"
    assert entry["usages"] == ["client"] and entry["names"] == ["mon1.example.test"]
    assert entry["spki_sha256"] == other.record.spki_sha256
    pem = hierarchy.certificate_pem("duckcorp", other.serial)
    assert pem == other.cert_pem

    found = hierarchy.find_current("db1", "duckcorp")
    assert found is not None and found.serial == second.serial
    hierarchy.revoke("duckcorp", second.serial)
    found = hierarchy.find_current("db1", "duckcorp")
    assert found is not None and found.serial == first.serial
    assert hierarchy.find_current("db1", "nothing") is None
    serials = [r.serial for r in hierarchy.list_issued() if r.kind == "leaf"]
    assert serials == [first.serial, second.serial, other.serial]
    assert [r.status for r in hierarchy.list_issued("duckcorp")].count("revoked") == 1


def test_torn_record_tail_is_repaired(hierarchy: CAStore) -> None:
    sign(hierarchy, "duckcorp", ["a.example.test"])
    record = hierarchy.directory / "duckcorp" / "record.jsonl"
    with record.open("ab") as f:
        f.write(b'{"event":"issued","serial":"ff')  # a writer killed mid-line
    assert len(CAStore(hierarchy.directory).list_issued("duckcorp")) == 2
    sign(hierarchy, "duckcorp", ["b.example.test"])
    fresh = CAStore(hierarchy.directory).list_issued("duckcorp")
    assert [r.names[0] for r in fresh if r.kind == "leaf"] == ["a.example.test", "b.example.test"]


def test_corrupt_record_line_is_reported(hierarchy: CAStore) -> None:
    record = hierarchy.directory / "duckcorp" / "record.jsonl"
    with record.open("ab") as f:
        f.write(b"not json\n")
    with pytest.raises(CAError, match="corrupt line") as info:
        CAStore(hierarchy.directory).list_issued("duckcorp")
    assert info.value.path == record


def test_expected_key_fingerprint(hierarchy: CAStore) -> None:
    key, csr = make_csr()
    issue: dict[str, Any] = dict(
        names=["a.example.test"],
        usages={"server"},
        validity_days=1,
        host="h",
        cert_name="c",
        passphrase=PASS,
    )
    fingerprint = spki_sha256(key.public_key())
    hierarchy.sign_csr("duckcorp", csr, expected_spki_sha256=fingerprint, **issue)
    with pytest.raises(CAError, match="does not match the host key"):
        hierarchy.sign_csr("duckcorp", csr, expected_spki_sha256="00" * 32, **issue)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"names": []}, "non-empty list"),
        ({"names": "a.example.test"}, "non-empty list"),
        ({"names": ["bad..name"]}, "has an empty label"),
        ({"names": ["mx1\n.example.test"]}, "space or control character"),
        ({"names": ["mx1.example.test\n"]}, "space or control character"),
        ({"usages": {"email"}}, "usages must be"),
        ({"usages": set()}, "usages must be"),
        ({"validity_days": -3}, "at least 1 day"),
        ({"host": ""}, "must not be empty"),
    ],
)
def test_sign_argument_errors(hierarchy: CAStore, kwargs: dict[str, Any], message: str) -> None:
    names = kwargs.pop("names", ["a.example.test"])
    with pytest.raises(CAError, match=message):
        sign(hierarchy, "duckcorp", names, **kwargs)


# --- import ----------------------------------------------------------------------------------


def mkcert_style_ca(tmp: Path, key_format: serialization.PrivateFormat) -> tuple[Path, Path, Any]:
    """A CA shaped like mkcert's: RSA, pathlen 0, keyUsage keyCertSign only, no AKI."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mkcert development CA"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "ops@laptop"),
            x509.NameAttribute(NameOID.COMMON_NAME, "mkcert ops@laptop"),
        ]
    )
    usage = x509.KeyUsage(False, False, False, False, False, True, False, False, False)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(usage, critical=True)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "rootCA.pem", tmp / "rootCA-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, key_format, serialization.NoEncryption())
    )
    return cert_path, key_path, key


@pytest.mark.parametrize(
    "key_format",
    [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL],
)
def test_import_mkcert_style_ca(
    store: CAStore, tmp_path: Path, key_format: serialization.PrivateFormat
) -> None:
    cert_path, key_path, key = mkcert_style_ca(tmp_path, key_format)
    root = x509.load_pem_x509_certificate(cert_path.read_bytes())
    old_leaf = hand_signed_leaf(root, key, [x509.DNSName("old.example.test")])
    info = store.import_ca("duckcorp", cert_path, key_path, passphrase=PASS)

    assert info.imported and info.key_encrypted and info.key_type == "rsa-2048"
    assert (store.directory / "duckcorp" / "ca.crt").read_bytes() == cert_path.read_bytes()
    stored_key = (store.directory / "duckcorp" / "ca.key").read_bytes()
    assert stored_key.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    stored_root = store.root_pem("duckcorp")
    assert_verifies(verify(tmp_path, root=stored_root, leaf=old_leaf))
    new_leaf = sign(store, "duckcorp", ["new.example.test"])
    assert_verifies(verify(tmp_path, root=cert_path.read_bytes(), leaf=new_leaf.cert_pem))

    [adopted] = store.adopt_issued("duckcorp", [(old_leaf, "web1", "legacy")])
    assert adopted.names == ("old.example.test",)
    assert store.find_current("web1", "legacy") == adopted
    # mkcert's CA has pathlen 0 and no cRLSign: the store says so instead of making
    # certificates and CRLs that verifiers would reject.
    assert not info.can_sign_crl
    with pytest.raises(CAError, match="lacks cRLSign"):
        store.crl("duckcorp", PASS)
    with pytest.raises(CAError, match="allows no further CA"):
        store.create_sub_ca("sub", "duckcorp", parent_passphrase=PASS, passphrase=PASS)


def test_import_sub_ca_finds_its_issuer(hierarchy: CAStore, tmp_path: Path) -> None:
    other = CAStore(tmp_path / "other")
    source = hierarchy.directory
    other.import_ca(
        "root",
        source / "duckcorp" / "ca.crt",
        source / "duckcorp" / "ca.key",
        source_passphrase=PASS,
        passphrase=OTHER_PASS,
    )
    info = other.import_ca(
        "backup",
        source / "duckcorp-backup" / "ca.crt",
        source / "duckcorp-backup" / "ca.key",
        source_passphrase=PASS,
        passphrase=OTHER_PASS,
    )
    assert info.parent == "root"
    issued = sign(other, "backup", ["x.backup.example.test"], passphrase=OTHER_PASS)
    root = other.root_pem("backup")
    assert_verifies(verify(tmp_path, root=root, untrusted=issued.chain_pem, leaf=issued.cert_pem))


def test_import_refusals(hierarchy: CAStore, tmp_path: Path) -> None:
    src = hierarchy.directory
    cert_path, _, _ = mkcert_style_ca(tmp_path, serialization.PrivateFormat.PKCS8)
    other = CAStore(tmp_path / "other")
    with pytest.raises(CAError, match="does not match its key"):
        other.import_ca(
            "x", cert_path, src / "duckcorp" / "ca.key", source_passphrase=PASS, passphrase=PASS
        )
    with pytest.raises(CAError, match="encrypted and no passphrase"):
        other.import_ca(
            "x", src / "duckcorp" / "ca.crt", src / "duckcorp" / "ca.key", passphrase=PASS
        )
    with pytest.raises(CAError, match=r"issuer .* is not in the store"):
        other.import_ca(
            "x",
            src / "duckcorp-backup" / "ca.crt",
            src / "duckcorp-backup" / "ca.key",
            source_passphrase=PASS,
            passphrase=PASS,
        )
    leaf_key, _ = make_csr()
    leaf = sign(hierarchy, "duckcorp", ["leaf.example.test"])
    leaf_key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(CAError, match="does not match its key"):
        other.import_ca("x", leaf.cert_pem, leaf_key_pem, passphrase=PASS)
    with pytest.raises(CAError, match="expected one certificate, found 2"):
        other.import_ca("x", leaf.cert_pem * 2, leaf_key_pem, passphrase=PASS)
    with pytest.raises(CAError, match="cannot read the key: No such file"):
        other.import_ca("x", cert_path, tmp_path / "missing.pem", passphrase=PASS)
    assert other.names() == []


def test_import_refuses_a_leaf_certificate(store: CAStore, tmp_path: Path) -> None:
    key = generate_private_key("ec-p256")
    cert_path, _, root_key = mkcert_style_ca(tmp_path, serialization.PrivateFormat.PKCS8)
    root = x509.load_pem_x509_certificate(cert_path.read_bytes())
    now = dt.datetime.now(dt.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")]))
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(CAError, match="not a CA certificate"):
        store.import_ca(
            "x", leaf.public_bytes(serialization.Encoding.PEM), key_pem, passphrase=PASS
        )


# --- faults ----------------------------------------------------------------------------------


def test_wrong_passphrase(hierarchy: CAStore) -> None:
    sign(hierarchy, "duckcorp", ["a.example.test"])  # loads and caches the key
    with pytest.raises(CAError, match="wrong passphrase") as info:
        sign(hierarchy, "duckcorp", ["a.example.test"], passphrase=OTHER_PASS)
    assert info.value.ca == "duckcorp"
    assert info.value.path == hierarchy.directory / "duckcorp" / "ca.key"
    with pytest.raises(CAError, match="no passphrase was given"):
        sign(hierarchy, "duckcorp", ["a.example.test"], passphrase=None)
    with pytest.raises(CAError, match="wrong passphrase"):
        hierarchy.create_sub_ca(
            "s",
            "duckcorp",
            parent_passphrase=OTHER_PASS,
            passphrase=PASS,
            permitted=["s.example.test"],
        )
    assert "s" not in hierarchy.names()
    assert len(hierarchy.list_issued("duckcorp")) == 2  # the sub-CA and one leaf


def test_corrupt_key_and_mismatched_key(hierarchy: CAStore) -> None:
    key_path = hierarchy.directory / "duckcorp" / "ca.key"
    original = key_path.read_bytes()
    key_path.write_bytes(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nnot base64!\n")
    with pytest.raises(CAError, match="corrupt"):
        sign(hierarchy, "duckcorp", ["a.example.test"])
    # Another CA's key, encrypted with the same passphrase: decrypts, but is not this CA's.
    key_path.write_bytes((hierarchy.directory / "duckcorp-backup" / "ca.key").read_bytes())
    with pytest.raises(CAError, match="CA certificate does not match its key"):
        sign(hierarchy, "duckcorp", ["a.example.test"])
    key_path.write_bytes(original)
    sign(hierarchy, "duckcorp", ["a.example.test"])


def test_no_certificate_without_a_durable_record(
    hierarchy: CAStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(path: Path, lines: object) -> None:
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(ca_mod, "_append_lines", disk_full)
    with pytest.raises(CAError, match="No space left on device") as info:
        sign(hierarchy, "duckcorp-backup", ["a.backup.example.test"])
    assert info.value.path == Path(hierarchy.directory / "duckcorp-backup" / "record.jsonl")
    monkeypatch.undo()
    assert hierarchy.list_issued("duckcorp-backup") == []


def test_failed_install_leaves_nothing(store: CAStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = ca_mod.write_atomic

    def failing_write(path: Path, data: bytes, mode: int = 0o644, *, sync_dir: bool = True) -> None:
        if path.name == "ca.json":
            raise OSError(5, "Input/output error", str(path))
        real_write(path, data, mode, sync_dir=sync_dir)

    monkeypatch.setattr(ca_mod, "write_atomic", failing_write)
    with pytest.raises(CAError, match="Input/output error"):
        store.create_root("duckcorp", passphrase=PASS)
    assert list(store.directory.iterdir()) == [store.directory / ".lock"]


def test_bad_csrs(hierarchy: CAStore) -> None:
    _, csr_pem = make_csr()
    csr = x509.load_pem_x509_csr(csr_pem)
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    for bad, message in [(tampered, "signature is invalid"), (b"junk", "not a PEM")]:
        with pytest.raises(CAError, match=message):
            hierarchy.sign_csr(
                "duckcorp",
                bad,
                names=["a.example.test"],
                usages={"server"},
                validity_days=1,
                host="h",
                cert_name="c",
                passphrase=PASS,
            )
    assert hierarchy.list_issued("duckcorp")[-1].kind == "ca"  # nothing recorded


def test_no_secret_in_any_error(hierarchy: CAStore, tmp_path: Path, monkeypatch: Any) -> None:
    secret = "zz-super-secret-passphrase-zz"
    monkeypatch.setenv("PKINFRA_SECRET", secret)
    source = PassphraseSource.from_env("PKINFRA_SECRET")
    key_lines = (hierarchy.directory / "duckcorp" / "ca.key").read_text().splitlines()[1:-1]
    errors: list[BaseException] = []
    attempts: list[Callable[[], object]] = [
        lambda: sign(hierarchy, "duckcorp", ["a.example.test"], passphrase=source),
        lambda: sign(hierarchy, "duckcorp", ["a.example.org"], passphrase=source),
        lambda: hierarchy.crl("duckcorp", source),
        lambda: hierarchy.create_sub_ca(
            "s",
            "duckcorp",
            parent_passphrase=source,
            passphrase=source,
            permitted=["s.example.test"],
        ),
        lambda: hierarchy.import_ca(
            "x",
            hierarchy.directory / "duckcorp" / "ca.crt",
            hierarchy.directory / "duckcorp" / "ca.key",
            source_passphrase=source,
            passphrase=source,
        ),
    ]
    for attempt in attempts:
        with pytest.raises(CAError) as info:
            attempt()
        errors.append(info.value)
    assert repr(source) == "PassphraseSource(env='PKINFRA_SECRET', file=None)"
    for error in errors:
        chain: BaseException | None = error
        while chain is not None:
            text = str(chain) + repr(chain) + repr(chain.args)
            assert secret not in text and PASS.decode() not in text
            assert not any(line in text for line in key_lines)
            chain = chain.__cause__ or chain.__context__


# --- concurrency -----------------------------------------------------------------------------

N_PER_WORKER = 40


def small_serials(space: int) -> Callable[[], int]:
    """Serials drawn from a tiny space, so concurrent signers collide unless the store checks
    each one against the record under its lock (real 127-bit serials would never collide)."""
    import secrets

    return lambda: (1 << 127) | secrets.randbelow(space)


def _sign_many(
    directory: str, worker: str, barrier: Any, queue: Any, serial_space: int = 0
) -> None:
    if serial_space:
        ca_mod.random_serial = small_serials(serial_space)
    store = CAStore(directory)
    _, csr = make_csr()
    barrier.wait()
    serials = []
    for i in range(N_PER_WORKER):
        issued = store.sign_csr(
            "duckcorp-backup",
            csr,
            names=[f"{worker}-{i}.backup.example.test"],
            usages={"client"},
            validity_days=1,
            host=worker,
            cert_name=f"c{i}",
            passphrase=PASS,
        )
        serials.append(issued.serial)
    queue.put((worker, serials))


def check_record(store: CAStore, returned: dict[str, list[int]]) -> None:
    fresh = CAStore(store.directory)
    records = fresh.list_issued("duckcorp-backup")
    lines = (store.directory / "duckcorp-backup" / "record.jsonl").read_bytes().splitlines()
    every = [s for serials in returned.values() for s in serials]
    assert len(every) == len(set(every)) == len(records) == len(lines)
    by_serial = {r.serial: r for r in records}
    for worker, serials in returned.items():
        for i, serial in enumerate(serials):
            record = by_serial[serial]
            assert (record.host, record.cert_name) == (worker, f"c{i}")
            pem = fresh.certificate_pem("duckcorp-backup", serial)
            assert x509.load_pem_x509_certificate(pem).serial_number == serial


def test_two_processes_sign_concurrently(hierarchy: CAStore) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, queue = context.Barrier(2), context.Queue()
    workers = [
        context.Process(
            target=_sign_many,
            args=(str(hierarchy.directory), w, barrier, queue, 2 * N_PER_WORKER + 8),
        )
        for w in ("p1", "p2")
    ]
    for worker in workers:
        worker.start()
    results = dict(queue.get(timeout=60) for _ in workers)
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    check_record(hierarchy, results)


def test_threads_sign_concurrently(hierarchy: CAStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ca_mod, "random_serial", small_serials(4 * N_PER_WORKER + 8))
    barrier = threading.Barrier(4)
    results: list[tuple[str, list[int]]] = []

    class ListQueue:
        def put(self, item: tuple[str, list[int]]) -> None:
            results.append(item)

    threads = [
        threading.Thread(
            target=_sign_many, args=(str(hierarchy.directory), f"t{i}", barrier, ListQueue())
        )
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    check_record(hierarchy, dict(results))


GEVENT_WORKER = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()
    import json, sys, time
    import gevent
    from pathlib import Path
    from tests.unit.test_ca import PASS, make_csr, small_serials
    from pkinfra import ca
    from pkinfra.ca import CAStore

    ca.random_serial = small_serials(108)
    directory, name, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    store = CAStore(directory)
    _, csr = make_csr()
    while not go.exists():
        time.sleep(0.005)

    def host(h):
        serials = []
        for i in range(5):
            gevent.sleep(0)  # like a remote call between two operations
            issued = store.sign_csr("duckcorp-backup", csr, names=[f"{h}.backup.example.test"],
                usages={"server"}, validity_days=1, host=h, cert_name=f"c{i}", passphrase=PASS)
            serials.append(issued.serial)
        return h, serials

    jobs = [gevent.spawn(host, f"{name}-h{n}") for n in range(10)]
    gevent.joinall(jobs, raise_error=True)
    print(json.dumps(dict(job.value for job in jobs)))
    """
)


def test_gevent_greenlets_in_two_processes(hierarchy: CAStore, tmp_path: Path) -> None:
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", GEVENT_WORKER, str(hierarchy.directory), name, str(go)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("g1", "g2")
    ]
    go.touch()
    returned: dict[str, list[int]] = {}
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        returned.update(json.loads(out))
    assert len(returned) == 20
    fresh = CAStore(hierarchy.directory)
    records = {r.serial: r for r in fresh.list_issued("duckcorp-backup")}
    every = [s for serials in returned.values() for s in serials]
    assert len(every) == len(set(every)) == len(records) == 100
    for host_name, serials in returned.items():
        assert {records[s].host for s in serials} == {host_name}
