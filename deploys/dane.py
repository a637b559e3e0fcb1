"""DANE TLSA records of ACME certificates, published by their host before any service gets a
new key (CA-issued certificates are published by deploys/dns.py from the CA store).

The host's agent follows the CNAME from each TLSA owner into the shadow zone and updates it
with the host's TSIG key; certbot's deploy hook ``40-pkinfra-dane`` does the same on a renewal,
before ``50-pkinfra-deliver`` copies the files into services.
"""

import json
from io import StringIO

from pyinfra.operations import files

from operations import dane
from operations.context import certificate_changed, inventory, this_host
from pkinfra import acme
from pkinfra.model import tlsa_owner
from pkinfra.services import certificate_files

inv = inventory()
spec = this_host()
publications = []
for pub in spec.tlsa:
    cert = spec.certificate(pub.certificate)
    if cert is None or not cert.is_acme:
        continue
    publications.append(
        {
            "owner": tlsa_owner(pub.port, pub.proto, spec.tlsa_name(pub)),
            "lineage": cert.name,
            "certificates": [certificate_files(cert)["cert"]],
        }
    )

if publications:
    config = files.put(
        name="TLSA publisher configuration",
        src=StringIO(
            json.dumps(
                {
                    "tsig_key": "/etc/pkinfra/tsig.key",
                    "ttl": inv.settings.shadow_zone.tlsa_ttl,
                    "timeout": 60,
                    "publications": publications,
                },
                indent=1,
                sort_keys=True,
            )
            + "\n"
        ),
        dest=acme.DANE_CONFIG,
        mode="0644",
        create_remote_dir=True,
    )
    files.put(
        name="TLSA publisher",
        src=StringIO(acme.agent_wrapper("dane_publish", "TLSA publisher (deploys/dane.py)")),
        dest=acme.DANE_PUBLISH,
        mode="0755",
    )
    files.put(
        name="certbot deploy hook: TLSA",
        src=StringIO(
            "#!/bin/sh\n# pkinfra: publish the renewed certificate's TLSA records first\n"
            f"exec {acme.DANE_PUBLISH} --config {acme.DANE_CONFIG}\n"
        ),
        dest=acme.DANE_DEPLOY_HOOK,
        mode="0755",
        create_remote_dir=True,
    )
    dane.tlsa_published(name="TLSA records of ACME certificates", config_changed=config.will_change)
    dane.tlsa_published(
        name="TLSA records (certificate changed in this run)",
        after_change=True,
        _if=certificate_changed(),
    )
