"""The lab resolver: unbound, DNSSEC-validating, for every zone of the inventory.

Stub zones send the main zones, the shadow zone and the unsigned zone to the primary and the
secondaries. The trust anchors (the signed zones' KSKs) are read from the primary on every run,
since a recreated primary makes new keys; when the primary does not serve them yet (it is
started later in this same run), the resolver host reads them itself after the DNS deploy.
"""

from __future__ import annotations

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rdatatype
from pyinfra.operations import apt

from lab import operations as lab_ops
from operations.context import inventory, this_host
from pkinfra import zones

ANCHORS_PATH = "/etc/unbound/pkinfra-anchors.conf"


def read_anchors(primary: str, signed: list[str]) -> str | None:
    """The ``trust-anchor:`` lines of every signed zone from the primary, or None if any
    zone has no KSK there yet."""
    anchors: list[zones.TrustAnchor] = []
    for zone in signed:
        query = dns.message.make_query(zone, dns.rdatatype.DNSKEY, want_dnssec=False)
        query.flags &= ~dns.flags.RD
        try:
            response = dns.query.udp(query, primary, timeout=2)
        except (dns.exception.DNSException, OSError):
            return None
        keys = [
            (rdata.flags, rdata.protocol, rdata.algorithm, rdata.key)
            for rrset in response.answer
            if rrset.rdtype == dns.rdatatype.DNSKEY
            for rdata in rrset
            if rdata.flags == 257
        ]
        found = zones.anchors_from_rrsets(zone, keys)
        if not found:
            return None
        anchors += found
    return zones.anchors_text(anchors)


inv = inventory()
spec = this_host()
if "resolvers" in spec.groups:
    site = zones.render_site(inv)
    primary = inv.hosts[inv.settings.dns.primary]
    primary_address = str(primary.address)
    apt.packages(name="unbound", packages=["unbound", "bind9-dnsutils"], update=False)
    lab_ops.unbound(
        name="Validating resolver (unbound)",
        config=zones.render_unbound(inv, anchors_include=ANCHORS_PATH),
        anchors=read_anchors(primary_address, site.signed_zones),
        anchors_path=ANCHORS_PATH,
        primary=primary_address,
        signed_zones=site.signed_zones,
    )
