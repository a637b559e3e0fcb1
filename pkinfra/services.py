"""The mapping of certificate files into services, rendered on the controller for each host.

The host's delivery agent (``pkinfra.agent.delivery``) reads it, both during a pyinfra run and from
certbot's deploy hook, so the two paths cannot drift apart. It holds paths, owners, modes and
how to notify each service: no secret.
"""

from __future__ import annotations

import json
from typing import Any

from pkinfra import issue
from pkinfra.agent.paths import DANE_PUBLISH
from pkinfra.model import Certificate, HostSpec, Inventory, Service, ServiceFile


def certificate_files(cert: Certificate) -> dict[str, str]:
    """The files a certificate has on its host, by content kind."""
    d = cert.host_directory
    if cert.is_acme:
        return {
            "cert": f"{d}/cert.pem",
            "chain": f"{d}/chain.pem",
            "fullchain": f"{d}/fullchain.pem",
            "key": f"{d}/privkey.pem",
        }
    return {
        "cert": f"{d}/{issue.CERT_FILE}",
        "chain": f"{d}/{issue.CHAIN_FILE}",
        "fullchain": f"{d}/{issue.FULLCHAIN_FILE}",
        "key": f"{d}/{issue.KEY_FILE}",
        "ca_bundle": f"{d}/{issue.BUNDLE_FILE}",
    }


def sources(inventory: Inventory, cert: Certificate, f: ServiceFile) -> list[str]:
    """The host files whose concatenation is ``f``'s content."""
    files = certificate_files(cert)
    if f.content == "combined":
        return [files["key"], files["fullchain"]]
    if f.content == "ca_bundle":
        return [issue.ca_bundle_path(f.ca)] if f.ca else [files["ca_bundle"]]
    if f.content == "crl":
        ca = f.ca or cert.issuer
        return [issue.crl_path(c) for c in inventory.ca_chain(ca)]
    return [files[f.content]]


def service_entry(inventory: Inventory, host: HostSpec, svc: Service) -> dict[str, Any]:
    cert = host.certificate(svc.certificate)
    assert cert is not None, "validated: a service's certificate exists"
    notify = None
    if svc.notify is not None:
        notify = {k: v for k, v in svc.notify.model_dump().items() if v is not None}
        if svc.notify.signal:
            notify.setdefault("process", svc.name)
    published = cert.is_acme and any(t.certificate == cert.name for t in host.tlsa)
    entry: dict[str, Any] = {
        "name": svc.name,
        "certificate": cert.name,
        "lineage": cert.name if cert.is_acme else None,
        # A new key waits until its TLSA record has been served everywhere for the TTL (DANE,
        # RFC 7671: no resolver may still cache a set without it).
        "gate": f"{DANE_PUBLISH} --gate --lineage {cert.name}" if published else None,
        "files": [
            {
                "path": f.path,
                "content": f.content,
                "sources": sources(inventory, cert, f),
                "owner": f.owner,
                "group": f.group,
                "mode": f.file_mode,
            }
            for f in svc.files
        ],
        "notify": notify,
    }
    if not svc.files:
        # No copies: the service reads the certificate where it lives (certbot's live/ links or
        # pkinfra's directory) and the agent tells it when that certificate changes.
        files = certificate_files(cert)
        entry["in_place"] = {"cert": files["cert"], "key": files["key"]}
    return entry


def mapping(inventory: Inventory, host: HostSpec) -> dict[str, Any]:
    return {"version": 1, "services": [service_entry(inventory, host, s) for s in host.services]}


def mapping_json(inventory: Inventory, host: HostSpec) -> str:
    """Stable text (sorted keys) so an unchanged mapping is an unchanged file."""
    return json.dumps(mapping(inventory, host), indent=1, sort_keys=True) + "\n"
