"""RFC 2136 client shared by the controller and the host agent.

Owns everything between "this name should carry this record" and "every authoritative server
serves it": TSIG keys (key files as `tsig-keygen` writes them), CNAME following, zone /
primary / authoritative server discovery, signed dynamic updates over TCP, and the propagation
check (`served_by`: one server's authoritative answer; `wait_visible` and `served_everywhere`:
every server), the one the controller uses too.

It runs on the managed hosts too, so it uses only the standard library and the dnspython of
Debian 12 (2.3): nothing newer than 2.3's API. All failures are one exception type,
`DNSUpdateError`, whose text says what was being done, where, via which server and why, and
never contains a TSIG secret.

**Example:**

    key = TSIGKey.from_file("/etc/pkinfra/tsig.key")
    client = RFC2136Client(key)
    target, _chain = client.follow_cnames("_acme-challenge.mx1.example.test")
    client.add(target, "TXT", token, ttl=5)
    client.wait_visible(target, "TXT", token)
    served_everywhere(owner, "TLSA", "3 1 1 8f3c...", ["192.0.2.53", "192.0.2.54"])  # "" when so
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset
import dns.tsig
import dns.update

from pkinfra.agent.errors import PkinfraError

log = logging.getLogger(__name__)

MAX_CNAME_HOPS = 8
DEFAULT_TIMEOUT = 3.0
DEFAULT_WAIT = 60.0
# Polling starts fast because a local secondary usually has the change within milliseconds,
# and backs off so a slow one is not hammered.
FIRST_POLL_DELAY = 0.05
MAX_POLL_DELAY = 1.0
# Large enough for a few TLSA records without truncation, small enough to avoid fragmentation
# (the DNS flag day 2020 value).
EDNS_PAYLOAD = 1232

NameLike = str | dns.name.Name
RdtypeLike = str | int


class DNSUpdateError(PkinfraError):
    """Any failure of this module, with what was being done and where.

    Rendered as `<action> at <name> in zone <zone> via <server>: <reason>`, leaving out the
    parts that are unknown; `rcode` is the short cause (`REFUSED`, `BADSIG`, `timeout`, ...).
    """

    def __init__(
        self,
        action: str,
        reason: str,
        *,
        name: NameLike | None = None,
        zone: NameLike | None = None,
        server: object | None = None,
        rcode: str | None = None,
    ) -> None:
        self.action = action
        self.reason = reason
        self.name = _text(name) if name is not None else None
        self.zone = _text(zone) if zone is not None else None
        self.server = str(server) if server is not None else None
        self.rcode = rcode
        super().__init__(
            str(self),
            action=action,
            name=self.name,
            zone=self.zone,
            server=self.server,
            rcode=rcode,
        )

    def __str__(self) -> str:
        where = ""
        if self.name is not None:
            where += f" at {self.name}"
        if self.zone is not None:
            where += f" in zone {self.zone}"
        if self.server is not None:
            where += f" via {self.server}"
        return f"{self.action}{where}: {self.reason}"


# --- TSIG keys -----------------------------------------------------------------------------

_ALGORITHMS: dict[str, dns.name.Name] = {
    "hmac-md5": dns.tsig.HMAC_MD5,
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}


@dataclass(frozen=True)
class TSIGKey:
    """A TSIG key; its secret is left out of `repr` and of every error message.

    dnspython's own `dns.tsig.Key` prints its secret in `repr`, so one is made only at the
    moment a message is signed.
    """

    name: dns.name.Name
    algorithm: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "algorithm", _algorithm_name(self.algorithm))
        if self.algorithm not in _ALGORITHMS:
            known = ", ".join(sorted(_ALGORITHMS))
            raise DNSUpdateError(
                f"loading TSIG key {_text(self.name)}",
                f"unknown algorithm {self.algorithm!r} (known: {known})",
            )
        if not self.secret:
            raise DNSUpdateError(f"loading TSIG key {_text(self.name)}", "empty secret")

    @classmethod
    def from_text(cls, name: NameLike, algorithm: str, secret: str) -> TSIGKey:
        """A key from its name, algorithm (`hmac-sha256`) and base64 secret."""
        key_name = _key_name(name)
        try:
            raw = base64.b64decode(secret.strip(), validate=True)
        except (binascii.Error, ValueError):
            # binascii's text does not echo the input, but say nothing about it anyway.
            raise DNSUpdateError(
                f"loading TSIG key {_text(key_name)}", "secret is not valid base64"
            ) from None
        return cls(key_name, algorithm, raw)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], name: NameLike | None = None) -> TSIGKey:
        """The key from a key file as `tsig-keygen` writes it: a `key "n" { ... };` statement
        holding its algorithm and secret clauses.

        + path: the file; several keys may follow each other, `#` and `//` lines are comments
        + name: which key, when the file holds several
        """
        path = Path(path)
        action = f"reading TSIG key file {path}"
        try:
            text = path.read_text()
            mode = path.stat().st_mode
        except OSError as exc:
            raise DNSUpdateError(action, exc.strerror or type(exc).__name__) from None
        if mode & stat.S_IROTH:
            log.warning("TSIG key file %s is readable by every user", path)
        keys = _read_key_file(text, action)
        if name is not None:
            wanted = _key_name(name)
            keys = [key for key in keys if key.name == wanted]
            if not keys:
                raise DNSUpdateError(action, f"no key named {_text(wanted)}")
        if not keys:
            raise DNSUpdateError(action, "no key statement")
        if len(keys) > 1:
            names = ", ".join(_text(key.name) for key in keys)
            raise DNSUpdateError(action, f"several keys ({names}): say which one")
        return keys[0]

    def _dns_key(self) -> dns.tsig.Key:
        return dns.tsig.Key(self.name, self.secret, _ALGORITHMS[self.algorithm])


def _key_name(name: NameLike) -> dns.name.Name:
    try:
        return _absolute(name)
    except dns.exception.DNSException as exc:
        raise DNSUpdateError("loading TSIG key", f"invalid key name: {exc}") from None


def _algorithm_name(algorithm: str) -> str:
    normalized = algorithm.strip().lower().rstrip(".")
    if normalized == "hmac-md5.sig-alg.reg.int":
        return "hmac-md5"
    return normalized


# A key file as `tsig-keygen` writes it (and `pkinfra.tsig.key_text`):
#
#     key "mx1.example.test" {
#             algorithm hmac-sha256;
#             secret "<base64>";
#     };
#
# read word by word: blanks and line breaks are free (neither a key name nor base64 holds one),
# several keys may follow each other, and whole lines starting with `#` or `//` are comments.
# Nothing else of BIND's grammar: a key file is not a named.conf.
_KEY_SHAPE = 'key "name" { algorithm ...; secret "..."; };'


def _read_key_file(text: str, action: str) -> list[TSIGKey]:
    words = [
        (number, word)
        for number, line in enumerate(text.splitlines(), 1)
        if not line.lstrip().startswith(("#", "//"))
        for word in line.split()
    ]
    keys: list[TSIGKey] = []
    position = 0
    while position < len(words):
        line, word = words[position]
        # Words are never quoted in an error: one may be (part of) the secret.
        if word != "key":
            raise DNSUpdateError(action, f"line {line}: no key statement, expected {_KEY_SHAPE}")
        head = [w for _, w in words[position + 1 : position + 3]]
        if len(head) < 2 or head[1] != "{" or not _unquoted(head[0]):
            raise DNSUpdateError(action, f"line {line}: expected {_KEY_SHAPE}")
        name, position = _unquoted(head[0]), position + 3
        options: dict[str, str] = {}
        while True:
            if position >= len(words):
                raise DNSUpdateError(action, f"line {line}: key {name}: missing '}};' at the end")
            at, word = words[position]
            if word in ("};", "}"):
                if word == "}":
                    raise DNSUpdateError(action, f"line {at}: key {name}: '}}' without ';'")
                position += 1
                break
            if word not in ("algorithm", "secret") or word in options:
                raise DNSUpdateError(
                    action, f"line {at}: key {name}: expected algorithm or secret once each"
                )
            if position + 1 >= len(words):
                raise DNSUpdateError(action, f"line {at}: key {name}: {word} has no value")
            value = words[position + 1][1]
            if not value.endswith(";"):
                raise DNSUpdateError(action, f"line {at}: key {name}: expected ';' after {word}")
            if value.startswith('"') and (not value.endswith('";') or value == '";'):
                raise DNSUpdateError(action, f"line {at}: key {name}: unterminated string")
            options[word] = _unquoted(value[:-1])
            position += 2
        for required in ("algorithm", "secret"):
            if not options.get(required):
                raise DNSUpdateError(action, f"line {line}: key {name}: no {required}")
        try:
            keys.append(TSIGKey.from_text(name, options["algorithm"], options["secret"]))
        except DNSUpdateError as exc:
            raise DNSUpdateError(action, f"line {line}: {exc.reason}") from None
    return keys


def _unquoted(word: str) -> str:
    """`word` without its double quotes; '' when it is not one plain or quoted word."""
    if word.startswith('"'):
        word = word[1:-1] if len(word) > 1 and word.endswith('"') else ""
    return "" if any(c in word for c in '"{};') else word


# --- names, servers, zones -----------------------------------------------------------------


def _absolute(name: NameLike) -> dns.name.Name:
    if isinstance(name, dns.name.Name):
        return name if name.is_absolute() else name.derelativize(dns.name.root)
    return dns.name.from_text(name)


def _owner(name: NameLike, action: str) -> dns.name.Name:
    """`_absolute` for caller input: a malformed name is a `DNSUpdateError` too."""
    try:
        return _absolute(name)
    except dns.exception.DNSException as exc:
        raise DNSUpdateError(action, f"invalid name {str(name)!r}: {exc}") from None


def _text(name: NameLike) -> str:
    if isinstance(name, dns.name.Name):
        return name.to_text(omit_final_dot=True)
    return name.rstrip(".") or "."


def _rdtype(rdtype: RdtypeLike) -> dns.rdatatype.RdataType:
    return dns.rdatatype.RdataType.make(rdtype)


def default_resolvers(path: str = "/etc/resolv.conf") -> list[str]:
    """The `nameserver` addresses of resolv.conf, or glibc's fallback (127.0.0.1)."""
    try:
        found = dns.resolver.Resolver(filename=path).nameservers
    except (dns.exception.DNSException, ValueError):
        # No file, no nameserver line, or one dnspython cannot read: what glibc would use.
        return ["127.0.0.1"]
    return [address for address in found if isinstance(address, str)]


@dataclass(frozen=True)
class Server:
    """A DNS server address; the port is shown BIND-style (`addr#port`) when it isn't 53."""

    address: str
    port: int = 53

    @classmethod
    def from_text(cls, text: str, default_port: int = 53) -> Server:
        """`address` or `address#port`."""
        address, sep, port = text.strip().partition("#")
        try:
            number = int(port) if sep else default_port
        except ValueError:
            number = -1
        if not address or not 0 < number < 65536:
            raise DNSUpdateError("reading the client options", f"invalid server {text!r}")
        return cls(address, number)

    def __str__(self) -> str:
        return self.address if self.port == 53 else f"{self.address}#{self.port}"


@dataclass(frozen=True)
class ZoneServers:
    """A zone's servers as the client found them: the apex, the SOA primary and the addresses
    of its NS names (the inventory's zone is `pkinfra.model.Zone`)."""

    name: dns.name.Name
    primary_name: dns.name.Name
    primary: Server | None
    ns_names: tuple[dns.name.Name, ...]
    servers: tuple[Server, ...]

    def __str__(self) -> str:
        return _text(self.name)


@dataclass(frozen=True)
class Change:
    """One change of an update message; build with `Change.add`, `.delete`, `.replace`."""

    op: Literal["add", "delete", "replace"]
    name: dns.name.Name
    rdtype: dns.rdatatype.RdataType
    values: tuple[dns.rdata.Rdata, ...]
    ttl: int

    @classmethod
    def add(cls, name: NameLike, rdtype: RdtypeLike, value: str, ttl: int) -> Change:
        """Add one value; the other values of the RRset stay."""
        return cls._make("add", name, rdtype, [value], ttl)

    @classmethod
    def delete(cls, name: NameLike, rdtype: RdtypeLike, value: str) -> Change:
        """Delete exactly this value; the other values of the RRset stay."""
        return cls._make("delete", name, rdtype, [value], 0)

    @classmethod
    def replace(cls, name: NameLike, rdtype: RdtypeLike, values: Iterable[str], ttl: int) -> Change:
        """Make the RRset exactly `values`; an empty list removes the RRset."""
        return cls._make("replace", name, rdtype, list(values), ttl)

    @classmethod
    def _make(
        cls,
        op: Literal["add", "delete", "replace"],
        name: NameLike,
        rdtype: RdtypeLike,
        values: list[str],
        ttl: int,
    ) -> Change:
        verb = {"add": "adding", "delete": "deleting", "replace": "replacing"}[op]
        try:
            owner = _absolute(name)
            kind = _rdtype(rdtype)
        except (dns.exception.DNSException, ValueError) as exc:
            raise DNSUpdateError(f"{verb} {rdtype}", str(exc), name=str(name)) from None
        action = f"{verb} {dns.rdatatype.to_text(kind)}"
        if not 0 <= ttl <= 2**31 - 1:
            raise DNSUpdateError(action, f"TTL {ttl} out of range", name=owner)
        if kind in (dns.rdatatype.SOA, dns.rdatatype.ANY):
            raise DNSUpdateError(action, "not a type this client changes", name=owner)
        parsed = tuple(_parse_value(kind, value, action, owner) for value in values)
        return cls(op, owner, kind, parsed, ttl)

    def describe(self) -> str:
        verb = {"add": "adding", "delete": "deleting", "replace": "replacing"}[self.op]
        return f"{verb} {dns.rdatatype.to_text(self.rdtype)}"

    def _apply(self, message: dns.update.UpdateMessage) -> None:
        if self.op == "add":
            message.add(self.name, self.ttl, *self.values)
        elif self.op == "delete":
            message.delete(self.name, *self.values)
        elif self.values:
            message.replace(self.name, self.ttl, *self.values)
        else:
            message.delete(self.name, self.rdtype)


def _parse_value(
    rdtype: dns.rdatatype.RdataType, value: str, action: str, name: dns.name.Name
) -> dns.rdata.Rdata:
    try:
        return dns.rdata.from_text(dns.rdataclass.IN, rdtype, value)
    except (dns.exception.DNSException, ValueError) as exc:
        raise DNSUpdateError(action, f"invalid value {value!r}: {exc}", name=name) from None


# --- errors from the wire ------------------------------------------------------------------


def _failure(exc: BaseException, timeout: float, key: TSIGKey | None) -> tuple[str, str]:
    """(rcode, reason) for an exception raised while talking to a server."""
    key_text = f"key {_text(key.name)}" if key is not None else "the key"
    if isinstance(exc, dns.exception.Timeout):
        return "timeout", f"timeout after {timeout:.3g} s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused", "connection refused"
    if isinstance(exc, EOFError):
        return "connection closed", "connection closed by the server"
    if isinstance(exc, dns.tsig.PeerBadKey):
        return "BADKEY", f"BADKEY (the server does not know {key_text} or its algorithm)"
    if isinstance(exc, dns.tsig.PeerBadSignature):
        return "BADSIG", f"BADSIG (the server rejected the signature of {key_text}: wrong secret?)"
    if isinstance(exc, dns.tsig.PeerBadTime):
        return "BADTIME", "BADTIME (the clocks of this host and the server differ too much)"
    if isinstance(exc, dns.tsig.PeerError):
        return "TSIG error", f"TSIG error from the server: {exc}"
    if isinstance(exc, dns.tsig.BadSignature | dns.tsig.BadKey | dns.tsig.BadTime):
        return "bad response signature", f"the response's TSIG does not verify ({exc!r})"
    if isinstance(exc, OSError):
        return "network error", exc.strerror or str(exc)
    return "error", f"{type(exc).__name__}: {exc}"


# The exceptions a query or update may raise; anything else is a bug and should show as one.
_WIRE_ERRORS = (dns.exception.DNSException, OSError, EOFError)


# --- propagation ---------------------------------------------------------------------------


def served_by(
    server: Server,
    name: dns.name.Name,
    rdtype: dns.rdatatype.RdataType,
    rdata: dns.rdata.Rdata,
    timeout: float,
) -> tuple[bool, str]:
    """(does `server` serve `rdata` at `name`?, what the server said) from one RD=0 query.

    Only an authoritative answer (AA set) counts: a server that has not loaded the zone yet, or
    one that answers from its cache, says nothing about what the zone holds now.
    """
    query = dns.message.make_query(name, rdtype, use_edns=0, payload=EDNS_PAYLOAD)
    query.flags &= ~dns.flags.RD
    try:
        response, _ = dns.query.udp_with_fallback(
            query, server.address, timeout=timeout, port=server.port
        )
    except _WIRE_ERRORS as exc:
        return False, _failure(exc, timeout, None)[1]
    rcode = response.rcode()
    if not response.flags & dns.flags.AA:
        # A secondary that has not loaded the zone yet answers REFUSED or SERVFAIL.
        return False, f"not authoritative ({dns.rcode.to_text(rcode)})"
    if rcode == dns.rcode.NXDOMAIN:
        return False, "NXDOMAIN"
    if rcode != dns.rcode.NOERROR:
        return False, dns.rcode.to_text(rcode)
    for rrset in response.answer:
        if rrset.name != name:
            continue
        if rrset.rdtype == dns.rdatatype.CNAME:
            return False, "a CNAME (not the final name)"
        if rrset.rdtype == rdtype:
            if rdata in rrset:
                return True, "serves it"
            return False, f"{len(rrset)} other value(s)"
    return False, f"no {dns.rdatatype.to_text(rdtype)}"


def served_everywhere(
    name: NameLike,
    rdtype: RdtypeLike,
    value: str,
    servers: Iterable[str],
    timeout: float = DEFAULT_TIMEOUT,
) -> str:
    """'' when each of `servers` serves `value` at `name` (`served_by`: RD=0, authoritative
    answers only), asked once each; else why not, for the first one that does not.

    For a caller that knows the authoritative servers (the controller, from the inventory) and
    asks again itself; `RFC2136Client.wait_visible` finds them from the zone's NS and waits.

    + servers: `address` or `address#port`
    """
    owner = _owner(name, "checking a record")
    try:
        kind = _rdtype(rdtype)
    except (dns.exception.DNSException, ValueError) as exc:
        raise DNSUpdateError("checking a record", str(exc), name=owner) from None
    rdata = _parse_value(kind, value, f"checking {dns.rdatatype.to_text(kind)}", owner)
    for text in servers:
        server = Server.from_text(text)
        serves, said = served_by(server, owner, kind, rdata, timeout)
        if not serves:
            want = rdata.to_text()[:20]
            return f"{server} does not serve {want}... at {_text(owner)} yet ({said})"
    return ""


# --- the client ----------------------------------------------------------------------------


class RFC2136Client:
    """Queries and TSIG-signed dynamic updates, with the discovery they need.

    Server addresses are written BIND-style, `address` or `address#port`.

    + key: the TSIG key updates are signed with (`None`: unsigned, for address-based policies)
    + resolvers: servers asked for discovery (SOA, NS, addresses); default: resolv.conf
    + port: the port of every server given or found without one (53 but in tests)
    + primary: where updates go, instead of the address of the zone's SOA MNAME
    + server_addresses: name server host name -> address, instead of looking the name up
      (hidden or split-horizon name servers; servers on other ports in tests)
    + timeout: seconds for each query or update exchange; nothing is retried endlessly

    Discovery results are cached for the life of the client (one hook run, one deploy step);
    `hint_zone` seeds that cache with what a caller remembers.
    """

    def __init__(
        self,
        key: TSIGKey | None = None,
        *,
        resolvers: Sequence[str] | None = None,
        port: int = 53,
        primary: str | None = None,
        server_addresses: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.key = key
        self.port = port
        self.timeout = timeout
        self.resolvers = tuple(
            Server.from_text(text, port) for text in (resolvers or default_resolvers())
        )
        self.primary = Server.from_text(primary, port) if primary else None
        self.server_addresses = {
            _absolute(host): Server.from_text(text, port)
            for host, text in (server_addresses or {}).items()
        }
        self._zone_names: dict[dns.name.Name, dns.name.Name] = {}
        self._zones: dict[dns.name.Name, ZoneServers] = {}

    def __repr__(self) -> str:
        resolvers = ", ".join(str(server) for server in self.resolvers)
        return f"RFC2136Client(key={self.key!r}, resolvers=[{resolvers}], primary={self.primary})"

    def hint_zone(self, name: NameLike, zone: NameLike) -> None:
        """Take `zone` as the apex of the zone holding `name`, without asking any server.

        For a caller that remembers where a name was found last time (the certbot hook keeps
        a small cache): finding the zone of a name that does not exist yet asks a resolver
        about it, which then holds it as nonexistent for a while. The hint is not checked:
        with a wrong one the update fails (NOTZONE, REFUSED), so retry with a new client.

        + name: the name whose zone is known (usually the end of a CNAME chain)
        + zone: the zone apex; must be `name` or one of its parents
        """
        owner = _owner(name, "taking a zone hint")
        apex = _owner(zone, "taking a zone hint")
        if not owner.is_subdomain(apex):
            raise DNSUpdateError(
                "taking a zone hint", f"{_text(apex)} is not a parent of {_text(owner)}"
            )
        self._zone_names[owner] = apex

    # queries ---------------------------------------------------------------------------------

    def _ask(
        self,
        servers: Sequence[Server],
        qname: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        *,
        recurse: bool,
        action: str,
        zone: ZoneServers | None = None,
        also_accept: tuple[int, ...] = (),
    ) -> dns.message.Message:
        """The first usable answer (NOERROR, NXDOMAIN, `also_accept`) from `servers`, in order."""
        query = dns.message.make_query(qname, rdtype, use_edns=0, payload=EDNS_PAYLOAD)
        if not recurse:
            query.flags &= ~dns.flags.RD
        failures: list[str] = []
        for server in servers:
            try:
                response, _ = dns.query.udp_with_fallback(
                    query, server.address, timeout=self.timeout, port=server.port
                )
            except _WIRE_ERRORS as exc:
                failures.append(f"{server}: {_failure(exc, self.timeout, None)[1]}")
                continue
            rcode = response.rcode()
            if rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN, *also_accept):
                return response
            failures.append(f"{server}: {dns.rcode.to_text(rcode)}")
        raise DNSUpdateError(
            action,
            "; ".join(failures) or "no server to ask",
            name=qname,
            zone=zone.name if zone else None,
        )

    def _servers(self, host: dns.name.Name, action: str) -> list[Server]:
        """The configured address of `host`, or its IPv4 addresses, or else its IPv6 ones.

        One family is enough: a server reachable on both would only be polled twice, and a
        host without IPv6 routes would wait on addresses it cannot reach.
        """
        if host in self.server_addresses:
            return [self.server_addresses[host]]
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            response = self._ask(self.resolvers, host, rdtype, recurse=True, action=action)
            found = [
                rdata.address
                for rrset in response.answer
                if rrset.rdtype == rdtype
                for rdata in rrset
            ]
            if found:
                return [Server(address, self.port) for address in found]
        return []

    def _zone_name(self, name: dns.name.Name) -> dns.name.Name:
        """The apex of the zone holding `name`: walk up with SOA queries.

        An answer with a CNAME carries the authority section of the *target's* zone, so only a
        CNAME-free answer's authority SOA is taken as a shortcut. A server chasing a broken
        CNAME chain (a loop) answers SERVFAIL; a CNAME owner is never an apex, so that name
        is passed over, which lets `follow_cnames` reach the loop and name it.
        """
        if name in self._zone_names:
            return self._zone_names[name]
        action = f"finding the zone of {_text(name)}"
        candidate = name
        while True:
            response = self._ask(
                self.resolvers,
                candidate,
                dns.rdatatype.SOA,
                recurse=True,
                action=action,
                also_accept=(dns.rcode.SERVFAIL,),
            )
            if response.rcode() == dns.rcode.SERVFAIL:
                if not self._owns_cname(candidate, action):
                    raise DNSUpdateError(action, "SERVFAIL", name=candidate, rcode="SERVFAIL")
                candidate = candidate.parent()
                continue
            found: dns.name.Name | None = None
            for rrset in response.answer:
                if rrset.rdtype == dns.rdatatype.SOA and rrset.name == candidate:
                    found = candidate
            has_cname = any(rrset.rdtype == dns.rdatatype.CNAME for rrset in response.answer)
            if found is None and not has_cname:
                for rrset in response.authority:
                    if rrset.rdtype == dns.rdatatype.SOA and candidate.is_subdomain(rrset.name):
                        found = rrset.name
            if found is not None:
                self._zone_names[name] = found
                return found
            if candidate == dns.name.root:
                raise DNSUpdateError(action, "no SOA found up to the root")
            candidate = candidate.parent()

    def _owns_cname(self, name: dns.name.Name, action: str) -> bool:
        # Type CNAME is the one query no server chases a CNAME for.
        response = self._ask(self.resolvers, name, dns.rdatatype.CNAME, recurse=True, action=action)
        return any(
            rrset.rdtype == dns.rdatatype.CNAME and rrset.name == name for rrset in response.answer
        )

    def zone_of(self, name: NameLike) -> ZoneServers:
        """The zone holding `name`, its primary and the addresses of all its NS names."""
        owner = _owner(name, "finding a zone")
        apex = self._zone_name(owner)
        if apex in self._zones:
            return self._zones[apex]
        action = f"finding the servers of zone {_text(apex)}"
        soa_response = self._ask(
            self.resolvers, apex, dns.rdatatype.SOA, recurse=True, action=action
        )
        mname: dns.name.Name | None = None
        for rrset in soa_response.answer:
            if rrset.rdtype == dns.rdatatype.SOA and rrset.name == apex:
                mname = rrset[0].mname
        if mname is None:
            raise DNSUpdateError(action, "no SOA at the apex")
        ns_response = self._ask(self.resolvers, apex, dns.rdatatype.NS, recurse=True, action=action)
        ns_names = tuple(
            sorted(
                {
                    rdata.target
                    for rrset in ns_response.answer
                    if rrset.rdtype == dns.rdatatype.NS and rrset.name == apex
                    for rdata in rrset
                }
            )
        )
        if not ns_names:
            raise DNSUpdateError(action, "no NS records")
        servers: list[Server] = []
        for ns_name in ns_names:
            found = self._servers(ns_name, action)
            if not found:
                raise DNSUpdateError(action, f"NS {_text(ns_name)} has no address")
            servers.extend(found)
        primary = self.primary
        if primary is None:
            primaries = self._servers(mname, action)
            primary = primaries[0] if primaries else None
        zone = ZoneServers(apex, mname, primary, ns_names, tuple(dict.fromkeys(servers)))
        log.debug("zone %s: primary %s, servers %s", zone, primary, [str(s) for s in servers])
        self._zones[apex] = zone
        return zone

    def follow_cnames(self, name: NameLike) -> tuple[dns.name.Name, tuple[dns.name.Name, ...]]:
        """Follow the CNAME chain from `name`: (final name, every name from `name` on).

        Each step asks the authoritative servers of the step's zone, primary first, with RD=0:
        they have a CNAME the deploy just added before any secondary or cache does, and BIND
        would not follow a CNAME into another of its zones for us anyway. At most
        `MAX_CNAME_HOPS` CNAMEs; a loop is an error that names it.
        """
        start = _owner(name, "following CNAMEs")
        action = f"following CNAMEs from {_text(start)}"
        chain = [start]
        while True:
            current = chain[-1]
            zone = self.zone_of(current)
            servers = [zone.primary] if zone.primary else []
            servers += [server for server in zone.servers if server not in servers]
            response = self._ask(
                servers, current, dns.rdatatype.CNAME, recurse=False, action=action, zone=zone
            )
            target: dns.name.Name | None = None
            for rrset in response.answer:
                if rrset.rdtype == dns.rdatatype.CNAME and rrset.name == current:
                    target = rrset[0].target
            if target is None:
                return current, tuple(chain)
            if target in chain:
                loop = " -> ".join(_text(n) for n in [*chain[chain.index(target) :], target])
                raise DNSUpdateError(action, f"CNAME loop: {loop}")
            chain.append(target)
            if len(chain) > MAX_CNAME_HOPS + 1:
                path = " -> ".join(_text(n) for n in chain)
                raise DNSUpdateError(
                    action, f"more than {MAX_CNAME_HOPS} CNAMEs in a row: {path} -> ..."
                )

    # updates ---------------------------------------------------------------------------------

    def add(self, name: NameLike, rdtype: RdtypeLike, value: str, ttl: int) -> None:
        """Add `value` (presentation format) to the RRset; its other values stay."""
        self.update([Change.add(name, rdtype, value, ttl)])

    def delete(self, name: NameLike, rdtype: RdtypeLike, value: str) -> None:
        """Delete exactly `value` from the RRset; its other values stay."""
        self.update([Change.delete(name, rdtype, value)])

    def replace(self, name: NameLike, rdtype: RdtypeLike, values: Iterable[str], ttl: int) -> None:
        """Make the RRset exactly `values` (empty: remove it), atomically."""
        self.update([Change.replace(name, rdtype, values, ttl)])

    def update(self, changes: Iterable[Change]) -> ZoneServers | None:
        """Send `changes`, all in one zone, as ONE signed update message over TCP.

        The server applies such a message atomically and bumps the serial once. Returns the
        zone that was updated (`None` when there was nothing to send).
        """
        batch = tuple(changes)
        if not batch:
            return None
        if len(batch) == 1:
            action, name = batch[0].describe(), _text(batch[0].name)
        else:
            action = ", ".join(f"{c.describe()} at {_text(c.name)}" for c in batch)
            name = None
        zones = {self.zone_of(change.name) for change in batch}
        if len(zones) > 1:
            names = ", ".join(sorted(str(zone) for zone in zones))
            raise DNSUpdateError(action, f"changes span zones {names}: send one update per zone")
        zone = zones.pop()
        server = zone.primary
        if server is None:
            raise DNSUpdateError(
                action,
                f"primary {_text(zone.primary_name)} has no address; pass primary=",
                name=name,
                zone=zone.name,
            )
        message = dns.update.UpdateMessage(zone.name)
        for change in batch:
            change._apply(message)
        if self.key is not None:
            message.use_tsig(self.key._dns_key())
        try:
            response = dns.query.tcp(
                message, server.address, timeout=self.timeout, port=server.port
            )
        except _WIRE_ERRORS as exc:
            rcode, reason = _failure(exc, self.timeout, self.key)
            raise DNSUpdateError(
                action, reason, name=name, zone=zone.name, server=server, rcode=rcode
            ) from exc
        rcode_value = response.rcode()
        if rcode_value != dns.rcode.NOERROR:
            text = dns.rcode.to_text(rcode_value)
            raise DNSUpdateError(action, text, name=name, zone=zone.name, server=server, rcode=text)
        if self.key is not None and not response.had_tsig:
            # dnspython accepts an unsigned answer to a signed request; a success we cannot
            # authenticate is no success.
            raise DNSUpdateError(
                action,
                "the response is not signed",
                name=name,
                zone=zone.name,
                server=server,
                rcode="unsigned",
            )
        log.debug("%s in zone %s via %s: NOERROR", action, zone, server)
        return zone

    # propagation -----------------------------------------------------------------------------

    def values(self, name: NameLike, rdtype: RdtypeLike) -> set[str]:
        """The RRset the zone's primary serves now (presentation text; empty when absent),
        asked with RD=0, as an update would change it."""
        return {rdata.to_text() for rrset in self._served(name, rdtype) for rdata in rrset}

    def served_ttl(self, name: NameLike, rdtype: RdtypeLike) -> int:
        """The TTL of the RRset the zone's primary serves now (0 when absent): how long a
        cache may keep it once it has been changed."""
        return max((rrset.ttl for rrset in self._served(name, rdtype)), default=0)

    def _served(self, name: NameLike, rdtype: RdtypeLike) -> list[dns.rrset.RRset]:
        owner = _owner(name, "reading a record")
        action = "reading a record"
        try:
            kind = _rdtype(rdtype)
        except (dns.exception.DNSException, ValueError) as exc:
            raise DNSUpdateError(action, str(exc), name=owner) from None
        zone = self.zone_of(owner)
        query = dns.message.make_query(owner, kind, use_edns=0, payload=EDNS_PAYLOAD)
        query.flags &= ~dns.flags.RD
        server = zone.primary
        if server is None:
            raise DNSUpdateError(
                action,
                f"primary {_text(zone.primary_name)} has no address; pass primary=",
                name=owner,
                zone=zone.name,
            )
        try:
            response, _ = dns.query.udp_with_fallback(
                query, server.address, timeout=self.timeout, port=server.port
            )
        except _WIRE_ERRORS as exc:
            raise DNSUpdateError(
                action,
                _failure(exc, self.timeout, None)[1],
                name=owner,
                zone=zone.name,
                server=str(server),
            ) from None
        rcode = response.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise DNSUpdateError(
                action,
                dns.rcode.to_text(rcode),
                name=owner,
                zone=zone.name,
                server=str(server),
                rcode=dns.rcode.to_text(rcode),
            )
        return [rrset for rrset in response.answer if rrset.name == owner and rrset.rdtype == kind]

    def wait_visible(
        self,
        name: NameLike,
        rdtype: RdtypeLike,
        value: str,
        *,
        present: bool = True,
        timeout: float = DEFAULT_WAIT,
        started: float | None = None,
    ) -> dict[str, float]:
        """Wait until every authoritative server of the zone serves `value` (or, with
        `present=False`, no longer serves it); return seconds until each did, by server.

        Every NS address is polled with RD=0 (a cache proves nothing), starting after 50 ms and
        backing off to 1 s; `timeout` seconds after `started` the error lists the servers that
        lag and what each last said.

        + started: the `time.monotonic()` the timeout (and the timings) count from, for a
          caller whose time budget began before this call (discovery, the update); default now
        """
        owner = _owner(name, "waiting for a record")
        try:
            kind = _rdtype(rdtype)
        except (dns.exception.DNSException, ValueError) as exc:
            raise DNSUpdateError("waiting for a record", str(exc), name=owner) from None
        type_text = dns.rdatatype.to_text(kind)
        action = (
            f"waiting for {type_text}" if present else f"waiting for the removal of {type_text}"
        )
        rdata = _parse_value(kind, value, action, owner)
        zone = self.zone_of(owner)
        if started is None:
            started = time.monotonic()
        deadline = started + timeout
        pending = {server: "not asked" for server in zone.servers}
        timings: dict[str, float] = {}
        delay = FIRST_POLL_DELAY
        while True:
            for server in list(pending):
                remaining = deadline - time.monotonic()
                query_timeout = max(0.05, min(self.timeout, MAX_POLL_DELAY, remaining))
                serves, said = served_by(server, owner, kind, rdata, query_timeout)
                if serves == present:
                    timings[str(server)] = time.monotonic() - started
                    del pending[server]
                else:
                    pending[server] = said
            if not pending:
                log.debug("%s at %s: %s", action, _text(owner), timings)
                return timings
            now = time.monotonic()
            if now >= deadline:
                lagging = ", ".join(f"{server} ({said})" for server, said in pending.items())
                raise DNSUpdateError(
                    action,
                    f"after {timeout:.3g} s still not on {lagging}",
                    name=owner,
                    zone=zone.name,
                    rcode="timeout",
                )
            time.sleep(min(delay, deadline - now))
            delay = min(delay * 2, MAX_POLL_DELAY)
