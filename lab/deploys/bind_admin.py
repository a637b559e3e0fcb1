"""What the lab's DNS admin keeps by hand, before pkinfra's DNS deploy: BIND's options (the ones
pkinfra's README recommends for an authoritative server), ``named.conf.local`` with the one line
that includes pkinfra's file and the admin's own zone ``unsigned.test`` (kept by hand: its file
holds the ``$INCLUDE`` of pkinfra's records), on the primary and the secondaries.

The admin's zone file is written only when it is missing: after that it is the admin's (and
pkinfra moves its serial when its include changes). Nothing is reloaded here; the DNS deploy
that follows checks the whole configuration and reloads named.
"""

from io import StringIO

from pyinfra import host
from pyinfra.facts.files import File
from pyinfra.operations import files

from operations.context import inventory, this_host
from pkinfra import tsig, zones

inv = inventory()
spec = this_host()
layout = zones.Layout()
primary = inv.hosts[inv.settings.dns.primary]
secondaries = [inv.hosts[name] for name in inv.settings.dns.secondaries]
ADMIN_ZONE = next(z for z in inv.settings.zones if z.admin_file is not None)

OPTIONS = """// The site's options (kept by hand; pkinfra's README lists what it recommends).
options {
	directory "/var/cache/bind";
	listen-on { any; };
	listen-on-v6 { none; };
	// Authoritative only.
	recursion no;
	dnssec-validation no;
	allow-transfer { none; };
	notify-rate 1000;
	startup-notify-rate 1000;
	serial-query-rate 1000;
};
"""

PRIMARY_LOCAL = f"""// The site's zones, kept by hand, and pkinfra's configuration.
{layout.include_line}

// {ADMIN_ZONE.name}: kept by hand; pkinfra's records come in through $INCLUDE.
zone "{ADMIN_ZONE.name}" {{
	type primary;
	file "{ADMIN_ZONE.admin_file}";
	notify explicit;
	also-notify {{ {" ".join(f"{h.address};" for h in secondaries)} }};
	allow-transfer {{ key "{tsig.TRANSFER_KEY}"; }};
}};
"""

SECONDARY_LOCAL = f"""// The site's zones, kept by hand, and pkinfra's configuration.
{layout.include_line}

zone "{ADMIN_ZONE.name}" {{
	type secondary;
	primaries {{ {primary.address} key "{tsig.TRANSFER_KEY}"; }};
	file "/var/cache/bind/db.{ADMIN_ZONE.name}";
}};
"""

SECONDARY_NS = "".join(f"\tIN\tNS\t{h.fqdn}.\n" for h in secondaries)
ZONE = f"""; {ADMIN_ZONE.name}: kept by hand by the site's admin.
$TTL 3600
@	IN	SOA	{primary.fqdn}. hostmaster.{ADMIN_ZONE.name}. (
		2026010100	; serial (date convention)
		3600 600 1209600 300 )
	IN	NS	{primary.fqdn}.
{SECONDARY_NS}
; The admin's own records.
info	IN	TXT	"kept by hand"

; pkinfra's delegations and the TLSA records of CA-issued certificates.
$INCLUDE "{layout.admin_include(ADMIN_ZONE.name)}"
"""

if spec.fqdn in {primary.fqdn, *(h.fqdn for h in secondaries)}:
    files.put(
        name="BIND options (the admin's)",
        src=StringIO(OPTIONS),
        dest=layout.options_file,
        mode="644",
    )
    files.put(
        name="BIND local zones and pkinfra's include (the admin's)",
        src=StringIO(PRIMARY_LOCAL if spec.fqdn == primary.fqdn else SECONDARY_LOCAL),
        dest=layout.include_into,
        mode="644",
    )
if spec.fqdn == primary.fqdn and host.get_fact(File, path=str(ADMIN_ZONE.admin_file)) is None:
    files.put(
        name=f"Zone {ADMIN_ZONE.name} (the admin's first version)",
        src=StringIO(ZONE),
        dest=str(ADMIN_ZONE.admin_file),
        mode="644",
    )
