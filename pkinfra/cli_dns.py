"""``pkinfra dns ds``: the DS records of the signed zones, to hand to the parent's registrar;
``pkinfra dns rotate-key HOST [--finish]``: a host's TSIG key rotation, without a gap.

The keys are read from the primary named in the inventory (its ``address``, or ``--server``) by a
DNS query without recursion, so the output is what the primary signs with right now.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

import dns.dnssec
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype

from pkinfra.model import load_inventory_file

DIGESTS = ("SHA256", "SHA384")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("dns", help="the DNS master: DS records")
    sub = parser.add_subparsers(dest="dns_command", required=True, metavar="ACTION")
    ds = sub.add_parser("ds", help="DS records of the signed zones (for the parent zone)")
    ds.add_argument("zone", nargs="*", help="only these zones (default: every signed zone)")
    ds.add_argument("--server", help="ask this address[#port] instead of the primary")
    ds.add_argument("--digest", default="SHA256", choices=DIGESTS, help="default: SHA256")
    ds.add_argument("--timeout", type=float, default=3.0, help="seconds per query (default 3)")
    ds.set_defaults(handler=ds_command)
    rotate = sub.add_parser(
        "rotate-key",
        help="rotate a host's TSIG key (start; deploy; then --finish; deploy)",
        description="Start: make the host's next key. The next deploy gives the primary both "
        "keys, then installs the next one on the host. --finish (after that deploy) makes it "
        "the current key; the deploy after that removes the old one from the primary.",
    )
    rotate.add_argument("host", help="the host's FQDN")
    rotate.add_argument("--finish", action="store_true", help="retire the old key")
    rotate.set_defaults(handler=rotate_command)


def signed_zones(args: argparse.Namespace) -> tuple[list[str], str]:
    """(the signed zones asked for, the server to ask)."""
    from pkinfra.cli import CLIError

    inventory = load_inventory_file(args.inventory)
    settings = inventory.settings
    signed = [z.name for z in settings.zones if z.signed]
    if settings.shadow_zone.signed:
        signed.append(settings.shadow_zone.name)
    wanted = [z.rstrip(".").lower() for z in args.zone] or signed
    unknown = [z for z in wanted if z not in signed]
    if unknown:
        raise CLIError(
            f"not a signed zone of the inventory: {', '.join(unknown)} "
            f"(signed: {', '.join(signed) or 'none'})"
        )
    server = args.server
    if server is None:
        primary = inventory.hosts[settings.dns.primary]
        if primary.address is None:
            raise CLIError(f"the primary {primary.fqdn} has no address: give --server")
        server = str(primary.address)
    return wanted, server


def ds_records(zone: str, server: str, digest: str, timeout: float) -> list[str]:
    """The DS records (presentation text) of the KSKs ``server`` serves for ``zone``."""
    from pkinfra.cli import CLIError

    address, _, port = server.partition("#")
    name = dns.name.from_text(zone)
    query = dns.message.make_query(name, dns.rdatatype.DNSKEY, want_dnssec=True)
    query.flags &= ~dns.flags.RD
    try:
        response, _ = dns.query.udp_with_fallback(
            query, address, timeout=timeout, port=int(port) if port.isdigit() else 53
        )
    except (dns.exception.DNSException, OSError) as exc:
        reason = f"timeout after {timeout:g} s" if isinstance(exc, dns.exception.Timeout) else exc
        raise CLIError(f"reading the DNSKEYs of {zone} from {server}: {reason}") from None
    if response.rcode() != dns.rcode.NOERROR or not response.flags & dns.flags.AA:
        said = dns.rcode.to_text(response.rcode())
        raise CLIError(f"reading the DNSKEYs of {zone} from {server}: not authoritative ({said})")
    keys = [
        rdata
        for rrset in response.answer
        if rrset.rdtype == dns.rdatatype.DNSKEY and rrset.name == name
        for rdata in rrset
        if rdata.flags == 257
    ]
    if not keys:
        raise CLIError(f"{server} serves no key-signing DNSKEY for {zone} (not signed yet?)")
    return [
        f"{zone}.\tIN\tDS\t{dns.dnssec.make_ds(name, key, digest).to_text()}"
        for key in sorted(keys, key=lambda k: dns.dnssec.key_id(k))
    ]


def ds_command(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    wanted, server = signed_zones(args)
    for zone in wanted:
        for line in ds_records(zone, server, args.digest, args.timeout):
            print(line, file=out)
    return 0


def rotate_command(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from pkinfra import tsig
    from pkinfra.cli import CLIError

    inventory = load_inventory_file(args.inventory)
    fqdn = args.host.rstrip(".").lower()
    if fqdn not in {d.host for d in inventory.all_delegations()}:
        raise CLIError(f"{fqdn}: no TSIG key (not a host with delegated names)")
    try:
        if args.finish:
            key = tsig.finish_rotation(inventory.secrets_dir, fqdn)
            print(
                f"{fqdn}: {key.name} is now the current key; deploy to remove the old one "
                "from the primary",
                file=out,
            )
        else:
            key = tsig.start_rotation(inventory.secrets_dir, fqdn)
            print(
                f"{fqdn}: next key {key.name} made; deploy, then run "
                f"'pkinfra dns rotate-key {fqdn} --finish'",
                file=out,
            )
    except tsig.TSIGError as exc:
        raise CLIError(str(exc)) from None
    return 0
