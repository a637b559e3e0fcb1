"""Lab only: Pebble, Let's Encrypt's test ACME server, on the ``acme_servers`` group.

Pebble ships no TLS certificate for itself. The controller keeps a small lab CA at the
inventory's ``acme.ca_bundle`` (``.lab/pebble-ca.pem``, key beside it, made on first use and
name-constrained to the ACME server's name); the ACME host makes its own key, the controller
signs its CSR at execution time. Hosts trust that CA (deploys/acme.py). Pebble resolves through
the lab's resolver (it does not chase CNAMEs itself), validates HTTP-01 on port 80, and runs with
repeatable settings; it is restarted only when its command line, configuration or certificate
changes, since a restart forgets every ACME account.
"""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path
from urllib.parse import urlsplit

from pyinfra.api import DeployError
from pyinfra.operations import files

from lab import operations as lab_ops
from operations.context import inventory, this_host
from pkinfra import acme

DIRECTORY = "/etc/pebble"
CONFIG = f"{DIRECTORY}/pebble-config.json"
ENV = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}


def pebble_config(port: int) -> str:
    return (
        json.dumps(
            {
                "pebble": {
                    "listenAddress": f"0.0.0.0:{port}",
                    "managementListenAddress": "0.0.0.0:15000",
                    "certificate": f"{DIRECTORY}/cert.pem",
                    "privateKey": f"{DIRECTORY}/key.pem",
                    "httpPort": 80,
                    "tlsPort": 443,
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": False,
                }
            },
            indent=2,
        )
        + "\n"
    )


inv = inventory()
spec = this_host()
settings = inv.settings.acme
if "acme_servers" in spec.groups:
    if settings is None or settings.ca_bundle is None:
        raise DeployError("pkinfra: the lab's Pebble needs acme.ca_bundle in group_data/all.py")
    server_name = urlsplit(settings.directory).hostname or spec.fqdn
    port = urlsplit(settings.directory).port or 443
    resolver = next((h for h in inv.hosts.values() if "resolvers" in h.groups), None)
    if resolver is None or resolver.address is None:
        raise DeployError("pkinfra: the lab's Pebble needs the lab resolver in the inventory")
    bundle = inv.base_dir / settings.ca_bundle
    try:
        acme.ensure_server_ca(bundle, [server_name])
        key_id = acme.ca_key_id(bundle)
    except (acme.AcmeError, OSError, ValueError) as exc:
        raise DeployError(f"pkinfra: lab ACME server CA {bundle}: {exc}") from None

    files.directory(name="Pebble directory", path=DIRECTORY, mode="0755")
    cert = lab_ops.server_certificate(
        name="Pebble TLS certificate (lab CA)",
        directory=DIRECTORY,
        names=[server_name],
        ca_bundle=str(Path(bundle).resolve()),
        ca_key_id=key_id,
    )
    config = files.put(
        name="Pebble configuration", src=StringIO(pebble_config(port)), dest=CONFIG, mode="0644"
    )
    lab_ops.pebble(
        name="Pebble running",
        config=CONFIG,
        dnsserver=f"{resolver.address}:53",
        env=ENV,
        restart=cert.will_change or config.will_change,
        listen_port=port,
    )
