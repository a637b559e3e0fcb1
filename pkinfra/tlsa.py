"""TLSA records (RFC 6698, RFC 7671) from certificates and public keys.

Owns the record: the one TLSA record type (`TLSARecord`), both for the records pkinfra makes
and for those it reads from DNS; which bytes a selector picks (the whole certificate or its
SubjectPublicKeyInfo), how a matching type digests them, whether a record matches a certificate
or key, the `_<port>._<proto>.<name>` owner name, and the presentation text (`3 1 1 <hex>`,
`canonical`: the one form records are compared in). Usage is carried as data only; what a
usage means for validation is the DANE checker's business.

Runs on managed hosts too (the agent's TLSA updater), so it needs only the standard library and
Debian 12's python3-cryptography (38): no API newer than that.

**Example:**

    record = TLSARecord.from_pem(Path("/etc/letsencrypt/live/mx1/cert.pem").read_bytes())
    owner_name(25, "tcp", "mx1.example.test")   # "_25._tcp.mx1.example.test"
    record.to_text()                            # "3 1 1 8f3c..."
    canonical("3 1 1 8F3C 77A0...")             # "3 1 1 8f3c77a0..."
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pkinfra.agent.errors import PkinfraError

# The usages, selectors and matching types RFC 6698 defines (255, "private use", is left out:
# nothing here would know what to do with it).
USAGES = {0: "PKIX-TA", 1: "PKIX-EE", 2: "DANE-TA", 3: "DANE-EE"}
SELECTORS = {0: "Cert", 1: "SPKI"}
MATCHING_TYPES = {0: "Full", 1: "SHA2-256", 2: "SHA2-512"}
PROTOCOLS = ("tcp", "udp", "sctp")


class PublicKey(Protocol):
    """Any public key cryptography can serialize (RSA, EC, EdDSA and whatever comes next)."""

    def public_bytes(
        self, encoding: serialization.Encoding, format: serialization.PublicFormat
    ) -> bytes: ...


Source = x509.Certificate | PublicKey | bytes | str


class TLSARdata(Protocol):
    """A TLSA rdata as dnspython reads it from DNS (`dns.rdtypes.ANY.TLSA.TLSA`)."""

    usage: int
    selector: int
    mtype: int
    cert: bytes


class TLSAError(PkinfraError, ValueError):
    """A TLSA record cannot be made or read; the text says which input and why."""


def _octet(field: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise TLSAError(f"TLSA {field} {value!r} is not an octet (0-255)")


def _check(field: str, value: int, known: dict[int, str]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in known:
        choices = ", ".join(f"{number} ({name})" for number, name in known.items())
        raise TLSAError(f"TLSA {field} {value!r} is not one of {choices}")
    return value


def owner_name(port: int, proto: str, name: str) -> str:
    """`_<port>._<proto>.<name>` without the trailing dot, lower-case."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise TLSAError(f"TLSA port {port!r} is not in 1-65535")
    if proto not in PROTOCOLS:
        raise TLSAError(f"TLSA protocol {proto!r} is not one of {', '.join(PROTOCOLS)}")
    base = name.strip().rstrip(".").lower()
    if not base:
        raise TLSAError("TLSA owner needs a host name")
    return f"_{port}._{proto}.{base}"


def spki_der(key: PublicKey) -> bytes:
    """The DER SubjectPublicKeyInfo of `key`: what selector 1 takes."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)
_PRIVATE_LABELS = (b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY", b"DSA PRIVATE KEY")


def _pem_blocks(data: bytes) -> list[tuple[str, bytes, bytes]]:
    """(label, DER, whole block) of each PEM block, in order; encrypted legacy PEM fails."""
    blocks: list[tuple[str, bytes, bytes]] = []
    for match in _PEM_BLOCK.finditer(data):
        body = match.group(2)
        if b":" in body:
            # Legacy encrypted PEM ("Proc-Type: 4,ENCRYPTED"): no key material for us.
            raise TLSAError(f"PEM {match.group(1).decode()} block is encrypted")
        try:
            der = base64.b64decode(b"".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            raise TLSAError(f"PEM {match.group(1).decode()} block is not valid base64") from None
        blocks.append((match.group(1).decode(), der, match.group(0)))
    return blocks


def _load_pem(data: bytes) -> x509.Certificate | PublicKey:
    """The first certificate, public key or private key's public half in `data`.

    A chain file (fullchain.pem) gives its first certificate, the leaf; for a DANE-TA record,
    pass the CA certificate itself.
    """
    blocks = _pem_blocks(data)
    if not blocks:
        raise TLSAError("no PEM block found")
    label, der, block = blocks[0]
    try:
        if label in ("CERTIFICATE", "TRUSTED CERTIFICATE"):
            return x509.load_der_x509_certificate(der)
        if label == "PUBLIC KEY":
            return serialization.load_der_public_key(der)
        if label == "ENCRYPTED PRIVATE KEY":
            raise TLSAError("the private key is encrypted: pass the certificate or public key")
        if label.encode() in _PRIVATE_LABELS:
            # The PEM loader reads the traditional (PKCS#1, SEC1) formats as well as PKCS#8.
            private = serialization.load_pem_private_key(block, password=None)
            return private.public_key()
    except TLSAError:
        raise
    except (ValueError, TypeError) as exc:
        # Text only from the library, never the key bytes.
        raise TLSAError(f"PEM {label} block cannot be read: {exc}") from None
    raise TLSAError(f"PEM {label} block is neither a certificate nor a key")


def _load_der(data: bytes) -> x509.Certificate | PublicKey:
    """A DER certificate or DER SubjectPublicKeyInfo."""
    try:
        return x509.load_der_x509_certificate(data)
    except ValueError:
        pass
    try:
        return serialization.load_der_public_key(data)
    except (ValueError, TypeError):
        raise TLSAError("DER data is neither a certificate nor a SubjectPublicKeyInfo") from None


def _load(source: Source) -> x509.Certificate | PublicKey:
    if isinstance(source, str):
        source = source.encode()
    if isinstance(source, bytes):
        return _load_pem(source) if b"-----BEGIN " in source else _load_der(source)
    return source


def selected_data(source: Source, selector: int = 1) -> bytes:
    """The bytes `selector` picks: the DER certificate (0) or the DER SPKI (1)."""
    _check("selector", selector, SELECTORS)
    loaded = _load(source)
    if isinstance(loaded, x509.Certificate):
        if selector == 0:
            return loaded.public_bytes(serialization.Encoding.DER)
        return spki_der(loaded.public_key())
    if selector == 0:
        raise TLSAError("selector 0 (Cert) needs a certificate, not a bare key")
    if not hasattr(loaded, "public_bytes"):
        raise TLSAError(f"not a certificate or public key: {type(loaded).__name__}")
    return spki_der(loaded)


def _digest(data: bytes, matching_type: int) -> bytes:
    if matching_type == 1:
        return hashlib.sha256(data).digest()
    if matching_type == 2:
        return hashlib.sha512(data).digest()
    return data


@dataclass(frozen=True)
class TLSARecord:
    """The rdata of one TLSA record; `3 1 1` (DANE-EE, SPKI, SHA-256) unless told otherwise.

    Any octets make a record, as DNS carries them: one whose usage, selector or matching type
    RFC 6698 does not define is not `usable` (RFC 7671: a client ignores it) and matches
    nothing. The builders (`build`, `from_pem`, `from_spki`, `from_text`) make only usable
    records, with data of the digest's length, and say what is wrong otherwise.
    """

    usage: int
    selector: int
    matching_type: int
    data: bytes

    def __post_init__(self) -> None:
        _octet("usage", self.usage)
        _octet("selector", self.selector)
        _octet("matching type", self.matching_type)

    @property
    def usable(self) -> bool:
        """Whether a DANE client can use the record: usage, selector and matching type known."""
        return (
            self.usage in USAGES
            and self.selector in SELECTORS
            and self.matching_type in MATCHING_TYPES
        )

    def _checked(self) -> TLSARecord:
        """This record, if it is one pkinfra would publish; else `TLSAError` saying why."""
        _check("usage", self.usage, USAGES)
        _check("selector", self.selector, SELECTORS)
        _check("matching type", self.matching_type, MATCHING_TYPES)
        expected = {1: 32, 2: 64}.get(self.matching_type)
        if expected is not None and len(self.data) != expected:
            raise TLSAError(
                f"TLSA {MATCHING_TYPES[self.matching_type]} data is {len(self.data)} octets,"
                f" not {expected}"
            )
        if not self.data:
            raise TLSAError("TLSA data is empty")
        return self

    @classmethod
    def build(
        cls, source: Source, usage: int = 3, selector: int = 1, matching_type: int = 1
    ) -> TLSARecord:
        """The record for `source`: a certificate or public key object, or PEM / DER bytes.

        PEM may hold a certificate (the first of a chain), a public key, or an unencrypted
        private key (its public half is used); DER may be a certificate or an SPKI.
        """
        _check("usage", usage, USAGES)
        _check("matching type", matching_type, MATCHING_TYPES)
        data = _digest(selected_data(source, selector), matching_type)
        return cls(usage, selector, matching_type, data)

    @classmethod
    def from_pem(
        cls, pem: bytes | str, usage: int = 3, selector: int = 1, matching_type: int = 1
    ) -> TLSARecord:
        """`build` for PEM text; says so clearly when the input is not PEM."""
        raw = pem.encode() if isinstance(pem, str) else pem
        if b"-----BEGIN " not in raw:
            raise TLSAError("no PEM block found")
        return cls.build(raw, usage, selector, matching_type)

    @classmethod
    def from_spki(cls, spki: bytes, usage: int = 3, matching_type: int = 1) -> TLSARecord:
        """The selector-1 record of a DER SubjectPublicKeyInfo, taken as is."""
        if not spki:
            raise TLSAError("empty SubjectPublicKeyInfo")
        _check("usage", usage, USAGES)
        _check("matching type", matching_type, MATCHING_TYPES)
        return cls(usage, 1, matching_type, _digest(spki, matching_type))

    @classmethod
    def from_rdata(cls, rdata: TLSARdata) -> TLSARecord:
        """The record of a TLSA rdata from DNS, whatever its parameters (see `usable`)."""
        return cls(rdata.usage, rdata.selector, rdata.mtype, bytes(rdata.cert))

    @classmethod
    def from_text(cls, text: str) -> TLSARecord:
        """Parse presentation text: `3 1 1 <hex>` (the hex may be split by blanks).

        Only a record pkinfra would publish is accepted (`canonical` reads any).
        """
        return cls._parse(text)._checked()

    @classmethod
    def _parse(cls, text: str) -> TLSARecord:
        fields = text.split()
        if len(fields) < 4:
            raise TLSAError(f"TLSA text {text!r} needs usage, selector, matching type and data")
        try:
            usage, selector, matching_type = (int(field) for field in fields[:3])
        except ValueError:
            raise TLSAError(f"TLSA text {text!r}: the first three fields are numbers") from None
        try:
            data = bytes.fromhex("".join(fields[3:]))
        except ValueError:
            raise TLSAError(f"TLSA text {text!r}: the data is not hex") from None
        return cls(usage, selector, matching_type, data)

    def to_text(self) -> str:
        """Presentation text, lower-case hex in one piece (as dnspython and openssl print)."""
        return f"{self.usage} {self.selector} {self.matching_type} {self.data.hex()}"

    def matches(self, source: Source) -> bool:
        """Whether `source` (certificate or key) has this record's data.

        A record that selects the whole certificate never matches a bare key; an unusable
        record matches nothing.
        """
        if not self.usable:
            return False
        try:
            selected = selected_data(source, self.selector)
        except TLSAError:
            if self.selector == 0:
                return False
            raise
        return _digest(selected, self.matching_type) == self.data

    def __str__(self) -> str:
        return self.to_text()


def canonical(text: str) -> str:
    """TLSA presentation text in the one form records are compared in: `3 1 1 <hex>`, the hex
    lower-case in one piece (a server or a person may split it or write it upper-case).

    Reads any usage, selector and matching type (what a server serves is compared as it is).
    """
    return TLSARecord._parse(text).to_text()


def tlsa_text(source: Source, usage: int = 3, selector: int = 1, matching_type: int = 1) -> str:
    """Shortcut: the presentation text of `TLSARecord.build(...)`."""
    return TLSARecord.build(source, usage, selector, matching_type).to_text()
