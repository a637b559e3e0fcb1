"""DANE publication of CA-issued certificates: "3 1 1" TLSA records from the CA store.

The controller issued these certificates, so it knows their keys: the record of each TLSA
publication is the SHA-256 of the SubjectPublicKeyInfo of the newest valid certificate of that
host and name. Keys are kept across renewals, so a renewal does not change the record. During a
key rollover the next key's record joins it, and the old key's stays until every service has
the new key (``published_keys``). The records go into the include file of the owner's main zone
(``pkinfra.zones``). ACME certificates are published by their host instead (the agent, through
the shadow zone).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pkinfra import zones
from pkinfra.ca import CAStore
from pkinfra.ca import IssuedRecord as Record
from pkinfra.model import NEXT_SUFFIX, Inventory, tlsa_owner
from pkinfra.zones import IncludedTLSA


@dataclass(frozen=True)
class Unpublished:
    """A TLSA publication without a record yet (its certificate is not issued yet)."""

    host: str
    owner: str
    certificate: str


def valid_records(store: CAStore) -> dict[tuple[str, str], list[Record]]:
    """Per (host, certificate name): its valid leaf certificates, newest first, in one scan."""
    now = dt.datetime.now(dt.UTC)
    found: dict[tuple[str, str], list[Record]] = {}
    for record in store.list_issued():
        if record.kind == "leaf" and record.status_at(now) == "valid":
            found.setdefault((record.host, record.cert_name), []).append(record)
    for records in found.values():
        records.sort(key=lambda r: r.issued_at, reverse=True)
    return found


def published_keys(
    valid: dict[tuple[str, str], list[Record]], host: str, name: str, rolling: bool = True
) -> list[str]:
    """The keys (SPKI SHA-256) whose records a certificate's TLSA publication holds.

    The newest certificate's key; during a key rollover (``rolling``: the inventory asks for
    one) also the next certificate's key (``<name>-next``), and once the switch signed the next
    key under ``name``, the old key too, until the end of the rollover revokes the old key's
    certificates and the next one. Without a rollover in the inventory a next certificate left
    valid in the store (a rollover given up, a host made again mid-way) publishes nothing: no
    host can switch to it without a run that asks for the rollover.
    """
    current = valid.get((host, name), [])
    keys = [current[0].spki_sha256] if current else []
    upcoming = valid.get((host, name + NEXT_SUFFIX), []) if rolling else []
    if upcoming:
        if upcoming[0].spki_sha256 not in keys:
            keys.append(upcoming[0].spki_sha256)
        elif current:
            old = next((r for r in current if r.spki_sha256 != keys[0]), None)
            if old is not None:
                keys.append(old.spki_sha256)
    return keys


def ca_tlsa_records(
    inventory: Inventory, store: CAStore | None = None
) -> tuple[list[IncludedTLSA], list[Unpublished]]:
    """TLSA 3 1 1 of every publication of a CA-issued certificate, and those not issued yet."""
    store = store or CAStore(inventory.pki_dir)
    valid = valid_records(store) if inventory.pki_dir.exists() else {}
    records: list[IncludedTLSA] = []
    missing: list[Unpublished] = []
    for host in inventory.hosts.values():
        for pub in host.tlsa:
            cert = host.certificate(pub.certificate)
            if cert is None or cert.is_acme:
                continue
            owner = tlsa_owner(pub.port, pub.proto, host.tlsa_name(pub))
            spkis = published_keys(valid, host.fqdn, cert.name, rolling=cert.rollover is not None)
            if not spkis:
                missing.append(Unpublished(host.fqdn, owner, cert.name))
                continue
            records += [IncludedTLSA(owner=owner, value=f"3 1 1 {spki}") for spki in spkis]
    return records, missing


def dns_site(inventory: Inventory) -> tuple[zones.Site, list[Unpublished]]:
    """Every DNS server's files as the deploy installs them: the CA-issued TLSA records from the
    store and the TSIG key names from the controller (a rotation's next key included)."""
    records, missing = ca_tlsa_records(inventory)
    return zones.render_site(inventory, tlsa=records, keys=zones.key_names(inventory)), missing
