"""``pkinfra dns ds``: the DS records of the signed zones, to hand to the parent's registrar.

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
