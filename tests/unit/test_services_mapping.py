"""The services mapping rendered from the lab inventory: sources, owners, notify, lineage."""

from __future__ import annotations

import json
from pathlib import Path

from pkinfra.model import load_inventory_file
from pkinfra.services import mapping, mapping_json

ROOT = Path(__file__).resolve().parents[2]


def test_ca_issued_service_with_client_ca_bundle_and_crl_chain() -> None:
    site = load_inventory_file(ROOT / "inventory.py")
    by_name = {s["name"]: s for s in mapping(site, site.host("db1.example.test"))["services"]}
    pg = by_name["postgresql"]
    files = {f["path"]: f for f in pg["files"]}
    assert pg["lineage"] is None
    assert files["/etc/postgresql/tls/server.crt"]["sources"] == [
        "/etc/pkinfra/certs/postgres/fullchain.pem"
    ]
    key = files["/etc/postgresql/tls/server.key"]
    assert key["sources"] == ["/etc/pkinfra/certs/postgres/key.pem"]
    assert (key["owner"], key["group"], key["mode"]) == ("postgres", "postgres", "0600")
    assert files["/etc/postgresql/tls/clients.pem"]["sources"] == [
        "/etc/pkinfra/ca/duckcorp-monitoring.pem"
    ]
    # Every CA in the chain: a client CRL check needs the root's CRL too.
    assert files["/etc/postgresql/tls/clients.crl"]["sources"] == [
        "/etc/pkinfra/crl/duckcorp-monitoring.pem",
        "/etc/pkinfra/crl/duckcorp.pem",
    ]
    assert pg["notify"] == {
        "signal": "HUP",
        "pidfile": "/var/run/postgresql/15-main.pid",
        "process": "postgres",
    }
    backup = by_name["backup-agent"]
    assert backup["files"] == [
        {
            "path": "/etc/backup-agent/tls.pem",
            "content": "combined",
            "sources": [
                "/etc/pkinfra/certs/backup/key.pem",
                "/etc/pkinfra/certs/backup/fullchain.pem",
            ],
            "owner": "root",
            "group": "root",
            "mode": "0600",
        }
    ]
    assert backup["notify"] == {"restart": "systemctl restart lab-backup-agent"}


def test_acme_service_uses_the_certbot_lineage() -> None:
    site = load_inventory_file(ROOT / "inventory.py")
    [postfix] = mapping(site, site.host("mx1.example.test"))["services"]
    assert postfix["lineage"] == "mail"
    sources = {f["content"]: f["sources"] for f in postfix["files"]}
    assert sources == {
        "fullchain": ["/etc/letsencrypt/live/mail/fullchain.pem"],
        "key": ["/etc/letsencrypt/live/mail/privkey.pem"],
    }
    assert postfix["notify"] == {"command": "systemctl try-reload-or-restart postfix"}


def test_mapping_text_is_stable() -> None:
    site = load_inventory_file(ROOT / "inventory.py")
    spec = site.host("web1.example.test")
    assert mapping_json(site, spec) == mapping_json(site, spec)
    assert json.loads(mapping_json(site, spec))["version"] == 1
