"""The DNS master: BIND primary and secondaries, zones, DNSSEC, the shadow zone, TSIG keys.

Everything is derived from the WHOLE inventory (also under ``--limit``): the primary gets every
zone, every delegating host's key and grant; each secondary the transfer key and the zone list;
each host with delegations its own key (``/etc/pkinfra/tsig.key``, 0600 root). Keys are made on
the controller under the inventory's ``secrets_dir`` and never printed. Ends with
``deploys/resolver.py`` (the lab resolver), so one include in site.py runs both, in order.
"""

from __future__ import annotations

from dataclasses import asdict

from pyinfra import local
from pyinfra.api import DeployError
from pyinfra.operations import apt, files

from operations import dns
from operations.context import inventory, this_host
from pkinfra import tsig, zones
from pkinfra.model import Inventory

HOST_KEY = "/etc/pkinfra/tsig.key"

_sites: dict[int, zones.Site] = {}


def site_of(inv: Inventory) -> zones.Site:
    """The rendering of the whole inventory, once per pyinfra run (every host uses it)."""
    if id(inv) not in _sites:
        try:
            _sites[id(inv)] = zones.render_site(inv, tlsa=ca_tlsa_records(inv))
        except zones.ZoneError as exc:
            raise DeployError(f"pkinfra: {exc}") from None
    return _sites[id(inv)]


def ca_tlsa_records(inv: Inventory) -> list[zones.IncludedTLSA]:
    """TLSA records of CA-issued certificates for the zones' include files (the DANE deploy
    fills this from pki/; until then the include files are empty)."""
    return []


def key_file(inv: Inventory, name: str) -> str:
    try:
        return str(tsig.ensure_key(inv.secrets_dir, name))
    except tsig.TSIGError as exc:
        raise DeployError(f"pkinfra: {exc}") from None


inv = inventory()
spec = this_host()
site = site_of(inv)
layout = zones.Layout()
server = site.server(spec.fqdn)

if server is not None:
    apt.packages(name="BIND", packages=["bind9", "bind9-utils", "bind9-dnsutils"], update=False)
    files.directory(
        name="TSIG key directory", path=layout.key_dir, user="root", group="bind", mode="2750"
    )
    for directory in (layout.zone_dir, layout.dnssec_key_dir):
        files.directory(
            name=f"Zone directory {directory}",
            path=directory,
            user="bind",
            group="bind",
            mode="0750",
        )
    for name in server.keys:
        dns.secret_file(
            name=f"TSIG key {name}",
            src=key_file(inv, name),
            path=layout.key_file(name),
            owner="root",
            group="bind",
            mode="0640",
        )
    dns.named(
        name=f"BIND {server.role}",
        config=server.config,
        zones=[asdict(z) for z in server.zones],
    )
    dns.stale_files(
        name="TSIG keys of hosts no longer in the inventory",
        directory=layout.key_dir,
        keep=[f"{name}.key" for name in server.keys],
    )

if spec.fqdn in site.host_keys:
    files.directory(
        name="pkinfra directory", path="/etc/pkinfra", user="root", group="root", mode="0755"
    )
    dns.secret_file(
        name="This host's TSIG key",
        src=key_file(inv, spec.fqdn),
        path=HOST_KEY,
        owner="root",
        group="root",
        mode="0600",
    )
else:
    files.file(name="No TSIG key without delegations", path=HOST_KEY, present=False)

# The lab's validating resolver (hosts of group "resolvers") follows the servers it asks.
local.include("deploys/resolver.py")
