"""DANE publication of CA-issued certificates: "3 1 1" TLSA records from the CA store.

The controller issued these certificates, so it knows their keys: the record of each TLSA
publication is the SHA-256 of the SubjectPublicKeyInfo of the newest valid certificate of that
host and name. Keys are kept across renewals, so a renewal does not change the record. The
records go into the include file of the owner's main zone (``pkinfra.zones``). ACME
certificates are published by their host instead (the agent, through the shadow zone).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pkinfra import zones
from pkinfra.ca import CAStore, Record
from pkinfra.model import Inventory, tlsa_owner
from pkinfra.zones import IncludedTLSA


@dataclass(frozen=True)
class Unpublished:
    """A TLSA publication without a record yet (its certificate is not issued yet)."""

    host: str
    owner: str
    certificate: str


def current_records(store: CAStore) -> dict[tuple[str, str], Record]:
    """The newest valid certificate per (host, certificate name), in one scan of the store."""
    now = dt.datetime.now(dt.UTC)
    newest: dict[tuple[str, str], Record] = {}
    for record in store.list_issued():
        if record.kind != "leaf" or record.status_at(now) != "valid":
            continue
        key = (record.host, record.cert_name)
        if key not in newest or record.issued_at > newest[key].issued_at:
            newest[key] = record
    return newest


def ca_tlsa_records(
    inventory: Inventory, store: CAStore | None = None
) -> tuple[list[IncludedTLSA], list[Unpublished]]:
    """TLSA 3 1 1 of every publication of a CA-issued certificate, and those not issued yet."""
    store = store or CAStore(inventory.pki_dir)
    issued = current_records(store) if inventory.pki_dir.exists() else {}
    records: list[IncludedTLSA] = []
    missing: list[Unpublished] = []
    for host in inventory.hosts.values():
        for pub in host.tlsa:
            cert = host.certificate(pub.certificate)
            if cert is None or cert.is_acme:
                continue
            owner = tlsa_owner(pub.port, pub.proto, host.tlsa_name(pub))
            record = issued.get((host.fqdn, cert.name))
            if record is None:
                missing.append(Unpublished(host.fqdn, owner, cert.name))
                continue
            records.append(IncludedTLSA(owner=owner, value=f"3 1 1 {record.spki_sha256}"))
    return records, missing


def dns_site(inventory: Inventory) -> tuple[zones.Site, list[Unpublished]]:
    """Every DNS server's files as the deploy installs them: the CA-issued TLSA records from the
    store and the TSIG key names from the controller (a rotation's next key included)."""
    records, missing = ca_tlsa_records(inventory)
    return zones.render_site(inventory, tlsa=records, keys=zones.key_names(inventory)), missing
