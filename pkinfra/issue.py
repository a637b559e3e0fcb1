"""Host certificates from our CAs: what each host needs, and why a certificate must be reissued.

Plain decisions on plain values, shared by the pyinfra operations (``operations/pki.py``), the
deploy (``deploys/pki.py``) and the ``pkinfra ca`` command:

- ``ca_order`` and ``passphrase_spec``: the inventory's CAs, parents first, and where each key's
  passphrase comes from (a source, never the value);
- ``host_plan``: the certificate directories, trust anchors, CA bundles and CRLs one host gets;
- ``reissue_reasons``: the exact reasons to reissue a certificate the host holds (``missing``,
  ``expires in 9 days``, ``names changed from a to b`` ...), empty when it is fine.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from pkinfra.agent import paths
from pkinfra.ca import CAInfo, CAStore, IssuedRecord
from pkinfra.model import NEXT_SUFFIX, Inventory
from pkinfra.model import Certificate as CertSpec

#: Files of a certificate directory on a host.
KEY_FILE = "key.pem"
CERT_FILE = "cert.pem"
CHAIN_FILE = "chain.pem"  # intermediates, issuing CA first, root left out
FULLCHAIN_FILE = "fullchain.pem"  # certificate + chain: what a TLS server sends
BUNDLE_FILE = "bundle.pem"  # issuing CA and every ancestor, root included: what a peer trusts

#: Where a host gets the CAs it trusts and the CRLs it checks (the Services issue copies them).
TRUST_DIR = "/usr/local/share/ca-certificates"


def trust_anchor_path(ca: str) -> str:
    return f"{TRUST_DIR}/pkinfra-{ca}.crt"


def ca_bundle_path(ca: str) -> str:
    return f"{paths.CA_DIR}/{ca}.pem"


def crl_path(ca: str) -> str:
    return f"{paths.CRL_DIR}/{ca}.pem"


# -- the inventory's CAs ------------------------------------------------------------------------


def ca_order(inventory: Inventory) -> list[str]:
    """Every CA of the inventory, each after its parent (creation order)."""
    order: list[str] = []
    for name in sorted(inventory.settings.cas):
        for ancestor in reversed(inventory.ca_chain(name)):
            if ancestor not in order:
                order.append(ancestor)
    return order


def passphrase_spec(inventory: Inventory, ca: str) -> str | None:
    """``env:NAME`` or ``file:/absolute/path`` for a CA's key, None for an unencrypted one.

    A relative passphrase file is relative to the inventory's directory, like ``pki_dir``.
    """
    source = inventory.settings.cas[ca].passphrase
    if source is None:
        return None
    if source.env is not None:
        return f"env:{source.env}"
    assert source.file is not None
    return f"file:{(inventory.base_dir / source.file).resolve()}"


def import_paths(inventory: Inventory, ca: str) -> tuple[Path, Path] | None:
    """The certificate and key files of a CA to import (absolute), or None."""
    spec = inventory.settings.cas[ca].import_from
    if spec is None:
        return None
    return (inventory.base_dir / spec.cert).resolve(), (inventory.base_dir / spec.key).resolve()


_stores: dict[Path, CAStore] = {}
_stores_lock = threading.Lock()


def store_for(directory: str | Path) -> CAStore:
    """One CAStore per directory and process, so every host of a run shares its caches."""
    path = Path(directory).resolve()
    with _stores_lock:
        store = _stores.get(path)
        if store is None:
            store = _stores[path] = CAStore(path)
        return store


def existing_ca(store: CAStore, name: str) -> CAInfo | None:
    """The CA as the store has it, or None when the store does not have it (yet)."""
    return store.ca(name) if name in store.names() else None


def key_id(info: CAInfo) -> str:
    """The CA certificate's subject key identifier (hex), what its certificates' AKI names."""
    cert = x509.load_pem_x509_certificate(info.cert_pem)
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest.hex()
    return ski.digest.hex()


def ca_differences(info: CAInfo, parent: str | None, key_type: str) -> list[str]:
    """How a CA in the store differs from the inventory (reported, never changed by a run)."""
    found = []
    if info.parent != parent:
        found.append(f"parent is {info.parent or 'none'}, the inventory says {parent or 'none'}")
    if not info.imported and info.key_type != key_type:
        found.append(f"key type is {info.key_type}, the inventory says {key_type}")
    return found


def holders(inventory: Inventory) -> dict[str, list[str]]:
    """Every host of the inventory and the names of its CA-issued certificates (with the name
    a key rollover's next certificate is recorded under, which a host may serve afterwards)."""
    return {
        h.fqdn: [n for c in h.certificates if not c.is_acme for n in (c.name, c.name + NEXT_SUFFIX)]
        for h in inventory.hosts.values()
    }


def retire_key(store: CAStore, host: str, cert_name: str, spki_sha256: str) -> list[IssuedRecord]:
    """The end of a key rollover: revoke (superseded) every valid certificate of ``host``'s
    ``cert_name`` that certifies the old key ``spki_sha256``, and the rollover's next
    certificates (``<cert_name>-next``: the switch signed the next key under ``cert_name``)."""
    now = dt.datetime.now(dt.UTC)
    return [
        store.revoke(r.ca, r.serial, "superseded")
        for r in store.list_issued()
        if r.kind == "leaf"
        and r.host == host
        and r.status_at(now) == "valid"
        and (
            r.cert_name == cert_name + NEXT_SUFFIX
            or (r.cert_name == cert_name and r.spki_sha256 == spki_sha256)
        )
    ]


def removed_certificates(
    store: CAStore, inventory: Inventory | Mapping[str, Sequence[str]]
) -> list[IssuedRecord]:
    """Valid leaf certificates recorded for hosts and certificates the inventory no longer has.

    Only hosts of the inventory are considered: another inventory may share the store.
    """
    held = holders(inventory) if isinstance(inventory, Inventory) else inventory
    wanted = {(fqdn, name) for fqdn, names in held.items() for name in names}
    fqdns = set(held)
    now = dt.datetime.now(dt.UTC)
    found = []
    for ca in store.names():
        latest: dict[tuple[str, str], IssuedRecord] = {}
        for record in store.list_issued(ca):
            if record.kind != "leaf" or record.status_at(now) != "valid":
                continue
            latest[(record.host, record.cert_name)] = record
        found += [r for k, r in latest.items() if k[0] in fqdns and k not in wanted]
    return found


# -- what one host gets -------------------------------------------------------------------------


@dataclass(frozen=True)
class HostPlan:
    """Everything of the private PKI one host holds."""

    certificates: tuple[CertSpec, ...]
    #: Roots in the system store (update-ca-certificates): of its certificates' chains and of
    #: the CAs its services verify.
    anchors: tuple[str, ...]
    #: CAs whose bundle (the CA and its ancestors) goes to CA_DIR.
    bundles: tuple[str, ...]
    #: CAs whose CRL goes to CRL_DIR: every CA in the chain of a CA the host verifies clients of.
    crls: tuple[str, ...]

    @property
    def directories(self) -> list[str]:
        return [c.host_directory for c in self.certificates]

    @property
    def files(self) -> list[str]:
        """Files outside the certificate directories that the host's one fact reads."""
        return [
            *(trust_anchor_path(ca) for ca in self.anchors),
            f"{TRUST_DIR}/pkinfra-*.crt",
            *(ca_bundle_path(ca) for ca in self.bundles),
            *(crl_path(ca) for ca in self.crls),
        ]

    @property
    def empty(self) -> bool:
        return not (self.certificates or self.anchors or self.bundles or self.crls)


def host_plan(inventory: Inventory, fqdn: str) -> HostPlan:
    spec = inventory.host(fqdn)
    certs = tuple(c for c in spec.certificates if not c.is_acme)
    trusted: list[str] = [c.issuer for c in certs]
    checked: list[str] = []
    for service in spec.services:
        cert = spec.certificate(service.certificate)
        for f in service.files:
            if f.content not in ("ca_bundle", "crl"):
                continue
            ca = f.ca or (cert.issuer if cert is not None and not cert.is_acme else None)
            if ca is None:
                continue
            trusted.append(ca)
            if f.content == "crl":
                checked.append(ca)
    bundles = _unique(trusted)
    return HostPlan(
        certificates=certs,
        anchors=_unique(inventory.ca_chain(ca)[-1] for ca in bundles),
        bundles=bundles,
        crls=_unique(a for ca in checked for a in inventory.ca_chain(ca)),
    )


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


# -- why a certificate is reissued --------------------------------------------------------------


@dataclass(frozen=True)
class Wanted:
    """The certificate the inventory asks for."""

    names: tuple[str, ...]
    usages: tuple[str, ...]
    issuer: str
    validity_days: int
    renew_before_days: int | None = None

    @property
    def renew_window(self) -> dt.timedelta:
        """Renew when this much is left: as configured, else a third of the lifetime."""
        if self.renew_before_days is not None:
            return dt.timedelta(days=self.renew_before_days)
        return dt.timedelta(days=self.validity_days) / 3


@dataclass(frozen=True)
class Held:
    """The certificate a host holds (public data read by the host's fact)."""

    serial: int
    not_after: dt.datetime
    names: tuple[str, ...]
    usages: tuple[str, ...]
    issuer: str  # the issuer's common name, for messages
    issuer_key_id: str | None
    spki_sha256: str | None


def _listing(items: Sequence[str]) -> str:
    return ", ".join(items) if items else "none"


def reissue_reasons(
    wanted: Wanted,
    held: Held | None,
    *,
    key_spki_sha256: str | None,
    issuer_key_id: str | None,
    revoked: bool = False,
    now: dt.datetime | None = None,
) -> list[str]:
    """Why the held certificate must be replaced; empty when it is fine as it is.

    ``key_spki_sha256`` is the host key's fingerprint (None: no usable key yet);
    ``issuer_key_id`` the subject key identifier of the CA as the store has it now (None: the
    CA does not exist yet).
    """
    if held is None:
        return ["missing"]
    now = now or dt.datetime.now(dt.UTC)
    reasons = []
    if key_spki_sha256 is not None and held.spki_sha256 != key_spki_sha256:
        reasons.append("key mismatch")
    if issuer_key_id is None or held.issuer_key_id != issuer_key_id:
        changed = f"from {held.issuer} to {wanted.issuer}"
        if held.issuer == wanted.issuer:
            changed = f"{wanted.issuer} was made again"
        reasons.append(f"issuer changed ({changed})")
    if sorted(held.names) != sorted(wanted.names):
        reasons.append(
            f"names changed from {_listing(sorted(held.names))} to {_listing(sorted(wanted.names))}"
        )
    if sorted(held.usages) != sorted(wanted.usages):
        reasons.append(
            f"usages changed from {_listing(sorted(held.usages))} "
            f"to {_listing(sorted(wanted.usages))}"
        )
    if revoked:
        reasons.append(f"revoked (serial {held.serial:x})")
    left = held.not_after - now
    if left <= dt.timedelta(0):
        reasons.append(f"expired {(-left).days} days ago")
    elif left <= wanted.renew_window:
        reasons.append(f"expires in {left.days} days")
    return reasons


def crl_window(crl_days: int) -> float:
    """A CRL is issued again when less than this many days are left before its nextUpdate."""
    return crl_days / 2
