"""The inventory schema, its validation, and the derivation of every delegated name.

The inventory is plain pyinfra data: settings in ``group_data/all.py``, per-host fields in the
host data of ``inventory.py`` (or a group file). ``load`` reads all of it once, before pyinfra
connects to anything, and reports every problem at once, each naming where it is and the field
path (``mx1.example.test: certificates[0].issuer: unknown CA 'x' (known: a, b)``).

``delegation`` is the single source of the names that DNS-01 and DANE need: the owner in the main
zone, the CNAME target in the shadow zone and the ``update-policy`` grant. Zones, grants, hooks and
checks are all rendered from it.
"""

from __future__ import annotations

import difflib
import ipaddress
import posixpath
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pkinfra import names, tlsa, tsig
from pkinfra.agent import paths
from pkinfra.agent.errors import PkinfraError
from pkinfra.keys import KeyType, check_key_type

ACME = "acme"
FILE_CONTENTS = ("cert", "chain", "fullchain", "key", "combined", "ca_bundle", "crl")
SECRET_CONTENTS = frozenset({"key", "combined"})
SIGNALS = ("HUP", "USR1", "USR2", "TERM")

#: Settings that only ``group_data/all.py`` may hold.
GLOBAL_KEYS = (
    "pki_dir",
    "secrets_dir",
    "zones",
    "shadow_zone",
    "dns",
    "cas",
    "acme",
    "revoke_removed",
    "rollover_wait",
)
#: Per-host fields (host data, or a group file for every host of the group).
HOST_KEYS = ("fqdn", "address", "records", "certificates", "services", "tlsa")


# -- field types --------------------------------------------------------------------------------


def _dns_name(value: str) -> str:
    return names.normalize(value)


def _dns_name_wild(value: str) -> str:
    return names.normalize(value, wildcard=True)


def _record_name(value: str) -> str:
    return names.normalize(value, wildcard=True, underscore=True)


def _positive(unit: str) -> Any:
    def check(value: int) -> int:
        if value <= 0:
            raise ValueError(f"must be a positive number of {unit}, got {value}")
        return value

    return AfterValidator(check)


def _mode(value: str | int) -> str:
    text = oct(value)[2:] if isinstance(value, int) else str(value)
    if not re.fullmatch(r"0?[0-7]{3}", text):
        raise ValueError(f"mode must be octal like '0640', got {value!r}")
    return text.rjust(4, "0")


#: Characters a host path may hold. Host paths go into nginx and certbot configuration, JSON
#: read by the host agents and shell commands: anything that could end a token there (space,
#: ``;{}$`'"\\``, newline ...) is refused rather than quoted everywhere.
_PATH_CHARS = re.compile(r"[A-Za-z0-9/._+@:,=-]*")


def check_path(value: str, *, host: bool = True) -> str:
    """The one path check of the inventory; returns ``value`` or raises ``ValueError``.

    A host path is absolute, in normal form (no ``//``, ``/./``, trailing ``/``), has no ``..``
    and holds only letters, digits and ``/ . _ - + @ : , =``. A controller path (``host=False``:
    files beside ``inventory.py``) may be relative and may hold any printable character, but is
    in normal form and has no ``..`` either.
    """
    if not value:
        raise ValueError("empty path")
    bad = next((c for c in value if not c.isprintable()), None)
    if bad is not None:
        raise ValueError(f"path {value!r} holds a control character ({bad!r})")
    if host and not value.startswith("/"):
        raise ValueError(f"must be an absolute path, got '{value}'")
    if host:
        bad = next((c for c in value if not _PATH_CHARS.fullmatch(c)), None)
        if bad is not None:
            what = "a space" if bad == " " else f"'{bad}'"
            raise ValueError(
                f"path '{value}' holds {what} (allowed: letters, digits and / . _ - + @ : , =)"
            )
    parts = value.split("/")
    if ".." in parts:
        raise ValueError(f"path '{value}' holds '..'")
    inner = parts[1:-1] if value.startswith("/") else parts[:-1]
    if value != "/" and ("" in inner or "." in parts or parts[-1] == ""):
        raise ValueError(
            f"path '{value}' is not in normal form (no '//', '/./' or trailing '/'): "
            f"write '{posixpath.normpath(value)}'"
        )
    return value


def _abs_path(value: str) -> str:
    return check_path(value)


def _controller_path(value: str) -> str:
    return check_path(value, host=False)


DnsName = Annotated[str, AfterValidator(_dns_name)]
DnsNameWild = Annotated[str, AfterValidator(_dns_name_wild)]
RecordName = Annotated[str, AfterValidator(_record_name)]
KeyTypeName = Annotated[KeyType, BeforeValidator(check_key_type)]
Seconds = Annotated[int, _positive("seconds")]
Days = Annotated[int, _positive("days")]
Mode = Annotated[str, AfterValidator(_mode)]
AbsPath = Annotated[str, AfterValidator(_abs_path)]
ControllerPath = Annotated[str, AfterValidator(_controller_path)]
Subtree = Annotated[str, AfterValidator(names.normalize_subtree)]
Ident = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


# -- global settings ----------------------------------------------------------------------------


class Zone(_Model):
    """A main zone served by the primary: static, signed unless ``signed`` is False."""

    name: DnsName
    signed: bool = True
    ttl: Seconds = 3600
    #: TTL of the TLSA records of CA-issued certificates (the include file).
    tlsa_ttl: Seconds = 300
    #: CA domains that may issue for the zone (``letsencrypt.org``): CAA records at the apex
    #: (``caa_records``); empty: pkinfra renders no CAA records.
    caa: list[DnsName] = []
    #: The zone is kept by the admin in this file on the primary (absolute path): pkinfra then
    #: writes only its include file for the zone (delegation CNAMEs, TLSA records), which the
    #: admin's file ``$INCLUDE``s, and moves the file's SOA serial when that include changes.
    #: ``signed`` then says whether the admin signs it. None: pkinfra renders the zone whole.
    admin_file: AbsPath | None = None

    @field_validator("admin_file")
    @classmethod
    def _admin_file_is_the_admins(cls, value: str | None) -> str | None:
        area = reserved_host_path(value) if value else None
        if area is not None:
            raise ValueError(
                f"'{value}' is pkinfra's own ({area}): the admin's zone file lives elsewhere "
                "(e.g. /etc/bind/db.<zone>)"
            )
        return value

    @model_validator(mode="after")
    def _admin_keeps_caa(self) -> Zone:
        if self.admin_file is not None and self.caa:
            raise ValueError(
                "'caa' and 'admin_file' exclude each other: the admin keeps the zone's CAA "
                "records in its file"
            )
        return self


class ShadowZone(_Model):
    """The dynamic zone that receives ACME challenges and host-managed TLSA records."""

    name: DnsName
    signed: bool = True
    tlsa_ttl: Seconds = 60
    challenge_ttl: Seconds = 5
    negative_ttl: Seconds = 1


class DnsServers(_Model):
    """Which inventory hosts (by FQDN) run BIND: one primary, any number of secondaries."""

    primary: DnsName
    secondaries: list[DnsName] = []


class Passphrase(_Model):
    """Where a CA key's passphrase comes from: an environment variable or a file (never inline)."""

    env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    file: ControllerPath | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Passphrase:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of 'env' or 'file'")
        return self

    def describe(self) -> str:
        return f"environment variable {self.env}" if self.env else f"file {self.file}"


class CAImport(_Model):
    """An existing CA to take over: its certificate and key as PEM files on the controller."""

    cert: ControllerPath
    key: ControllerPath


class CA(_Model):
    """A certificate authority kept on the controller."""

    parent: str | None = None
    key_type: KeyTypeName = "ec-p384"
    validity_days: Days = 3650
    path_length: int | None = Field(default=None, ge=0)
    #: Name-constraint subtrees: ``example.test`` is the name and its subdomains,
    #: ``.example.test`` only its subdomains (RFC 5280, as verifiers apply it).
    permitted: list[Subtree] = []
    excluded: list[Subtree] = []
    organization: str | None = None
    passphrase: Passphrase | None = None
    #: An unencrypted key at rest only where the inventory says so explicitly.
    unencrypted: bool = False
    import_from: CAImport | None = None
    crl_days: Days = 7

    @model_validator(mode="after")
    def _key_protection(self) -> CA:
        if self.passphrase is None and not self.unencrypted:
            raise ValueError(
                "needs 'passphrase' (env or file), or 'unencrypted: True' to keep the key in clear"
            )
        if self.passphrase is not None and self.unencrypted:
            raise ValueError("'passphrase' and 'unencrypted: True' exclude each other")
        return self


#: certbot options ``acme.certbot_args`` may not hold (nor abbreviate, as certbot's parser
#: accepts): pkinfra sets them itself, or they weaken what pkinfra guarantees.
CERTBOT_REFUSED = {
    "--no-verify-ssl": "turns off TLS verification of the ACME server",
    **dict.fromkeys(
        (
            "--manual-auth-hook",
            "--manual-cleanup-hook",
            "--pre-hook",
            "--post-hook",
            "--deploy-hook",
            "--renew-hook",
            "--disable-hook-validation",
        ),
        "adds a hook (pkinfra's hooks are the only ones that run)",
    ),
    **dict.fromkeys(
        (
            "--server",
            "--staging",
            "--test-cert",
            "--config",
            "--config-dir",
            "--work-dir",
            "--logs-dir",
            "--authenticator",
            "--installer",
            "--manual",
            "--webroot",
            "--webroot-path",
            "--webroot-map",
            "--preferred-challenges",
            "--domains",
            "--domain",
            "--cert-name",
            "--csr",
            "--cert-path",
            "--key-path",
            "--chain-path",
            "--fullchain-path",
            "--reuse-key",
            "--no-reuse-key",
            "--new-key",
            "--key-type",
            "--rsa-key-size",
            "--elliptic-curve",
        ),
        "overrides what pkinfra derives from the inventory",
    ),
}
#: Short forms: -c config, -w webroot path, -a authenticator, -i installer, -d domains.
_CERTBOT_REFUSED_SHORT = {
    "c": "--config",
    "w": "--webroot-path",
    "a": "--authenticator",
    "i": "--installer",
    "d": "--domains",
}
#: Short flags that take no value, so a refused one may follow them in a cluster (``-vd``).
_CERTBOT_FLAGS = set("vqnt")


def certbot_arg_refusal(arg: str) -> str | None:
    """Why ``arg`` may not be passed to certbot through the inventory, or None."""
    if arg.startswith("--") and len(arg) > 2:
        option = arg.split("=", 1)[0]
        hit = next((r for r in CERTBOT_REFUSED if r.startswith(option)), None)
        if hit is None:
            return None
        return f"'{arg}' {CERTBOT_REFUSED[hit]}: remove it"
    if arg.startswith("-") and not arg.startswith("--"):
        for char in arg[1:]:
            if char in _CERTBOT_REFUSED_SHORT:
                long = _CERTBOT_REFUSED_SHORT[char]
                return f"'{arg}' ({long}) {CERTBOT_REFUSED[long]}: remove it"
            if char not in _CERTBOT_FLAGS:
                break
    return None


def _certbot_arg(arg: str) -> str:
    why = certbot_arg_refusal(arg)
    if why is not None:
        raise ValueError(why)
    return arg


CertbotArg = Annotated[str, AfterValidator(_certbot_arg)]


class Acme(_Model):
    """The ACME server: Let's Encrypt in production, Pebble in the lab."""

    directory: str = Field(pattern=r"^https://\S+$")
    contact: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    #: PEM bundle (on the controller) that signs the ACME server's own TLS certificate.
    ca_bundle: ControllerPath | None = None
    #: Extra arguments for certbot runs started by pyinfra (never hooks, paths or the server).
    certbot_args: list[CertbotArg] = []

    @field_validator("directory")
    @classmethod
    def _directory(cls, value: str) -> str:
        # The URL also names certbot's account directory on the host
        # (/etc/letsencrypt/accounts/<host><path>): it must not climb out of it.
        parts = urlsplit(value)
        if not parts.hostname:
            raise ValueError(f"'{value}' has no host name")
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"'{value}' must not hold a user or password")
        if parts.query or parts.fragment or "%" in parts.path or "\\" in parts.path:
            raise ValueError(f"'{value}' must not hold a query, fragment, '%' or '\\'")
        segments = parts.path.split("/")[1:]
        if any(seg in (".", "..") for seg in segments) or "" in segments[:-1]:
            raise ValueError(f"'{value}': the path is not in normal form (no '..', '.' or '//')")
        return value


#: The second certbot lineage of a key rollover: ``<certificate><NEXT_SUFFIX>``.
NEXT_SUFFIX = "-next"


class Settings(_Model):
    """Everything ``group_data/all.py`` holds for pkinfra."""

    pki_dir: ControllerPath = "pki"
    secrets_dir: ControllerPath = "pki/secrets"
    zones: list[Zone] = Field(min_length=1)
    shadow_zone: ShadowZone
    dns: DnsServers
    cas: dict[Ident, CA] = {}
    acme: Acme | None = None
    #: Revoke a CA-issued certificate once the inventory no longer has it (else: reported).
    revoke_removed: bool = False
    #: How long one run may wait to finish a key rollover (step 2 needs the next TLSA record
    #: served for its TTL first); 0: step 2 happens on a later run.
    rollover_wait: Seconds = 0


# -- per host -----------------------------------------------------------------------------------


def txt_quoted(value: str) -> str:
    """A TXT value as zone text: quoted and escaped, unless it is already quoted."""
    if value.startswith('"'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check_record_value(rdtype: str, text: str) -> str:
    """Refuse anything but exactly one record value, written as dnspython writes it back.

    The value goes into a zone file as it is: a newline would start a record of its own (any
    name, any type, an ``$INCLUDE``), a parenthesis would swallow the lines after it. Hence no
    control character, and the text must come back from ``dns.rdata.from_text(...).to_text()``
    unchanged but for runs of white space. Names are read against the root: a relative name
    (``web1``, which BIND would put under the zone) comes back as ``web1.`` and is refused, so
    every name in a value is absolute (ends with a dot).
    """
    bad = next((c for c in text if not c.isprintable()), None)
    if bad is not None:
        raise ValueError(f"holds a control character ({bad!r}): one record per entry")
    try:
        rdata = dns.rdata.from_text(
            dns.rdataclass.IN,
            dns.rdatatype.from_text(rdtype),
            text,
            origin=dns.name.root,
            relativize=False,
        )
    except (dns.exception.DNSException, ValueError) as exc:
        if str(exc).startswith("expected EOL or EOF"):
            raise ValueError(f"{text!r} is more than one {rdtype} value") from None
        raise ValueError(f"not a valid {rdtype} value ({exc})") from None
    back = rdata.to_text()
    if " ".join(back.split()) != " ".join(text.split()):
        raise ValueError(
            f"{text!r} is not one {rdtype} value as written: it reads back as {back!r} "
            "(write that; names end with a dot)"
        )
    return text


class Record(_Model):
    """A static record the host owns in a main zone."""

    name: RecordName
    type: Literal["A", "AAAA", "CNAME", "MX", "TXT", "SRV", "CAA", "NS"]
    value: str
    ttl: Seconds | None = None

    @field_validator("value")
    @classmethod
    def _one_value(cls, value: str, info: ValidationInfo) -> str:
        rdtype = info.data.get("type")
        if rdtype is not None:
            check_record_value(rdtype, txt_quoted(value) if rdtype == "TXT" else value)
        return value

    @property
    def rdata(self) -> str:
        """The value as the zone file holds it (a TXT value quoted)."""
        return txt_quoted(self.value) if self.type == "TXT" else self.value


class Certificate(_Model):
    """A certificate the host holds: from one of our CAs, or from ACME."""

    name: Ident
    names: list[DnsNameWild] = Field(min_length=1)
    issuer: str
    challenge: Literal["http-01", "dns-01"] | None = None
    webroot: AbsPath | None = None
    key_type: KeyTypeName = "ec-p256"
    usages: list[Literal["server", "client"]] = ["server"]
    validity_days: Days = 90
    #: Renew this many days before expiry; None: when a third of the lifetime is left.
    renew_before_days: Days | None = None
    #: Where the key, certificate and chain live on the host (CA-issued certificates).
    directory: AbsPath | None = None
    #: A label of your choice; set or change it to roll the key over (two steps, the TLSA
    #: record of the next key published before any service uses it).
    rollover: Ident | None = None

    @field_validator("usages")
    @classmethod
    def _usages(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs at least one of 'server', 'client'")
        return sorted(set(value))

    @property
    def is_acme(self) -> bool:
        return self.issuer == ACME

    @property
    def host_directory(self) -> str:
        return self.directory or self.default_directory

    @property
    def default_directory(self) -> str:
        if self.is_acme:
            return f"/etc/letsencrypt/live/{self.name}"
        return f"{paths.CERTS_DIR}/{self.name}"


class ServiceFile(_Model):
    """One file a service reads, written atomically with its owner, group and mode."""

    path: AbsPath
    content: Literal["cert", "chain", "fullchain", "key", "combined", "ca_bundle", "crl"]
    owner: str = "root"
    group: str = "root"
    mode: Mode | None = None
    #: For ca_bundle and crl: which CA (default: the issuer of the service's certificate).
    ca: str | None = None

    @property
    def file_mode(self) -> str:
        if self.mode is not None:
            return self.mode
        return "0600" if self.content in SECRET_CONTENTS else "0644"


class Notify(_Model):
    """How a service learns that its files changed: signal, reload command, or restart."""

    signal: Literal["HUP", "USR1", "USR2", "TERM"] | None = None
    pidfile: AbsPath | None = None
    #: The process name the pidfile must point at (default: the service's name); a pid that
    #: belongs to anything else gets no signal.
    process: str | None = None
    command: str | None = None
    restart: str | None = None

    @model_validator(mode="after")
    def _one_way(self) -> Notify:
        ways = [w for w in ("signal", "command", "restart") if getattr(self, w)]
        if len(ways) != 1:
            raise ValueError("give exactly one of 'signal' (with 'pidfile'), 'command', 'restart'")
        if self.signal and not self.pidfile:
            raise ValueError("'signal' needs a 'pidfile'")
        if self.pidfile and not self.signal:
            raise ValueError("'pidfile' is only used with 'signal'")
        return self


class Service(_Model):
    """A service that uses one certificate, its copies of the files, and how to notify it."""

    name: Ident
    certificate: str
    files: list[ServiceFile] = []
    notify: Notify | None = None


class Tlsa(_Model):
    """A DANE-EE TLSA publication (3 1 1) at ``_<port>._<proto>.<name>``."""

    port: int = Field(ge=1, le=65535)
    proto: Literal["tcp", "udp", "sctp"] = "tcp"
    name: DnsName | None = None
    certificate: str
    #: Several hosts serve this owner (an HA pair behind one name): the owner's RRset holds
    #: every sharing host's record. Each publication at the owner must say so (a typo must not
    #: let one host's key into another's RRset), and each certificate must be CA-issued.
    shared: bool = False


class HostSpec(_Model):
    """One managed host."""

    fqdn: DnsName
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    records: list[Record] = []
    certificates: list[Certificate] = []
    services: list[Service] = []
    tlsa: list[Tlsa] = []
    #: The host's name in pyinfra (``@docker/pkinfra-mx1``); filled in by ``load``.
    pyinfra_name: str = ""
    groups: tuple[str, ...] = ()

    def certificate(self, name: str) -> Certificate | None:
        return next((c for c in self.certificates if c.name == name), None)

    def tlsa_name(self, publication: Tlsa) -> str:
        if publication.name:
            return publication.name
        cert = self.certificate(publication.certificate)
        assert cert is not None, "validated: TLSA certificate exists"
        return names.base_name(cert.names[0])


# -- pkinfra's own places on a host ------------------------------------------------------------

#: Directories that hold pkinfra's files on a host (agents, their configuration and state,
#: certbot's tree, BIND include files, CA-issued certificates): no inventory path may lie in one,
#: or a service file would overwrite pkinfra's. tests/unit/test_model.py checks that every path
#: of ``pkinfra.agent.paths`` (and the BIND layout) lies in one of these.
HOST_RESERVED_DIRS = (
    paths.ETC_DIR,
    paths.STATE_DIR,
    paths.CACHE_DIR,
    paths.LIB_DIR,
    "/etc/letsencrypt",
    "/var/lib/letsencrypt",
    "/etc/bind/pkinfra",
    "/var/lib/bind/pkinfra",
)
#: pkinfra's files in shared directories (``pkinfra-*``), and BIND's files on the DNS servers.
HOST_RESERVED_PREFIXES = (
    paths.BIN_PREFIX,
    "/usr/local/share/ca-certificates/pkinfra-",
    "/etc/nginx/sites-enabled/pkinfra-",
    "/etc/unbound/pkinfra-",
    "/var/log/pkinfra-",
    "/run/pkinfra-",
    "/etc/bind/named.conf.options",
    "/etc/bind/named.conf.local",
)
#: Where CA-issued certificates live by default; a ``directory`` may be one below it.


def is_below(path: str, directory: str) -> bool:
    """True when ``path`` lies strictly inside ``directory`` (both in normal form)."""
    return path.startswith(directory.rstrip("/") + "/")


def reserved_host_path(path: str) -> str | None:
    """The place of pkinfra's that ``path`` is or lies in, or None."""
    for directory in HOST_RESERVED_DIRS:
        if path == directory or is_below(path, directory):
            return f"{directory}/"
    return next((f"{p}*" for p in HOST_RESERVED_PREFIXES if path.startswith(p)), None)


# -- derived names ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delegation:
    """A name in a main zone handed to one host through the shadow zone.

    ``owner`` is a CNAME in ``zone`` pointing at ``target`` in the shadow zone, where the host
    with TSIG key ``key_name`` may change records of type ``rdtype`` and nothing else.
    """

    host: str
    owner: str
    zone: str
    rdtype: str
    target: str
    key_name: str

    @property
    def grant(self) -> str:
        return f'grant "{self.key_name}" name {self.target}. {self.rdtype};'


def tsig_key_name(host_fqdn: str) -> str:
    """The TSIG key name of a host: its FQDN (a key per host, named after it)."""
    return host_fqdn


def challenge_owner(name: str) -> str:
    """Where ACME looks for the DNS-01 TXT of ``name`` (a wildcard shares its base name's)."""
    return f"_acme-challenge.{names.base_name(name)}"


def tlsa_owner(port: int, proto: str, name: str) -> str:
    """``_<port>._<proto>.<name>``: the owner of a TLSA RRset (RFC 6698)."""
    return tlsa.owner_name(port, proto, name)


def delegation(
    host_fqdn: str, owner: str, rdtype: str, zones: Iterable[str], shadow_zone: str
) -> Delegation:
    """Derive the delegated names for one host and one owner name.

    The target keeps the whole owner name under the shadow zone, so it is unique, readable, and
    tells which main-zone name it serves. Raises ``ValueError`` when the owner is in no managed
    zone or the target would not be a valid DNS name (longer than 253 octets).
    """
    target = f"{owner.rstrip('.').lower()}.{shadow_zone}"
    if len(target) > names.MAX_NAME_OCTETS:
        raise ValueError(
            f"'{owner}' delegated into the shadow zone is '{target[:40]}...', "
            f"{len(target)} octets (at most {names.MAX_NAME_OCTETS})"
        )
    owner = names.normalize(owner, underscore=True)
    zone = zone_of(owner, zones)
    if zone is None:
        raise ValueError(f"'{owner}' is outside every managed zone")
    return Delegation(
        host=host_fqdn,
        owner=owner,
        zone=zone,
        rdtype=rdtype,
        target=target,
        key_name=tsig_key_name(host_fqdn),
    )


def zone_of(name: str, zones: Iterable[str]) -> str | None:
    """The closest enclosing zone of ``name`` among ``zones``, or None."""
    candidates = [z for z in zones if names.is_subdomain(name, z)]
    return max(candidates, key=len) if candidates else None


# -- the whole inventory ------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One inventory mistake: where (host or file), the field path, and what is wrong."""

    where: str
    path: str
    message: str

    def __str__(self) -> str:
        return (
            f"{self.where}: {self.path}: {self.message}"
            if self.path
            else (f"{self.where}: {self.message}")
        )


class InventoryError(PkinfraError):
    """The inventory has problems; nothing was contacted."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__(self.report())

    def report(self) -> str:
        count = len(self.problems)
        head = f"pkinfra: the inventory has {count} problem{'s' if count != 1 else ''}"
        lines = [f"{head}; no host was contacted:"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


@dataclass(frozen=True)
class Inventory:
    """The validated inventory: settings plus every host, keyed by FQDN."""

    settings: Settings
    hosts: Mapping[str, HostSpec]
    base_dir: Path
    #: Not mistakes, but worth knowing (printed when the inventory loads).
    warnings: tuple[Problem, ...] = ()

    @property
    def zone_names(self) -> list[str]:
        return [z.name for z in self.settings.zones]

    @property
    def pki_dir(self) -> Path:
        return self.base_dir / self.settings.pki_dir

    @property
    def secrets_dir(self) -> Path:
        return self.base_dir / self.settings.secrets_dir

    def host(self, fqdn: str) -> HostSpec:
        return self.hosts[fqdn]

    def by_pyinfra_name(self, name: str) -> HostSpec | None:
        return next((h for h in self.hosts.values() if h.pyinfra_name == name), None)

    def ca_chain(self, ca_name: str) -> list[str]:
        """The CA and its ancestors, leaf-most first (root last)."""
        chain: list[str] = []
        current: str | None = ca_name
        while current is not None and current not in chain:
            chain.append(current)
            current = self.settings.cas[current].parent
        return chain

    def delegations(self, host: HostSpec) -> list[Delegation]:
        """Every name ``host`` may change through the shadow zone (ACME challenges, ACME TLSA)."""
        result: dict[tuple[str, str], Delegation] = {}
        shadow = self.settings.shadow_zone.name
        for cert in host.certificates:
            if cert.is_acme and cert.challenge == "dns-01":
                for name in cert.names:
                    d = delegation(host.fqdn, challenge_owner(name), "TXT", self.zone_names, shadow)
                    result[(d.owner, d.rdtype)] = d
        for pub in host.tlsa:
            used = host.certificate(pub.certificate)
            if used is not None and used.is_acme:
                owner = tlsa_owner(pub.port, pub.proto, host.tlsa_name(pub))
                d = delegation(host.fqdn, owner, "TLSA", self.zone_names, shadow)
                result[(d.owner, d.rdtype)] = d
        return list(result.values())

    def all_delegations(self) -> list[Delegation]:
        return [d for h in self.hosts.values() for d in self.delegations(h)]


# -- loading ------------------------------------------------------------------------------------


def read_group_data(directory: Path) -> dict[str, dict[str, Any]]:
    """Read ``group_data/*.py`` the way pyinfra does: public module-level names, no imports."""
    result: dict[str, dict[str, Any]] = {}
    if not directory.is_dir():
        return result
    for path in sorted(directory.glob("*.py")):
        namespace: dict[str, Any] = {"__file__": str(path)}
        exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)
        result[path.stem] = {
            k: v for k, v in namespace.items() if not k.startswith("_") and not _is_code(v)
        }
    return result


def _is_code(value: Any) -> bool:
    import types

    return isinstance(value, (types.ModuleType, types.FunctionType, type))


#: Groups as pyinfra takes them: name -> hosts, or (hosts, data); a host is a name or
#: (name, data). Typed loosely: it is user input, checked here at run time.
Groups = Mapping[str, Any]


def inventory_groups(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The host groups of an ``inventory.py`` (its module namespace), found as pyinfra finds
    them: a module-level list of hosts (names, or ``(name, data)`` tuples), or a ``(hosts,
    data)`` tuple. Names that start with ``_`` are kept, for ``load`` to check: pyinfra skips
    those without a word."""
    groups = {}
    for name, value in namespace.items():
        if name.startswith("__"):
            continue
        hosts = value[0] if isinstance(value, tuple) and len(value) == 2 else value
        if isinstance(hosts, list) and all(isinstance(h, str | tuple) for h in hosts):
            groups[name] = value
    return groups


def _hosts_of(members: Any) -> dict[str, str]:
    """A group's hosts: pyinfra name -> the name a message uses (its ``fqdn`` when given)."""
    hosts = members[0] if isinstance(members, tuple) else members
    found = {}
    for entry in hosts if isinstance(hosts, list) else []:
        name, data = entry if isinstance(entry, tuple) and len(entry) == 2 else (entry, {})
        if isinstance(name, str):
            fqdn = data.get("fqdn") if isinstance(data, dict) else None
            found[name] = fqdn if isinstance(fqdn, str) else name
    return found


def _pyinfra_groups(groups: Groups, problems: list[Problem]) -> dict[str, Any]:
    """The groups pyinfra acts on. pyinfra ignores a group whose name starts with ``_``: its
    hosts would never be contacted and the run would exit 0. Such a group with a host no other
    group has is refused; one that only repeats other groups' hosts (a helper list) is left
    out, as pyinfra leaves it out."""
    listed = {h for g, m in groups.items() if not g.startswith("_") for h in _hosts_of(m)}
    for group, members in groups.items():
        if not group.startswith("_"):
            continue
        for name, where in _hosts_of(members).items():
            if name not in listed:
                message = (
                    f"group '{group}' starts with '_', which pyinfra ignores: this host would "
                    "never be contacted (rename the group)"
                )
                problems.append(Problem(where, "groups", message))
    return {g: m for g, m in groups.items() if not g.startswith("_")}


def load(
    base_dir: Path,
    groups: Groups,
    group_data: Mapping[str, dict[str, Any]] | None = None,
) -> Inventory:
    """Validate the whole inventory; raise ``InventoryError`` listing every problem."""
    if group_data is None:
        group_data = read_group_data(base_dir / "group_data")
    problems: list[Problem] = []
    all_data = dict(group_data.get("all", {}))

    for group, data in group_data.items():
        if group == "all":
            continue
        for key in GLOBAL_KEYS:
            if key in data:
                problems.append(
                    Problem(
                        f"group_data/{group}.py",
                        key,
                        "belongs in group_data/all.py (it applies to every host)",
                    )
                )
        problems += _near_misses(f"group_data/{group}.py", data, HOST_KEYS)
    problems += _near_misses("group_data/all.py", all_data, GLOBAL_KEYS + HOST_KEYS)

    settings: Settings | None = None
    try:
        settings = Settings.model_validate({k: all_data[k] for k in GLOBAL_KEYS if k in all_data})
    except ValidationError as exc:
        problems += _from_pydantic("group_data/all.py", exc, {})

    hosts: dict[str, HostSpec] = {}
    # For hosts with invalid list items: which original indices survived, and the names of
    # certificates that exist but are invalid (so references to them are not reported again).
    kept: dict[str, dict[str, list[int]]] = {}
    unusable: dict[str, set[str]] = {}
    groups = _pyinfra_groups(groups, problems)
    for name, merged, origin in _merge_hosts(groups, group_data, problems):
        where = merged.get("fqdn") if isinstance(merged.get("fqdn"), str) else name
        fields = {k: merged[k] for k in HOST_KEYS if k in merged}
        if "fqdn" not in fields:
            problems.append(
                Problem(str(where), "fqdn", "missing: every pkinfra host needs its FQDN")
            )
            continue
        payload = {**fields, "pyinfra_name": name, "groups": tuple(merged["__groups__"])}
        try:
            spec = HostSpec.model_validate(payload)
        except ValidationError as exc:
            problems += _from_pydantic(str(where), exc, origin)
            salvaged = _salvage(payload, exc)
            if salvaged is None:
                continue
            spec, kept[str(payload["fqdn"])], unusable[str(payload["fqdn"])] = salvaged
        if spec.fqdn in hosts:
            problems.append(
                Problem(spec.fqdn, "fqdn", f"also used by {hosts[spec.fqdn].pyinfra_name}")
            )
            continue
        hosts[spec.fqdn] = spec

    warnings: list[Problem] = []
    if settings is not None:
        problems += _check_settings(settings, hosts)
        for spec in hosts.values():
            problems += _check_host(
                settings, spec, kept.get(spec.fqdn, {}), unusable.get(spec.fqdn, set())
            )
        problems += _check_across(settings, hosts, kept)
        warnings = _warnings(settings, hosts, kept, base_dir)
    if problems:
        raise InventoryError(problems)
    assert settings is not None
    return Inventory(settings=settings, hosts=hosts, base_dir=base_dir, warnings=tuple(warnings))


def _merge_hosts(
    groups: Groups, group_data: Mapping[str, dict[str, Any]], problems: list[Problem]
) -> Iterator[tuple[str, dict[str, Any], dict[str, str]]]:
    """Each host's data as pyinfra will see it: all.py < group files < host data.

    Also yields where each top-level field came from, so a message can name the group file.
    """
    merged: dict[str, dict[str, Any]] = {}
    origin: dict[str, dict[str, str]] = {}
    base = {k: v for k, v in group_data.get("all", {}).items() if k in HOST_KEYS}
    for group, members in groups.items():
        hosts, gdata = members if isinstance(members, tuple) else (members, {})
        if not isinstance(hosts, list) or not isinstance(gdata, dict):
            problems.append(Problem("inventory.py", group, "a group is a list of hosts"))
            continue
        layer = {**group_data.get(group, {}), **gdata}
        for entry in hosts:
            name, hdata = entry if isinstance(entry, tuple) else (entry, {})
            if not isinstance(name, str) or not isinstance(hdata, dict):
                problems.append(Problem("inventory.py", group, f"bad host entry {entry!r:.60}"))
                continue
            data = merged.setdefault(name, {**base, "__groups__": []})
            src = origin.setdefault(name, dict.fromkeys(base, "group_data/all.py"))
            data["__groups__"].append(group)
            for key, value in layer.items():
                if key in HOST_KEYS and key not in hdata:
                    data[key] = value
                    src[key] = f"group_data/{group}.py"
            for key, value in hdata.items():
                data[key] = value
                src.pop(key, None)
            problems += _near_misses(name, hdata, HOST_KEYS)
    for name, data in merged.items():
        yield name, data, origin[name]


_LIST_FIELDS = ("records", "certificates", "services", "tlsa")


def _salvage(
    payload: dict[str, Any], exc: ValidationError
) -> tuple[HostSpec, dict[str, list[int]], set[str]] | None:
    """The host without its invalid list items, so the rest can still be cross-checked.

    Returns None when a problem is outside the lists (then the host is not checked further).
    """
    drop: dict[str, set[int]] = {}
    for err in exc.errors():
        loc = err["loc"]
        if len(loc) >= 2 and loc[0] in _LIST_FIELDS and isinstance(loc[1], int):
            drop.setdefault(str(loc[0]), set()).add(loc[1])
        else:
            return None
    fixed = dict(payload)
    kept: dict[str, list[int]] = {}
    unusable: set[str] = set()
    for field, bad in drop.items():
        items = list(payload[field])
        kept[field] = [i for i in range(len(items)) if i not in bad]
        fixed[field] = [items[i] for i in kept[field]]
        if field == "certificates":
            unusable |= {str(items[i].get("name")) for i in bad if isinstance(items[i], dict)}
    try:
        return HostSpec.model_validate(fixed), kept, unusable
    except ValidationError:
        return None


def _near_misses(where: str, data: Mapping[str, Any], known: Iterable[str]) -> list[Problem]:
    """Unknown keys that look like a typo of a pkinfra key (other keys may be pyinfra's)."""
    known = list(known)
    result = []
    for key in data:
        if key in known or key.startswith("_"):
            continue
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        if close:
            result.append(Problem(where, key, f"unknown field (did you mean '{close[0]}'?)"))
    return result


def _from_pydantic(where: str, exc: ValidationError, origin: Mapping[str, str]) -> list[Problem]:
    result = []
    for err in exc.errors():
        loc = err["loc"]
        path = _loc_text(loc)
        msg = str(err["msg"])
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if err["type"] == "missing":
            msg = "missing"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif (
            err["type"] == "string_pattern_mismatch" and loc and loc[-1] in ("name", "certificate")
        ):
            msg = f"'{err['input']}' is not a valid name (lower-case letters, digits, . _ -)"
        top = str(loc[0]) if loc else ""
        if top in origin:
            path = f"{path} (from {origin[top]})"
        result.append(Problem(where, path, msg))
    return result


def _loc_text(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif str(part).startswith(("function-after", "function-wrap")):
            continue
        else:
            text += f".{part}" if text else str(part)
    return text


def _known(items: Iterable[str]) -> str:
    items = sorted(items)
    return ", ".join(items) if items else "none"


def _check_settings(settings: Settings, hosts: Mapping[str, HostSpec]) -> list[Problem]:
    where = "group_data/all.py"
    problems: list[Problem] = []
    seen: set[str] = set()
    for i, zone in enumerate(settings.zones):
        if zone.name in seen:
            problems.append(Problem(where, f"zones[{i}].name", f"zone '{zone.name}' listed twice"))
        seen.add(zone.name)
    if settings.shadow_zone.name in seen:
        problems.append(
            Problem(where, "shadow_zone.name", "the shadow zone must not also be a main zone")
        )
    for field, fqdn in [("dns.primary", settings.dns.primary)] + [
        (f"dns.secondaries[{i}]", s) for i, s in enumerate(settings.dns.secondaries)
    ]:
        if fqdn not in hosts:
            problems.append(
                Problem(where, field, f"unknown host '{fqdn}' (known: {_known(hosts)})")
            )
    if settings.dns.primary in settings.dns.secondaries:
        problems.append(
            Problem(where, "dns.secondaries", "the primary cannot be its own secondary")
        )

    cas = settings.cas
    for name, ca in cas.items():
        base = f"cas.{name}"
        if ca.parent is not None and ca.parent not in cas:
            problems.append(
                Problem(where, f"{base}.parent", f"unknown CA '{ca.parent}' (known: {_known(cas)})")
            )
    reported: set[frozenset[str]] = set()
    for name in cas:
        cycle = _parent_cycle(cas, name)
        if cycle and cycle[0] == name and frozenset(cycle) not in reported:
            reported.add(frozenset(cycle))
            problems.append(
                Problem(where, f"cas.{name}.parent", f"parent cycle: {' -> '.join(cycle)}")
            )
    for name, ca in cas.items():
        parent = cas.get(ca.parent) if ca.parent else None
        if parent is None or _parent_cycle(cas, name):
            continue
        base = f"cas.{name}"
        if parent.path_length is not None:
            if parent.path_length == 0:
                problems.append(
                    Problem(
                        where,
                        f"{base}.parent",
                        f"CA '{ca.parent}' has path_length 0: it cannot have sub-CAs",
                    )
                )
            elif ca.path_length is None or ca.path_length >= parent.path_length:
                problems.append(
                    Problem(
                        where,
                        f"{base}.path_length",
                        f"must be below the parent's ({parent.path_length}), "
                        f"got {'unlimited' if ca.path_length is None else ca.path_length}",
                    )
                )
        allowed = _effective_permitted(cas, ca.parent)
        if allowed:
            if not ca.permitted and ca.import_from is None:
                problems.append(
                    Problem(
                        where,
                        f"{base}.permitted",
                        f"unconstrained, but parent '{ca.parent}' only permits "
                        f"{', '.join(allowed)}",
                    )
                )
            for i, subtree in enumerate(ca.permitted):
                if not any(names.subtree_within(subtree, a) for a in allowed):
                    problems.append(
                        Problem(
                            where,
                            f"{base}.permitted[{i}]",
                            f"'{subtree}' is wider than the parent '{ca.parent}' allows "
                            f"({', '.join(allowed)})",
                        )
                    )
    return problems


def _parent_cycle(cas: Mapping[str, CA], start: str) -> list[str]:
    path = [start]
    current = cas[start].parent
    while current is not None and current in cas:
        if current in path:
            return [*path[path.index(current) :], current]
        path.append(current)
        current = cas[current].parent
    return []


def _effective_permitted(cas: Mapping[str, CA], name: str | None) -> list[str]:
    """The narrowest permitted subtrees along the chain from ``name`` up to its root."""
    seen: set[str] = set()
    while name is not None and name in cas and name not in seen:
        seen.add(name)
        if cas[name].permitted:
            return list(cas[name].permitted)
        name = cas[name].parent
    return []


def _effective_excluded(cas: Mapping[str, CA], name: str | None) -> list[str]:
    result: list[str] = []
    seen: set[str] = set()
    while name is not None and name in cas and name not in seen:
        seen.add(name)
        result += cas[name].excluded
        name = cas[name].parent
    return result


def _check_host(
    settings: Settings,
    host: HostSpec,
    kept: Mapping[str, list[int]],
    unusable: set[str],
) -> list[Problem]:
    """Cross-checks of one host against the settings and itself.

    ``kept`` maps list fields to the original indices of the items left after invalid ones were
    dropped (messages name the index the user wrote); ``unusable`` are certificate names already
    reported as invalid.
    """
    where = host.fqdn

    def at(field: str, i: int) -> str:
        return f"{field}[{kept[field][i] if field in kept else i}]"

    problems: list[Problem] = []
    zones = [z.name for z in settings.zones]
    shadow = settings.shadow_zone.name
    cas = settings.cas
    issuers = sorted([*cas, ACME])

    def add(path: str, message: str) -> None:
        problems.append(Problem(where, path, message))

    for i, rec in enumerate(host.records):
        if zone_of(rec.name, zones) is None:
            add(
                f"{at('records', i)}.name",
                f"'{rec.name}' is outside every managed zone ({', '.join(zones)})",
            )
        if rec.type == "CNAME" and rec.name in zones:
            add(f"{at('records', i)}.type", f"a CNAME at the apex of zone '{rec.name}'")

    cert_names: dict[str, int] = {}
    for i, cert in enumerate(host.certificates):
        base = at("certificates", i)
        if cert.name in cert_names:
            add(
                f"{base}.name",
                f"duplicate certificate name '{cert.name}' "
                f"(also {at('certificates', cert_names[cert.name])})",
            )
        cert_names.setdefault(cert.name, i)
        if cert.name.endswith(NEXT_SUFFIX):
            add(
                f"{base}.name",
                f"'{cert.name}' ends with '{NEXT_SUFFIX}', which names a key rollover's second "
                "lineage",
            )
        for field, path in (("directory", cert.directory), ("webroot", cert.webroot)):
            area = reserved_host_path(path) if path else None
            own = path == cert.default_directory or is_below(path or "", paths.CERTS_DIR)
            if area and not (field == "directory" and own):
                add(f"{base}.{field}", f"'{path}' is pkinfra's own ({area})")
        for k, other in enumerate(host.certificates[:i]):
            mine, theirs = cert.host_directory, other.host_directory
            if other.name == cert.name:
                continue  # reported above as a duplicate name
            if mine == theirs:
                add(
                    f"{base}.directory",
                    f"'{mine}' is also the directory of {at('certificates', k)}",
                )
            elif is_below(mine, theirs) or is_below(theirs, mine):
                add(
                    f"{base}.directory",
                    f"'{mine}' overlaps the directory of {at('certificates', k)} ('{theirs}')",
                )
        if cert.issuer not in issuers:
            add(f"{base}.issuer", f"unknown CA '{cert.issuer}' (known: {', '.join(issuers)})")
            continue
        if cert.is_acme:
            if settings.acme is None:
                add(f"{base}.issuer", "issuer 'acme' needs an 'acme' section in group_data/all.py")
            if cert.challenge is None:
                add(f"{base}.challenge", "an ACME certificate needs 'http-01' or 'dns-01'")
            if cert.challenge == "http-01":
                if cert.webroot is None:
                    add(f"{base}.webroot", "http-01 needs a webroot (the directory nginx serves)")
                for j, name in enumerate(cert.names):
                    if name.startswith("*."):
                        add(
                            f"{base}.names[{j}]",
                            f"wildcard '{name}' is not allowed with http-01 (ACME needs dns-01)",
                        )
            if cert.challenge == "dns-01":
                for j, name in enumerate(cert.names):
                    try:
                        delegation(host.fqdn, challenge_owner(name), "TXT", zones, shadow)
                    except ValueError as exc:
                        add(f"{base}.names[{j}]", str(exc))
            if cert.key_type == "ed25519":
                add(f"{base}.key_type", "ACME servers do not issue for ed25519 keys")
        else:
            if cert.challenge is not None or cert.webroot is not None:
                add(
                    f"{base}.challenge",
                    f"only ACME certificates use a challenge (issuer is CA '{cert.issuer}')",
                )
            allowed = _effective_permitted(cas, cert.issuer)
            excluded = _effective_excluded(cas, cert.issuer)
            for j, name in enumerate(cert.names):
                if allowed and not any(names.within_subtree(name, a) for a in allowed):
                    add(
                        f"{base}.names[{j}]",
                        f"'{name}' is outside the permitted subtrees of CA "
                        f"'{cert.issuer}' ({', '.join(allowed)})",
                    )
                hit = [e for e in excluded if names.touches_subtree(name, e)]
                if hit:
                    add(
                        f"{base}.names[{j}]",
                        f"'{name}' is in an excluded subtree of CA "
                        f"'{cert.issuer}' ({', '.join(hit)})",
                    )
            ca = cas[cert.issuer]
            if ca.import_from is None and cert.validity_days > ca.validity_days:
                add(
                    f"{base}.validity_days",
                    f"{cert.validity_days} days outlives CA "
                    f"'{cert.issuer}' ({ca.validity_days} days)",
                )
        if cert.renew_before_days is not None and cert.renew_before_days >= cert.validity_days:
            add(
                f"{base}.renew_before_days",
                f"{cert.renew_before_days} days is not shorter than "
                f"the validity ({cert.validity_days} days): it would renew on every run",
            )

    known_certs = _known(cert_names)
    service_names: dict[str, int] = {}
    written: dict[str, str] = {}
    for i, svc in enumerate(host.services):
        base = at("services", i)
        if svc.name in service_names:
            add(f"{base}.name", f"duplicate service name '{svc.name}'")
        service_names.setdefault(svc.name, i)
        svc_cert = host.certificate(svc.certificate)
        if svc_cert is None and svc.certificate not in unusable:
            add(
                f"{base}.certificate",
                f"unknown certificate '{svc.certificate}' (known: {known_certs})",
            )
        seen: set[str] = set()
        for j, f in enumerate(svc.files):
            fbase = f"{base}.files[{j}]"
            if f.path in seen:
                add(f"{fbase}.path", f"'{f.path}' is written twice")
            elif f.path in written:
                add(f"{fbase}.path", f"'{f.path}' is also written by {written[f.path]}")
            seen.add(f.path)
            written.setdefault(f.path, f"{fbase}")
            area = reserved_host_path(f.path)
            if area:
                add(f"{fbase}.path", f"'{f.path}' is pkinfra's own ({area})")
            for k, c in enumerate([] if area else host.certificates):
                if is_below(f.path, c.host_directory):
                    add(
                        f"{fbase}.path",
                        f"'{f.path}' is in the directory of {at('certificates', k)} "
                        f"('{c.host_directory}'), which pkinfra writes",
                    )
                if c.webroot and is_below(f.path, c.webroot):
                    add(
                        f"{fbase}.path",
                        f"'{f.path}' is in the webroot of {at('certificates', k)} "
                        f"('{c.webroot}'), which nginx serves",
                    )
            if f.content in SECRET_CONTENTS and int(f.file_mode, 8) & 0o007:
                add(
                    f"{fbase}.mode",
                    f"{f.content} file mode {f.file_mode} is readable by others (use 0600 or 0640)",
                )
            if f.ca is not None and f.ca not in cas:
                add(f"{fbase}.ca", f"unknown CA '{f.ca}' (known: {_known(cas)})")
            if f.ca is not None and f.content not in ("ca_bundle", "crl"):
                add(f"{fbase}.ca", "'ca' is only used for ca_bundle and crl files")
            if f.content in ("ca_bundle", "crl") and f.ca is None and svc_cert and svc_cert.is_acme:
                add(f"{fbase}.ca", f"a {f.content} beside an ACME certificate needs a 'ca' of ours")

    for i, pub in enumerate(host.tlsa):
        base = at("tlsa", i)
        pub_cert = host.certificate(pub.certificate)
        if pub_cert is None and pub.certificate in unusable:
            continue
        if pub_cert is None:
            add(
                f"{base}.certificate",
                f"host has no certificate '{pub.certificate}' (known: {known_certs})",
            )
            continue
        owner_base = host.tlsa_name(pub)
        if pub.name is None and pub_cert.names[0].startswith("*."):
            add(f"{base}.name", "the certificate's first name is a wildcard: give the TLSA name")
            continue
        try:
            if pub_cert.is_acme:
                delegation(
                    host.fqdn, tlsa_owner(pub.port, pub.proto, owner_base), "TLSA", zones, shadow
                )
            elif zone_of(owner_base, zones) is None:
                add(
                    f"{base}.name",
                    f"'{owner_base}' is outside every managed zone ({', '.join(zones)})",
                )
        except ValueError as exc:
            add(f"{base}.name", str(exc))
    return problems


def _index(kept: Mapping[str, Mapping[str, list[int]]], fqdn: str, field: str, i: int) -> str:
    """``field[i]`` with the index the user wrote (invalid items were dropped before)."""
    indices = kept.get(fqdn, {}).get(field)
    return f"{field}[{indices[i] if indices else i}]"


def _owned_names(
    settings: Settings, host: HostSpec, kept: Mapping[str, Mapping[str, list[int]]]
) -> Iterator[tuple[str, str, str, bool, bool]]:
    """(field path, owner, type, delegated, shared) of every name the host publishes under.

    ``delegated``: a CNAME into the shadow zone (ACME challenges and ACME TLSA); otherwise a
    TLSA record of a CA-issued certificate in the zone's include file. ``shared``: the
    publication says other hosts publish at the owner too.
    """
    for i, cert in enumerate(host.certificates):
        if cert.is_acme and cert.challenge == "dns-01":
            for j, name in enumerate(cert.names):
                path = f"{_index(kept, host.fqdn, 'certificates', i)}.names[{j}]"
                yield path, challenge_owner(name), "TXT", True, False
    for i, pub in enumerate(host.tlsa):
        used = host.certificate(pub.certificate)
        if used is None or (pub.name is None and used.names[0].startswith("*.")):
            continue
        field = "name" if pub.name else "certificate"
        path = f"{_index(kept, host.fqdn, 'tlsa', i)}.{field}"
        owner = tlsa_owner(pub.port, pub.proto, host.tlsa_name(pub))
        yield path, owner, "TLSA", used.is_acme, pub.shared


def _shared_owner_problem(
    owner: str, first: tuple[str, str, bool, bool], delegated: bool, shared: bool
) -> str | None:
    """Why a second host may not publish at ``owner`` too (None: an HA pair that says so)."""
    other, other_path, other_delegated, other_shared = first
    if shared and other_shared:
        if delegated or other_delegated:
            return (
                f"{owner} TLSA is shared, but an ACME certificate's record is published by its "
                "host's agent into the host's own shadow name: an owner several hosts share "
                "needs CA-issued certificates"
            )
        return None
    if shared or other_shared:
        which = (
            f"{other}'s says shared, this one does not"
            if other_shared
            else (f"this one says shared, {other}'s does not")
        )
        return (
            f"{owner} TLSA is also {other}'s ({other_path}) and {which}: every publication at "
            "a shared owner says shared: true"
        )
    return (
        f"{owner} TLSA is already {other}'s ({other_path}): a name and type belong to one host "
        "(an HA pair says shared: true on each publication)"
    )


def _check_across(
    settings: Settings,
    hosts: Mapping[str, HostSpec],
    kept: Mapping[str, Mapping[str, list[int]]],
) -> list[Problem]:
    """What no single host shows: names two hosts claim, key names, zone-level records."""
    problems: list[Problem] = []
    claimed: dict[tuple[str, str], tuple[str, str, bool, bool]] = {}
    delegated: dict[str, str] = {}
    for host in hosts.values():
        problems += [
            Problem(host.fqdn, "fqdn", why)
            for why in [tsig.name_clash(host.fqdn, hosts)]
            if why is not None
        ]
        for path, owner, rdtype, is_delegated, shared in _owned_names(settings, host, kept):
            first = claimed.get((owner, rdtype))
            if first is not None and first[0] != host.fqdn:
                why = (
                    _shared_owner_problem(owner, first, is_delegated, shared)
                    if rdtype == "TLSA"
                    else f"{owner} {rdtype} is already {first[0]}'s ({first[1]}): a name and "
                    "type belong to one host"
                )
                if why is not None:
                    problems.append(Problem(host.fqdn, path, why))
            elif first is None:
                claimed[(owner, rdtype)] = (host.fqdn, path, is_delegated, shared)
            if is_delegated:
                delegated.setdefault(owner, host.fqdn)

    caa_zones = {z.name for z in settings.zones if z.caa}
    admin_zones = {z.name: z.admin_file for z in settings.zones if z.admin_file}
    zone_names = [z.name for z in settings.zones]
    records: dict[str, list[tuple[str, str, str]]] = {}
    for host in hosts.values():
        for i, rec in enumerate(host.records):
            path = _index(kept, host.fqdn, "records", i)
            records.setdefault(rec.name, []).append((host.fqdn, path, rec.type))
            if rec.name in delegated:
                problems.append(
                    Problem(
                        host.fqdn,
                        f"{path}.name",
                        f"'{rec.name}' is delegated to {delegated[rec.name]} (a CNAME into "
                        "the shadow zone): it can hold no other record",
                    )
                )
            admin_file = admin_zones.get(zone_of(rec.name, zone_names) or "")
            if admin_file is not None:
                problems.append(
                    Problem(
                        host.fqdn,
                        f"{path}.name",
                        f"'{rec.name}' is in zone '{zone_of(rec.name, zone_names)}', which the "
                        f"admin keeps ({admin_file}): write the record there",
                    )
                )
            if rec.type == "CAA" and rec.name in caa_zones:
                problems.append(
                    Problem(
                        host.fqdn,
                        f"{path}.type",
                        f"zone '{rec.name}' has 'caa' in group_data/all.py, which renders its "
                        "CAA records",
                    )
                )
    for name, entries in records.items():
        cnames = [e for e in entries if e[2] == "CNAME"]
        if cnames and len(entries) > 1:
            fqdn, path, _ = cnames[0]
            others = ", ".join(f"{h} {p} ({t})" for h, p, t in entries if (h, p) != (fqdn, path))
            problems.append(
                Problem(fqdn, f"{path}.name", f"'{name}' has a CNAME and other data: {others}")
            )
    return problems


def _warnings(
    settings: Settings,
    hosts: Mapping[str, HostSpec],
    kept: Mapping[str, Mapping[str, list[int]]],
    base_dir: Path,
) -> list[Problem]:
    """What the inventory allows on purpose but an operator should know."""
    result: list[Problem] = []
    apexes = {z.name for z in settings.zones}
    for host in hosts.values():
        for i, cert in enumerate(host.certificates):
            if not (cert.is_acme and cert.challenge == "dns-01"):
                continue
            for j, name in enumerate(cert.names):
                if name in apexes and f"*.{name}" not in cert.names:
                    path = f"{_index(kept, host.fqdn, 'certificates', i)}.names[{j}]"
                    result.append(
                        Problem(
                            host.fqdn,
                            path,
                            f"the grant on _acme-challenge.{name} also lets this host obtain "
                            f"*.{name}",
                        )
                    )
    # Controller-side secrets, as certbot treats its credentials files: warned, not refused.
    where = "group_data/all.py"
    seen: set[str] = set()
    for ca_name, ca in settings.cas.items():
        if ca.passphrase is None or ca.passphrase.file is None or ca.passphrase.file in seen:
            continue
        seen.add(ca.passphrase.file)
        mode = _mode_of(base_dir / ca.passphrase.file)
        if mode is not None and mode & 0o077:
            result.append(
                Problem(
                    where,
                    f"cas.{ca_name}.passphrase.file",
                    f"'{ca.passphrase.file}' is readable by group or others "
                    f"(mode {mode:04o}; chmod 600 it)",
                )
            )
    # The store's top directory may be listable (tsig.ensure_key makes it as a parent); what
    # must stay closed is each CA's directory (its key, its records) and the TSIG secrets.
    places = [("pki_dir", f"{settings.pki_dir}/{ca}") for ca in settings.cas]
    for field, directory in [*places, ("secrets_dir", settings.secrets_dir)]:
        mode = _mode_of(base_dir / directory)
        if mode is not None and mode & 0o077:
            result.append(
                Problem(
                    where,
                    field,
                    f"'{directory}' is open to group or others (mode {mode:04o}; chmod 700 it)",
                )
            )
    return result


def _mode_of(path: Path) -> int | None:
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return None


_active: Inventory | None = None


def load_or_exit(inventory_file: str, groups: Groups) -> Inventory:
    """Validate from an ``inventory.py``; on problems print them all and exit non-zero.

    ``groups`` is the inventory's module namespace (``globals()``: its groups are found as
    pyinfra finds them, so they are declared once) or a mapping of group name to hosts. Runs
    while pyinfra loads the inventory, so nothing has been contacted yet. The loaded inventory
    is kept for the deploys of the same process (``active``).
    """
    global _active
    try:
        inventory = load(Path(inventory_file).resolve().parent, inventory_groups(groups))
    except InventoryError as exc:
        raise SystemExit(exc.report()) from None
    for warning in inventory.warnings:
        print(f"pkinfra: warning: {warning}", file=sys.stderr)
    _active = inventory
    return inventory


def active() -> Inventory:
    """The inventory loaded by ``load_or_exit`` in this process."""
    if _active is None:
        raise RuntimeError(
            "no pkinfra inventory is loaded: run pyinfra with an inventory.py that calls "
            "pkinfra.model.load_or_exit (see README.md)"
        )
    return _active


def load_inventory_file(path: str | Path) -> Inventory:
    """Load an ``inventory.py`` outside pyinfra (for the ``pkinfra`` command and benchmarks)."""
    import runpy

    global _active
    _active = None
    runpy.run_path(str(path))
    return active()
