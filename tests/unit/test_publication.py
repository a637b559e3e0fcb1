"""TLSA records of CA-issued certificates come from the CA store and match the host's key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pkinfra import tlsa
from pkinfra.ca import CAStore
from pkinfra.model import load_inventory_file
from pkinfra.publication import Unpublished, ca_tlsa_records

ROOT = Path(__file__).resolve().parents[2]


def test_records_follow_the_store(tmp_path: Path) -> None:
    inventory = dataclasses.replace(load_inventory_file(ROOT / "inventory.py"), base_dir=tmp_path)
    store = CAStore(inventory.pki_dir)
    store.create_root("duckcorp", unencrypted=True)
    records, missing = ca_tlsa_records(inventory, store)
    assert records == []
    assert missing == [Unpublished("db1.example.test", "_5432._tcp.db1.example.test", "postgres")]

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    first = store.sign_csr(
        "duckcorp",
        csr,
        names=["db1.example.test"],
        usages={"server"},
        validity_days=30,
        host="db1.example.test",
        cert_name="postgres",
        passphrase=None,
    )
    expected = tlsa.TLSARecord.build(key.public_key()).to_text()
    [record], missing = ca_tlsa_records(inventory, store)
    assert missing == []
    assert record.owner == "_5432._tcp.db1.example.test"
    assert record.value == expected

    # A revoked certificate publishes nothing; its renewal (same key) the same record.
    store.revoke("duckcorp", first.serial)
    assert ca_tlsa_records(inventory, store)[0] == []
    store.sign_csr(
        "duckcorp",
        csr,
        names=["db1.example.test"],
        usages={"server"},
        validity_days=30,
        host="db1.example.test",
        cert_name="postgres",
        passphrase=None,
    )
    assert [r.value for r in ca_tlsa_records(inventory, store)[0]] == [expected]
