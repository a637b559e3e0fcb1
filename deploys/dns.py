"""The DNS master: BIND primary and secondaries, zones, DNSSEC, the shadow zone, TSIG keys.

Everything is derived from the WHOLE inventory (also under ``--limit``): the primary gets every
zone, every delegating host's key and grant; each secondary the transfer key and the zone list
(all in pkinfra's one configuration file, which the site's admin includes; a zone the admin keeps
gets only its include file, which the admin's zone file ``$INCLUDE``s);
each host with delegations its own key (``/etc/pkinfra/tsig.key``, 0600 root). Keys are made on
the controller under the inventory's ``secrets_dir`` and never printed.
"""

from __future__ import annotations

from dataclasses import asdict

from pyinfra import logger
from pyinfra.api import DeployError
from pyinfra.operations import files
from pyinfra.operations import server as server_ops

from operations import dns, system
from operations.context import inventory, this_host
from pkinfra import publication, tsig, zones
from pkinfra.agent import paths
from pkinfra.model import Inventory

_sites: dict[int, zones.Site] = {}


def host_key_sets(inv: Inventory) -> dict[str, tsig.HostKeys]:
    """Every delegating host's keys: current, and next while a rotation runs."""
    try:
        return {
            fqdn: tsig.host_keys(inv.secrets_dir, fqdn)
            for fqdn in sorted({d.host for d in inv.all_delegations()})
        }
    except tsig.TSIGError as exc:
        raise DeployError(f"pkinfra: {exc}") from None


def site_of(inv: Inventory) -> zones.Site:
    """The rendering of the whole inventory, once per pyinfra run (every host uses it)."""
    if id(inv) not in _sites:
        try:
            _sites[id(inv)], missing = publication.dns_site(inv)
        except (zones.ZoneError, tsig.TSIGError) as exc:
            raise DeployError(f"pkinfra: {exc}") from None
        for item in missing:
            logger.info(
                f"TLSA {item.owner}: published by the run after {item.host}'s certificate "
                f"'{item.certificate}' is issued"
            )
    return _sites[id(inv)]


def key_sources(inv: Inventory) -> dict[str, str]:
    """Key name -> its file on the controller (files are made at execution time if missing)."""
    sources = {tsig.TRANSFER_KEY: str(tsig.key_path(inv.secrets_dir, tsig.TRANSFER_KEY))}
    for hk in host_key_sets(inv).values():
        sources[hk.current.name] = str(hk.current.path)
        if hk.next is not None:
            sources[hk.next.name] = str(hk.next.path)
    return sources


inv = inventory()
spec = this_host()
site = site_of(inv)
layout = zones.Layout()
server = site.server(spec.fqdn)

# Every authoritative server, asked after an admin's zone changed (they serve its include).
dns_servers = [
    str(inv.host(fqdn).address)
    for fqdn in (inv.settings.dns.primary, *inv.settings.dns.secondaries)
]

if server is not None:
    system.packages(name="BIND", packages=["bind9", "bind9-utils", "bind9-dnsutils"])
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
    sources = key_sources(inv)
    key_ops = [
        dns.secret_file(
            name=f"TSIG key {name}",
            src=sources[name],
            make_key=name,
            path=layout.key_file(name),
            owner="root",
            group="bind",
            mode="0640",
        )
        for name in server.keys
    ]
    # named reads key files only when it loads its configuration: a secret that changed under
    # its old name (a controller's state restored or replaced) takes a reconfig, before the
    # primary below waits for the secondaries to transfer with it. Not before pkinfra's file
    # exists: the admin's configuration includes it, and a reconfig without it would fail.
    server_ops.shell(
        name="BIND: TSIG key files changed",
        commands=[
            f"if [ -e {layout.config_file} ] && rndc status >/dev/null 2>&1; then rndc reconfig; fi"
        ],
        _if=lambda: any(op.did_change() for op in key_ops),
    )
    dns.named(
        name=f"BIND {server.role}",
        config=server.config[layout.config_file],
        zones=[asdict(z) for z in server.zones],
        config_file=layout.config_file,
        admin_conf=layout.admin_conf,
        include_into=layout.include_into,
        working_dir=layout.working_dir,
        servers=dns_servers,
    )
    dns.stale_files(
        name="TSIG keys of hosts no longer in the inventory",
        directory=layout.key_dir,
        keep=[f"{name}.key" for name in server.keys],
    )

# The host's own key. Every host runs these lines (as no-ops where they do not apply): pyinfra
# orders operations across hosts by the sequences hosts share, and the primary's sequence is
# what puts "primary reconfigured" before "primary accepts the next key" before "host switches".
keys = host_key_sets(inv).get(spec.fqdn)
rotating = keys.next if keys is not None else None
dns.key_accepted(
    name="Primary accepts the host's next TSIG key",
    key_file=str(rotating.path) if rotating else None,
    server=str(inv.host(inv.settings.dns.primary).address),
    zone=inv.settings.shadow_zone.name,
)
if keys is not None:
    files.directory(
        name="pkinfra directory", path=paths.ETC_DIR, user="root", group="root", mode="0755"
    )
    dns.secret_file(
        name="This host's TSIG key",
        src=str(keys.installed.path),
        path=paths.TSIG_KEY,
        owner="root",
        group="root",
        mode="0600",
        make_key=keys.installed.name,
    )
else:
    files.file(name="No TSIG key without delegations", path=paths.TSIG_KEY, present=False)
dns.rotation_recorded(
    name="TSIG key rotation: host switched",
    secrets_dir=str(inv.secrets_dir),
    fqdn=spec.fqdn if rotating else None,
)
