"""TLSA records of CA-issued certificates come from the CA store and match the host's key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pkinfra import issue, tlsa
from pkinfra.ca import CAStore
from pkinfra.model import Certificate, Inventory, Tlsa, load_inventory_file
from pkinfra.publication import Unpublished, ca_tlsa_records

ROOT = Path(__file__).resolve().parents[2]


OWNER = "_5432._tcp.db1.example.test"


def test_records_follow_the_store(tmp_path: Path) -> None:
    inventory = dataclasses.replace(load_inventory_file(ROOT / "inventory.py"), base_dir=tmp_path)
    store = CAStore(inventory.pki_dir)
    store.create_root("duckcorp", unencrypted=True)
    records, missing = ca_tlsa_records(inventory, store)
    assert records == []
    assert missing == [
        Unpublished("db1.example.test", owner, "postgres")
        for owner in ("_5432._tcp.db1.example.test", "_5432._tcp.db1.unsigned.test")
    ]

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
    records, missing = ca_tlsa_records(inventory, store)
    assert missing == []
    assert [r.owner for r in records] == [OWNER, "_5432._tcp.db1.unsigned.test"]
    assert {r.value for r in records} == {expected}

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
    assert [r.value for r in ca_tlsa_records(inventory, store)[0]] == [expected, expected]


def _csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


def _rolling(inventory: Inventory, host: str, cert_name: str, label: str | None) -> Inventory:
    """``inventory`` with certificate ``cert_name`` of ``host`` asking for rollover ``label``."""
    spec = inventory.hosts[host]
    certificates = [
        c.model_copy(update={"rollover": label}) if c.name == cert_name else c
        for c in spec.certificates
    ]
    hosts = {**inventory.hosts, host: spec.model_copy(update={"certificates": certificates})}
    return dataclasses.replace(inventory, hosts=hosts)


def test_a_key_rollover_publishes_both_keys_until_the_old_one_is_retired(tmp_path: Path) -> None:
    lab = dataclasses.replace(load_inventory_file(ROOT / "inventory.py"), base_dir=tmp_path)
    inventory = _rolling(lab, "db1.example.test", "postgres", "next")
    store = CAStore(inventory.pki_dir)
    store.create_root("duckcorp", unencrypted=True)
    old, new = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    old_rr = tlsa.TLSARecord.build(old.public_key()).to_text()
    new_rr = tlsa.TLSARecord.build(new.public_key()).to_text()

    def sign(key: ec.EllipticCurvePrivateKey, cert_name: str) -> None:
        store.sign_csr(
            "duckcorp", _csr(key), names=["db1.example.test"], usages={"server"},
            validity_days=30, host="db1.example.test", cert_name=cert_name, passphrase=None,
        )  # fmt: skip

    def published() -> list[str]:
        # db1 publishes the same key at two owners (example.test and the admin's unsigned.test).
        return [r.value for r in ca_tlsa_records(inventory, store)[0] if r.owner == OWNER]

    lost = ec.generate_private_key(ec.SECP256R1())
    sign(lost, "postgres")  # a key lost long ago: its certificate is still valid
    sign(old, "postgres")
    sign(old, "postgres")  # a renewal keeps the key: still one record
    assert published() == [old_rr], "only the newest certificate's key"
    sign(new, "postgres-next")  # step 1: the next certificate
    assert published() == [old_rr, new_rr]
    given_up = _rolling(inventory, "db1.example.test", "postgres", None)
    given_up_records = [r.value for r in ca_tlsa_records(given_up, store)[0] if r.owner == OWNER]
    assert given_up_records == [old_rr], "no rollover asked for: the next key is not published"
    sign(new, "postgres")  # step 2: the switch signs the next key under the real name
    assert sorted(published()) == sorted([old_rr, new_rr]), "the old one stays until retired"
    retired = issue.retire_key(store, "db1.example.test", "postgres", old_rr.split()[-1])
    assert len(retired) == 3 and {r.revocation_reason for r in retired} == {"superseded"}
    assert {r.cert_name for r in retired} == {"postgres", "postgres-next"}
    assert published() == [new_rr]
    # Another host's certificates are never retired by it.
    assert issue.retire_key(store, "web1.example.test", "postgres", new_rr.split()[-1]) == []


def test_an_owner_two_hosts_share_holds_both_keys(tmp_path: Path) -> None:
    """An HA pair (db1 and mon1 behind db1's PostgreSQL name, both publications shared): one
    RRset with the key each host serves."""
    lab = dataclasses.replace(load_inventory_file(ROOT / "inventory.py"), base_dir=tmp_path)
    db1, mon1 = lab.hosts["db1.example.test"], lab.hosts["mon1.example.test"]
    replica = Certificate(name="pg", names=["mon1.example.test"], issuer="duckcorp")
    hosts = {
        **lab.hosts,
        "db1.example.test": db1.model_copy(
            update={"tlsa": [db1.tlsa[0].model_copy(update={"shared": True})]}
        ),
        "mon1.example.test": mon1.model_copy(
            update={
                "certificates": [*mon1.certificates, replica],
                "tlsa": [Tlsa(port=5432, name="db1.example.test", certificate="pg", shared=True)],
            }
        ),
    }
    inventory = dataclasses.replace(lab, hosts=hosts)
    store = CAStore(inventory.pki_dir)
    store.create_root("duckcorp", unencrypted=True)
    keys = {h: ec.generate_private_key(ec.SECP256R1()) for h in ("db1", "mon1")}
    for host, cert_name in (("db1", "postgres"), ("mon1", "pg")):
        store.sign_csr(
            "duckcorp", _csr(keys[host]), names=[f"{host}.example.test"], usages={"server"},
            validity_days=30, host=f"{host}.example.test", cert_name=cert_name, passphrase=None,
        )  # fmt: skip
    records, missing = ca_tlsa_records(inventory, store)
    assert missing == []
    at_owner = sorted(r.value for r in records if r.owner == OWNER)
    expected = sorted(tlsa.TLSARecord.build(k.public_key()).to_text() for k in keys.values())
    assert at_owner == expected
