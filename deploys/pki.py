"""The private PKI: the inventory's CAs and their CRLs on the controller, then on every host its
CA-issued certificates, the CA roots and bundles it trusts, and the CRLs it checks.

Controller work runs once per run, on the first host that gets there (``_run_once``, and only
prepared there): those operations touch no host, they only need a place in the run's order,
before every certificate.
Each host's state is read by one fact (``PkiFiles``, one remote command for all of it) and handed
to the operations that need it.
"""

from typing import Any

from pyinfra import host
from pyinfra.api import DeployError

from operations import pki
from operations.context import (
    first_to_reach,
    inventory,
    shared,
    this_host,
    track_certificate_op,
)
from operations.facts import PkiFiles
from pkinfra import issue, rollover
from pkinfra.agent.paths import ROLLOVER_DIR
from pkinfra.ca import CAError
from pkinfra.model import NEXT_SUFFIX, tlsa_owner, zone_of

site = inventory()
spec = this_host()
store = str(site.pki_dir)
cas = site.settings.cas

# A damaged CA store stops the run before anything is done, in one line (key problems, which
# need the passphrase, are found when the key is first used, and fail only that operation).
try:
    for name in cas:
        issue.existing_ca(issue.store_for(store), name)
except CAError as exc:
    raise DeployError(str(exc)) from None

# Controller operations: prepared on the first host that gets here only (``_run_once`` runs
# them once, but would still have pyinfra prepare them on every host).
# Removed certificates first: revoking them (revoke_removed) re-issues their CAs' CRLs below.
revoking = shared(
    "pki: CAs revoking removed certificates",
    lambda: sorted(
        {r.ca for r in issue.removed_certificates(issue.store_for(store), issue.holders(site))}
        if site.settings.revoke_removed and site.pki_dir.exists()
        else set()
    ),
)
if first_to_reach("pki: CAs and CRLs"):
    for name in issue.ca_order(site):
        ca = cas[name]
        imported = issue.import_paths(site, name)
        pki.certificate_authority(
            name=f"CA {name}",
            ca=name,
            store=store,
            key_type=ca.key_type,
            validity_days=ca.validity_days,
            parent=ca.parent,
            path_length=ca.path_length,
            permitted=ca.permitted,
            excluded=ca.excluded,
            organization=ca.organization,
            passphrase=issue.passphrase_spec(site, name),
            parent_passphrase=issue.passphrase_spec(site, ca.parent) if ca.parent else None,
            import_cert=str(imported[0]) if imported else None,
            import_key=str(imported[1]) if imported else None,
            _run_once=True,
        )

    pki.removed_certificates(
        name="Certificates removed from the inventory",
        store=store,
        holders=issue.holders(site),
        revoke=site.settings.revoke_removed,
        _run_once=True,
    )

    for name in issue.ca_order(site):
        pki.crl(
            name=f"CRL {name}",
            ca=name,
            store=store,
            passphrase=issue.passphrase_spec(site, name),
            crl_days=cas[name].crl_days,
            revoking=name in revoking,
            _run_once=True,
        )

# Every host, after the first host's controller work above: what orders that work before any
# host's signing and CRL uploads (see operations/context.py first_to_reach).
pki.controller_ready(name="CAs and CRLs ready", what="CAs and CRLs")

plan = issue.host_plan(site, spec.fqdn)
servers = [
    str(site.host(name).address)
    for name in (site.settings.dns.primary, *site.settings.dns.secondaries)
]


def _state_file(cert_name: str) -> str:
    return f"{ROLLOVER_DIR}/{cert_name}.json"


if not plan.empty:
    # One remote command: every certificate directory, the next one of a key rollover
    # (<directory>/next), the CA files and the rollover states. None while openssl is missing
    # (a fresh host before the base packages): all is "missing".
    state = host.get_fact(
        PkiFiles,
        directories=[*plan.directories, *(f"{c.host_directory}/next" for c in plan.certificates)],
        files=plan.files,
        states=[_state_file(c.name) for c in plan.certificates],
    ) or {"directories": {}, "files": {}, "states": {}}
    # A key rollover in progress, or asked for: its next certificate lives in <directory>/next.
    rolling: dict[str, dict[str, object]] = {}
    for cert in plan.certificates:
        found = state["states"].get(_state_file(cert.name))
        st = found["state"] if found else {}
        asked = cert.rollover is not None and (st.get("step"), st.get("label")) != (
            "done",
            cert.rollover,
        )
        if asked or rollover.active(rollover.CA, st):
            rolling[cert.name] = st
    empty = pki.EMPTY_DIR
    # All of the host's certificates in one operation: two remote commands when any is issued.
    op = pki.certificates(
        name="Host certificates",
        store=store,
        host_id=spec.fqdn,
        certificates=[
            {
                "directory": cert.host_directory,
                "names": cert.names,
                "issuer": cert.issuer,
                "cert_name": cert.name,
                "passphrase": issue.passphrase_spec(site, cert.issuer),
                "key_type": cert.key_type,
                "usages": cert.usages,
                "validity_days": cert.validity_days,
                "renew_before_days": cert.renew_before_days,
            }
            for cert in plan.certificates
        ],
        current=state["directories"],
    )
    track_certificate_op(op)  # services deliver at execution time when it changed
    for cert in plan.certificates:
        if cert.name not in rolling:
            continue
        directory = cert.host_directory
        common: dict[str, Any] = {
            "names": cert.names,
            "issuer": cert.issuer,
            "store": store,
            "host_id": spec.fqdn,
            "passphrase": issue.passphrase_spec(site, cert.issuer),
            "usages": cert.usages,
            "validity_days": cert.validity_days,
        }
        if rolling[cert.name].get("step") != "switched":
            pki.certificate(
                name="Next certificate (key rollover)",
                directory=f"{directory}/next",
                cert_name=cert.name + NEXT_SUFFIX,
                key_type=cert.key_type,
                current=state["directories"].get(f"{directory}/next", empty),
                **common,
            )
        owners = [
            tlsa_owner(t.port, t.proto, spec.tlsa_name(t))
            for t in spec.tlsa
            if t.certificate == cert.name
        ]
        op = pki.key_rollover(
            name="Key rollover",
            directory=directory,
            cert_name=cert.name,
            label=cert.rollover,
            owners=owners,
            servers=servers,
            ttl=max(
                (
                    z.tlsa_ttl
                    for o in owners
                    for z in site.settings.zones
                    if z.name == zone_of(o, site.zone_names)
                ),
                default=0,
            ),
            services=[s.name for s in spec.services if s.certificate == cert.name],
            wait=site.settings.rollover_wait,
            current=state["directories"].get(directory, empty),
            next_current=state["directories"].get(f"{directory}/next", empty),
            states=state["states"],
            **common,
        )
        track_certificate_op(op)  # the switch gives services the new key in the same run
    if plan.anchors or plan.bundles:
        pki.trust(
            name="Trusted CAs",
            store=store,
            anchors=plan.anchors,
            bundles=plan.bundles,
            current=state["files"],
        )
    if plan.crls:
        pki.crls(
            name="CRLs",
            store=store,
            cas=plan.crls,
            crl_days={ca: cas[ca].crl_days for ca in plan.crls},
            revoking=[ca for ca in plan.crls if ca in revoking],
            current=state["files"],
        )
