"""DANE TLSA records of ACME certificates, published by their host before any service gets a
new key (CA-issued certificates are published by deploys/dns.py from the CA store).

The host's agent follows the CNAME from each TLSA owner into the shadow zone and updates it
with the host's TSIG key; certbot's deploy hook ``40-pkinfra-dane`` does the same on a renewal,
before ``50-pkinfra-deliver`` copies the files into services.
"""

import json
from io import StringIO
from typing import Any

from pyinfra.operations import files

from operations import dane, system
from operations.context import certificate_changed, inventory, this_host
from pkinfra import acme
from pkinfra.agent import paths
from pkinfra.install import entry_point
from pkinfra.model import NEXT_SUFFIX, tlsa_owner
from pkinfra.services import certificate_files

inv = inventory()
spec = this_host()
publications = []
for pub in spec.tlsa:
    cert = spec.certificate(pub.certificate)
    if cert is None or not cert.is_acme:
        continue
    # The next lineage exists only during a key rollover; its record then joins the set.
    next_cert = cert.model_copy(update={"name": cert.name + NEXT_SUFFIX})
    publications.append(
        {
            "owner": tlsa_owner(pub.port, pub.proto, spec.tlsa_name(pub)),
            "lineage": cert.name,
            "lineages": [cert.name, next_cert.name],
            "certificates": [
                certificate_files(cert)["cert"],
                certificate_files(next_cert)["cert"],
            ],
        }
    )
published = {p["lineage"] for p in publications}
acme_certs = [c for c in spec.certificates if c.is_acme]
if acme_certs:
    system.agent_once()  # the publisher and the rollover agent

if publications:
    config = files.put(
        name="TLSA publisher configuration",
        src=StringIO(
            json.dumps(
                {
                    "tsig_key": paths.TSIG_KEY,
                    "ttl": inv.settings.shadow_zone.tlsa_ttl,
                    "timeout": 60,
                    "rollover_dir": paths.ROLLOVER_DIR,
                    "services_mapping": paths.SERVICES_MAPPING,
                    "seen_file": paths.DANE_SEEN,
                    "publications": publications,
                },
                indent=1,
                sort_keys=True,
            )
            + "\n"
        ),
        dest=paths.DANE_CONFIG,
        mode="0644",
        create_remote_dir=True,
    )
    files.put(
        name="TLSA publisher",
        src=StringIO(entry_point("dane_publish", "TLSA publisher (deploys/dane.py)")),
        dest=paths.DANE_PUBLISH,
        mode="0755",
    )
    files.put(
        name="certbot deploy hook: TLSA",
        src=StringIO(
            "#!/bin/sh\n# pkinfra: publish the renewed certificate's TLSA records first\n"
            f"exec {paths.DANE_PUBLISH} --config {paths.DANE_CONFIG}\n"
        ),
        dest=paths.DANE_DEPLOY_HOOK,
        mode="0755",
        create_remote_dir=True,
    )
    dane.tlsa_published(name="TLSA records of ACME certificates", config_changed=config.will_change)
    dane.tlsa_published(
        name="TLSA records (certificate changed in this run)",
        after_change=True,
        _if=certificate_changed(),
    )

# Key rollover (pkinfra.agent.rollover): asked by a certificate's ``rollover`` label; a
# rollover in progress on the host resumes even without one.
if acme_certs and inv.settings.acme is not None:
    settings = inv.settings.acme
    certificates: dict[str, dict[str, Any]] = {}
    for cert in acme_certs:
        assert cert.challenge is not None, "validated: ACME certificates have a challenge"
        certificates[cert.name] = {
            "next": cert.name + NEXT_SUFFIX,
            "ttl": inv.settings.shadow_zone.tlsa_ttl if cert.name in published else 0,
            "certbot_next": acme.certonly_args(
                cert_name=cert.name + NEXT_SUFFIX,
                names=cert.names,
                challenge=cert.challenge,
                server=settings.directory,
                key_type=cert.key_type,
                webroot=cert.webroot,
                extra=settings.certbot_args,
            ),
        }
    files.put(
        name="Key rollover configuration",
        src=StringIO(
            json.dumps(
                {
                    "state_dir": paths.ROLLOVER_DIR,
                    "dane_config": paths.DANE_CONFIG,
                    "delivery": [
                        "python3",
                        paths.DELIVERY_AGENT,
                        "--mapping",
                        paths.SERVICES_MAPPING,
                    ],
                    "certificates": certificates,
                },
                indent=1,
                sort_keys=True,
            )
            + "\n"
        ),
        dest=paths.ROLLOVER_CONFIG,
        mode="0644",
        create_remote_dir=True,
    )
    files.put(
        name="Key rollover agent",
        src=StringIO(entry_point("rollover", "key rollover (deploys/dane.py)")),
        dest=paths.ROLLOVER,
        mode="0755",
    )
    for cert in acme_certs:
        dane.key_rollover(
            name=f"Key rollover of {cert.name}",
            certificate=cert.name,
            label=cert.rollover,
            ttl=int(certificates[cert.name]["ttl"]),
            wait=inv.settings.rollover_wait,
        )
