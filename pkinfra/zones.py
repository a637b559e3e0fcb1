"""BIND configuration, zone files and the lab resolver's configuration, rendered from the model.

Owns what pkinfra puts on the DNS servers: ONE configuration file per server
(``/etc/bind/pkinfra/named.conf``) that the site's admin ``include``s from ``named.conf`` or
``named.conf.local`` (TSIG key includes, the zones pkinfra owns with their update-policy, notify
and transfer settings), the main zones pkinfra renders whole (SOA, NS, host addresses, static
records, CAA records when the zone's ``caa`` asks for them, the CNAMEs of every delegation, an
``$INCLUDE`` of the TLSA records of CA-issued certificates), the include file of each zone the
admin keeps (``admin_file``: the delegation CNAMEs and TLSA records only, ``$INCLUDE``d by the
admin's file), the shadow zone's initial file, and unbound's configuration with the zones' trust
anchors. ``named.conf.options`` and ``named.conf.local`` are the admin's: pkinfra never writes
them. Everything comes from the WHOLE inventory: a deploy limited to one host renders exactly
what a full one would.

Zone files carry a header line ``; pkinfra-zone serial=N content=SHA256``: ``content`` hashes the
zone without its serial (include file included), so a deploy bumps the serial only when that hash
changes (``next_serial``). An admin's zone gets its serial moved by ``admin_serial`` on its SOA
line only (``soa_serial_span``), when pkinfra's include file for it changes. Secrets never pass
through here: the configuration only ``include``s the key files (``pkinfra.tsig``).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import jinja2

from pkinfra import tsig
from pkinfra.agent.errors import PkinfraError
from pkinfra.model import Inventory, zone_of
from pkinfra.names import base_name

SERIAL = "@SERIAL@"
_CONTENT = "@CONTENT@"
HEADER = "; pkinfra-zone "
TEMPLATES = Path(__file__).parent / "templates"

#: Rate limits of notifies and refresh queries: BIND releases them in ticks (default 20/s: up to
#: ~0.8 s of delay between two changes); 1000/s makes the tick 10 ms (see bench_dnsupdate). These
#: are global options, the admin's: README recommends them for ``named.conf.options``.
QUERY_RATE = 1000

# SOA timers. Secondaries learn of changes by NOTIFY; refresh is the fallback.
MAIN_SOA = {"refresh": 3600, "retry": 600, "expire": 1209600, "minimum": 300}
SHADOW_SOA = {"refresh": 300, "retry": 60, "expire": 1209600}


class ZoneError(PkinfraError, ValueError):
    """The inventory cannot be rendered into zones; the text names the host, zone and name."""


@dataclass(frozen=True)
class Layout:
    """Where things live on the DNS servers (Debian's bind9 layout by default)."""

    #: pkinfra's one configuration file; the admin includes it (``include_line``).
    config_file: str = "/etc/bind/pkinfra/named.conf"
    #: BIND's main configuration (the admin's): the include of ``config_file`` is looked for
    #: from here, through the files it includes.
    admin_conf: str = "/etc/bind/named.conf"
    #: Where pkinfra tells the admin to add ``include_line`` (Debian's file for local zones).
    include_into: str = "/etc/bind/named.conf.local"
    #: The admin's options file: pkinfra never writes it (README: recommended options).
    options_file: str = "/etc/bind/named.conf.options"
    key_dir: str = "/etc/bind/pkinfra/keys"
    #: Zone files must be where the ``bind`` user can write (inline signing, journals).
    zone_dir: str = "/var/lib/bind/pkinfra"
    dnssec_key_dir: str = "/var/lib/bind/pkinfra/keys"
    #: named's ``directory``: relative ``$INCLUDE`` paths of an admin's zone resolve from here.
    working_dir: str = "/var/cache/bind"
    port: int = 53

    @property
    def local_file(self) -> str:
        """The file that took the place of the ``named.conf.local`` pkinfra once rendered."""
        return self.config_file

    @property
    def include_line(self) -> str:
        return f'include "{self.config_file}";'

    def key_file(self, name: str) -> str:
        return f"{self.key_dir}/{name}.key"

    def zone_file(self, zone: str) -> str:
        return f"{self.zone_dir}/{zone}.db"

    def tlsa_file(self, zone: str) -> str:
        return f"{self.zone_dir}/{zone}.tlsa"

    def admin_include(self, zone: str) -> str:
        """The include file of a zone the admin keeps (CNAMEs and TLSA records)."""
        return f"{self.zone_dir}/{zone}.include"


@dataclass(frozen=True)
class IncludedTLSA:
    """A TLSA record of a CA-issued certificate, for the include file of its main zone."""

    owner: str
    value: str


@dataclass(frozen=True)
class ZoneFile:
    """One zone file to install on the primary.

    ``text`` still holds the ``@SERIAL@`` placeholder (``render``); ``content`` is the hash that
    decides whether the installed file is current. A ``dynamic`` zone's file is written only
    when absent: afterwards RFC 2136 updates own it.
    """

    zone: str
    path: str
    text: str
    content: str
    dynamic: bool = False
    include_path: str | None = None
    include_text: str = ""
    #: The admin's zone file on the primary (a zone the admin keeps): pkinfra writes only
    #: ``include_path`` and moves the serial of this file (``admin_serial``); ``text`` is empty.
    admin_file: str | None = None

    def render(self, serial: int) -> str:
        return self.text.replace(SERIAL, str(serial))


@dataclass(frozen=True)
class ServerFiles:
    """What one BIND server holds: config pieces, zone files (primary only), TSIG key names."""

    fqdn: str
    role: str
    config: dict[str, str]
    zones: list[ZoneFile]
    keys: list[str]


@dataclass(frozen=True)
class Site:
    """The whole DNS site rendered from an inventory."""

    primary: ServerFiles
    secondaries: dict[str, ServerFiles]
    #: Names of the hosts' TSIG keys on the primary (after a first rotation, not the FQDNs).
    host_keys: list[str]
    #: Hosts that hold a key of their own (those with at least one delegation).
    key_holders: list[str]
    #: Zones whose DNSKEYs the resolver must trust (the signed ones).
    signed_zones: list[str]
    #: Every zone the servers serve: main zones, then the shadow zone.
    all_zones: list[str]

    def server(self, fqdn: str) -> ServerFiles | None:
        if fqdn == self.primary.fqdn:
            return self.primary
        return self.secondaries.get(fqdn)


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def _render(template: str, **context: object) -> str:
    return _environment().get_template(template).render(**context)


def next_serial(previous: int | None, now: int) -> int:
    """The serial of a changed zone: Unix time, or one more than before if that is larger.

    Unix time keeps serials growing across a recreated primary too, so secondaries that still
    hold an old copy take the new one. Wraps per RFC 1982 only in 2106.
    """
    if previous is None:
        return now
    return max(previous + 1, now) % 2**32


def content_hash(text: str, include_text: str = "") -> str:
    """The hash of a zone without its serial (and of its include file)."""
    digest = hashlib.sha256(text.encode())
    digest.update(b"\0")
    digest.update(include_text.encode())
    return digest.hexdigest()


def parse_header(line: str) -> tuple[int | None, str | None]:
    """(serial, content) from a zone file's ``; pkinfra-zone`` line; (None, None) if absent."""
    if not line.startswith(HEADER):
        return None, None
    fields = dict(part.split("=", 1) for part in line[len(HEADER) :].split() if "=" in part)
    serial = fields.get("serial", "")
    return (int(serial) if serial.isdigit() else None), fields.get("content")


# -- the serial of an admin's zone --------------------------------------------------------------

_TTL_TOKEN = re.compile(r"(\d+|(\d+[wdhms])+)", re.IGNORECASE)
_CLASSES = {"IN", "CH", "HS", "CS"}


def admin_serial(serial: int, today: dt.date) -> int:
    """The serial pkinfra gives an admin's zone whose include file changed.

    One more than before; a date serial (``YYYYMMDDnn`` of today or an earlier day, the RFC 1912
    convention) becomes at least today's ``YYYYMMDD00``, so the admin's own next edit of the day
    keeps counting from there. Any other serial (a counter, Unix time) just grows by one: the
    admin's convention is kept. RFC 1982 arithmetic: wraps at 2**32.
    """
    today00 = int(today.strftime("%Y%m%d")) * 100
    text = str(serial)
    if len(text) == 10 and 1990010100 <= serial <= today00 + 99:
        try:
            dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        except ValueError:
            pass
        else:
            return max(serial + 1, today00) % 2**32
    return (serial + 1) % 2**32


@dataclass(frozen=True)
class _Token:
    text: str
    start: int
    end: int


def _records(text: str) -> list[tuple[bool, list[_Token]]]:
    """Master-file records as (owner given, tokens with their offsets): comments, parentheses
    and quoted strings as BIND reads them; ``$`` directives are left out."""
    records: list[tuple[bool, list[_Token]]] = []
    tokens: list[_Token] = []
    owner = False
    depth = 0
    at_line_start = True
    i = 0
    while i < len(text):
        c = text[i]
        if at_line_start and depth == 0:
            at_line_start = False
            if c == "$":
                i = text.find("\n", i)
                i = len(text) if i < 0 else i
                continue
            owner = c not in " \t\r\n;"
        if c == "\n":
            if depth == 0:
                if tokens:
                    records.append((owner, tokens))
                tokens = []
                at_line_start = True
            i += 1
        elif c in " \t\r":
            i += 1
        elif c == ";":
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        elif c in "()":
            depth += 1 if c == "(" else -1
            i += 1
        else:
            start = i
            if c == '"':
                i += 1
                while i < len(text) and text[i] != '"':
                    i += 2 if text[i] == "\\" else 1
                i += 1
            else:
                while i < len(text) and text[i] not in " \t\r\n;()":
                    i += 1
            tokens.append(_Token(text[start:i], start, i))
    if tokens:
        records.append((owner, tokens))
    return records


def soa_serial_span(data: bytes) -> tuple[int, int, int]:
    """(serial, start, end): the SOA serial of a master file and its byte offsets.

    ``data`` is the file, or its beginning up to the end of the SOA record. Raises
    ``ZoneError`` when there is no SOA record with a plain decimal serial in it.
    """
    text = data.decode("latin-1")  # one character per byte: offsets are byte offsets
    for has_owner, tokens in _records(text):
        fields = tokens[1:] if has_owner else tokens
        k = 0
        while k < min(2, len(fields)) and (
            _TTL_TOKEN.fullmatch(fields[k].text)
            or fields[k].text.upper() in _CLASSES
            or fields[k].text.upper().startswith("CLASS")
        ):
            k += 1
        if k < len(fields) and fields[k].text.upper() == "SOA":
            if len(fields) < k + 4 or not fields[k + 3].text.isdigit():
                raise ZoneError("its SOA record has no plain decimal serial")
            serial = fields[k + 3]
            value = int(serial.text)
            if value >= 2**32:
                raise ZoneError(f"its SOA serial {value} does not fit 32 bits")
            return value, serial.start, serial.end
    raise ZoneError("no SOA record found before its first other record ends")


def include_chain(edges: Iterable[tuple[str, str]], root: str, target: str) -> list[str] | None:
    """How BIND's configuration reaches ``target``: the files from ``root`` (named.conf) down to
    the one that includes it, or None when no chain of includes does (shortest first)."""
    children: dict[str, list[str]] = {}
    for parent, child in edges:
        children.setdefault(parent, []).append(child)
    paths = [[root]]
    seen = {root}
    while paths:
        chain = paths.pop(0)
        for child in children.get(chain[-1], []):
            if child == target:
                return chain
            if child not in seen:
                seen.add(child)
                paths.append([*chain, child])
    return None


# -- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    owner: str
    type: str
    value: str
    ttl: int | None = None
    why: str = ""


def caa_values(inventory: Inventory, zone: str) -> list[str]:
    """The CAA records at the apex of ``zone`` when its ``caa`` lists CA domains, else none.

    One ``issue "<ca>; validationmethods=<m>"`` per CA domain, ``<m>`` the challenges the
    zone's ACME certificates use (both when none does); ``issuewild ";"`` unless one of them
    has a wildcard name, so a grant on ``_acme-challenge.<apex>`` cannot obtain ``*.<apex>``.
    No ``accounturi``: certbot registers each host's account on the host, so the inventory does
    not know the account URIs.
    """
    setting = next(z for z in inventory.settings.zones if z.name == zone)
    if not setting.caa:
        return []
    zones = inventory.zone_names
    methods: set[str] = set()
    wildcard = False
    for spec in inventory.hosts.values():
        for cert in spec.certificates:
            inside = [n for n in cert.names if zone_of(base_name(n), zones) == zone]
            if cert.is_acme and inside and cert.challenge:
                methods.add(cert.challenge)
                wildcard = wildcard or any(n.startswith("*.") for n in inside)
    used = ",".join(sorted(methods or {"dns-01", "http-01"}))
    values = [f'0 issue "{ca}; validationmethods={used}"' for ca in setting.caa]
    if not wildcard:
        values.append('0 issuewild ";"')
    return values


def _zone_rows(
    inventory: Inventory, zone: str, zones: Sequence[str], addresses: bool = True
) -> list[_Row]:
    """The zone's records from the inventory; without ``addresses`` (a zone the admin keeps:
    its hosts' addresses are the admin's, and the model refuses ``records``/``caa`` there)."""
    rows = [
        _Row(zone, "CAA", value, why=f"zone {zone}: caa") for value in caa_values(inventory, zone)
    ]
    for spec in inventory.hosts.values():
        if addresses and spec.address is not None and zone_of(spec.fqdn, zones) == zone:
            kind = "A" if spec.address.version == 4 else "AAAA"
            rows.append(_Row(spec.fqdn, kind, str(spec.address), why=f"{spec.fqdn}: address"))
        for i, rec in enumerate(spec.records):
            if zone_of(rec.name, zones) != zone:
                continue
            # The model let through exactly one value (pkinfra.model.check_record_value).
            rows.append(_Row(rec.name, rec.type, rec.rdata, rec.ttl, f"{spec.fqdn}: records[{i}]"))
        for d in inventory.delegations(spec):
            if d.zone == zone:
                rows.append(_Row(d.owner, "CNAME", f"{d.target}.", why=f"{spec.fqdn}: {d.rdtype}"))
    unique: dict[tuple[str, str, str], _Row] = {}
    for row in rows:
        unique.setdefault((row.owner, row.type, row.value), row)
    rows = sorted(unique.values(), key=lambda r: (r.owner.split(".")[::-1], r.type, r.value))
    _check_conflicts(rows, zone)
    return rows


def _check_conflicts(rows: list[_Row], zone: str) -> None:
    by_owner: dict[str, list[_Row]] = {}
    for row in rows:
        by_owner.setdefault(row.owner, []).append(row)
    for owner, group in by_owner.items():
        cnames = [r for r in group if r.type == "CNAME"]
        if cnames and (len(group) > 1 or owner == zone):
            whose = "; ".join(f"{r.why} ({r.type})" for r in group)
            raise ZoneError(f"zone {zone}: {owner} has a CNAME and other data: {whose}")


def tlsa_include(records: Iterable[IncludedTLSA], zone: str, ttl: int) -> str:
    lines = [
        "; TLSA records of CA-issued certificates (pkinfra); absolute names.\n",
    ]
    for rec in sorted(set(records), key=lambda r: (r.owner, r.value)):
        lines.append(f"{rec.owner}.\t{ttl}\tIN\tTLSA\t{rec.value}\n")
    return "".join(lines)


def admin_include(
    inventory: Inventory, zone: str, records: Iterable[IncludedTLSA], ttl: int, tlsa_ttl: int
) -> str:
    """The include file of a zone the admin keeps: the CNAMEs of every delegation of the zone
    (into the shadow zone) and the TLSA records of CA-issued certificates, absolute names, an
    explicit TTL on every record (no ``$TTL``/``$ORIGIN``: nothing leaks into the admin's file)."""
    return _render(
        "admin_include.j2",
        zone=zone,
        rows=_zone_rows(inventory, zone, inventory.zone_names, addresses=False),
        ttl=ttl,
        tlsa=sorted(set(records), key=lambda r: (r.owner, r.value)),
        tlsa_ttl=tlsa_ttl,
    )


# -- the site -----------------------------------------------------------------------------------


def key_names(inventory: Inventory) -> dict[str, list[str]]:
    """Per delegating host, the names of its TSIG keys now (``pkinfra.tsig.host_keys``)."""
    hosts = sorted({d.host for d in inventory.all_delegations()})
    return {fqdn: tsig.host_keys(inventory.secrets_dir, fqdn).names for fqdn in hosts}


def render_site(
    inventory: Inventory,
    tlsa: Iterable[IncludedTLSA] = (),
    layout: Layout | None = None,
    keys: Mapping[str, Sequence[str]] | None = None,
) -> Site:
    """Render every DNS server's files from the whole inventory.

    + tlsa: TLSA records of CA-issued certificates, each put into its main zone's include file
    + layout: where the files go (tests run the result in a throw-away named)
    + keys: per host FQDN, the names of its TSIG keys the primary accepts (current, and next
      during a rotation; ``key_names`` reads them from the controller); by default the one key
      named after the host, so rendering alone never depends on the controller's state
    """
    layout = layout or Layout()
    settings = inventory.settings
    zones = inventory.zone_names
    shadow = settings.shadow_zone
    primary = inventory.hosts[settings.dns.primary]
    secondaries = [inventory.hosts[s] for s in settings.dns.secondaries]
    for server in secondaries:
        if server.address is None:
            raise ZoneError(f"{server.fqdn}: a secondary needs an 'address' (for also-notify)")
    if primary.address is None:
        raise ZoneError(f"{primary.fqdn}: the primary needs an 'address' (for its secondaries)")
    nameservers = [primary.fqdn, *[s.fqdn for s in secondaries]]

    by_zone: dict[str, list[IncludedTLSA]] = {z: [] for z in zones}
    for rec in tlsa:
        found = zone_of(rec.owner, zones)
        if found is None:
            raise ZoneError(f"TLSA {rec.owner}: outside every managed zone ({', '.join(zones)})")
        by_zone[found].append(rec)

    delegations = inventory.all_delegations()
    names = {d.host: list((keys or {}).get(d.host, [d.key_name])) for d in delegations}
    host_keys = sorted({name for key_names in names.values() for name in key_names})
    grants = sorted(
        {replace(d, key_name=name).grant for d in delegations for name in names[d.host]}
    )

    zone_files: list[ZoneFile] = []
    for z in settings.zones:
        if z.admin_file is not None:
            include_path = layout.admin_include(z.name)
            include_text = admin_include(inventory, z.name, by_zone[z.name], z.ttl, z.tlsa_ttl)
            zone_files.append(
                ZoneFile(
                    zone=z.name,
                    path=z.admin_file,
                    text="",
                    content=content_hash("", include_text),
                    include_path=include_path,
                    include_text=include_text,
                    admin_file=z.admin_file,
                )
            )
            continue
        rows = _zone_rows(inventory, z.name, zones)
        include_path = layout.tlsa_file(z.name)
        include_text = tlsa_include(by_zone[z.name], z.name, z.tlsa_ttl)
        text = _render(
            "zone.db.j2",
            zone=z.name,
            ttl=z.ttl,
            mname=primary.fqdn,
            soa=MAIN_SOA,
            serial=SERIAL,
            content=_CONTENT,
            nameservers=nameservers,
            rows=rows,
            include_path=include_path,
        )
        digest = content_hash(text, include_text)
        zone_files.append(
            ZoneFile(
                zone=z.name,
                path=layout.zone_file(z.name),
                text=text.replace(_CONTENT, digest),
                content=digest,
                include_path=include_path,
                include_text=include_text,
            )
        )
    shadow_text = _render(
        "shadow.db.j2",
        zone=shadow.name,
        ttl=shadow.tlsa_ttl,
        mname=primary.fqdn,
        soa={**SHADOW_SOA, "minimum": shadow.negative_ttl},
        negative_ttl=shadow.negative_ttl,
        serial=SERIAL,
        content=_CONTENT,
        nameservers=nameservers,
    )
    shadow_digest = content_hash(shadow_text)
    zone_files.append(
        ZoneFile(
            zone=shadow.name,
            path=layout.zone_file(shadow.name),
            text=shadow_text.replace(_CONTENT, shadow_digest),
            content=shadow_digest,
            dynamic=True,
        )
    )

    secondary_targets = [(str(s.address), s.fqdn) for s in secondaries]
    common = {"layout": layout, "transfer_key": tsig.TRANSFER_KEY}
    primary_conf = _render(
        "pkinfra.named.conf.primary.j2",
        **common,
        keys=[tsig.TRANSFER_KEY, *host_keys],
        zones=settings.zones,
        shadow=shadow,
        grants=grants,
        secondaries=secondary_targets,
    )
    primary_files = ServerFiles(
        fqdn=primary.fqdn,
        role="primary",
        config={layout.config_file: primary_conf},
        zones=zone_files,
        keys=[tsig.TRANSFER_KEY, *host_keys],
    )
    all_zones = [*zones, shadow.name]
    # A zone the admin keeps is transferred as the admin set it up; pkinfra's secondaries get
    # the zones pkinfra owns.
    owned = [z.name for z in settings.zones if z.admin_file is None] + [shadow.name]
    secondary_files: dict[str, ServerFiles] = {}
    for server in secondaries:
        secondary_files[server.fqdn] = ServerFiles(
            fqdn=server.fqdn,
            role="secondary",
            config={
                layout.config_file: _render(
                    "pkinfra.named.conf.secondary.j2",
                    **common,
                    zones=owned,
                    primary=str(primary.address),
                ),
            },
            zones=[],
            keys=[tsig.TRANSFER_KEY],
        )
    signed = [z.name for z in settings.zones if z.signed]
    if shadow.signed:
        signed.append(shadow.name)
    return Site(
        primary=primary_files,
        secondaries=secondary_files,
        host_keys=host_keys,
        key_holders=sorted(names),
        signed_zones=signed,
        all_zones=all_zones,
    )


# -- the lab resolver ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustAnchor:
    """A key-signing DNSKEY of a signed zone, as unbound's ``trust-anchor:`` takes it."""

    zone: str
    flags: int
    protocol: int
    algorithm: int
    key: str

    def to_text(self) -> str:
        return f"{self.zone}. DNSKEY {self.flags} {self.protocol} {self.algorithm} {self.key}"


def render_unbound(
    inventory: Inventory,
    anchors_include: str,
    access: Sequence[str] | None = None,
) -> str:
    """unbound.conf for a validating lab resolver of the inventory's zones.

    Stub zones send every zone (main, shadow, unsigned) to the primary and the secondaries;
    ``local-zone: transparent`` undoes unbound's built-in static ``test.`` (and similar) zones.
    There is no root trust anchor (the lab has no way out): names outside the signed zones are
    insecure, not bogus.
    + anchors_include: the file of ``trust-anchor:`` lines (``anchors_text``), read at deploy time
    + access: networks allowed to query (default: the /24 or /64 of every inventory address)
    """
    settings = inventory.settings
    servers = [settings.dns.primary, *settings.dns.secondaries]
    addresses = [str(inventory.hosts[s].address) for s in servers if inventory.hosts[s].address]
    if access is None:
        nets = set()
        for spec in inventory.hosts.values():
            if spec.address is not None:
                prefix = 24 if spec.address.version == 4 else 64
                nets.add(str(ipaddress.ip_network(f"{spec.address}/{prefix}", strict=False)))
        access = sorted(nets)
    zones = [*inventory.zone_names, settings.shadow_zone.name]
    return _render(
        "unbound.conf.j2",
        zones=zones,
        addresses=addresses,
        access=access,
        anchors_include=anchors_include,
    )


def anchors_text(anchors: Iterable[TrustAnchor]) -> str:
    """The include file of unbound ``trust-anchor:`` lines, sorted (as the host's fallback
    writes it, byte for byte)."""
    return "".join(sorted(f'trust-anchor: "{a.to_text()}"\n' for a in anchors))


def anchors_from_rrsets(
    zone: str, dnskeys: Iterable[tuple[int, int, int, bytes]]
) -> list[TrustAnchor]:
    """Trust anchors from a zone's DNSKEY rdata (flags, protocol, algorithm, key): KSKs only."""
    return [
        TrustAnchor(zone, flags, protocol, algorithm, base64.b64encode(key).decode())
        for flags, protocol, algorithm, key in dnskeys
        if flags == 257  # zone key + SEP, not revoked
    ]
