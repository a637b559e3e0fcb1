"""The controller-side CA store: CAs, their keys, what they issued, revocations and CRLs.

Owns everything under the store directory (`pki/` by default), one folder per CA:

    <store>/.lock                 flock for creating, importing or replacing a CA
    <store>/<ca>/ca.crt           the CA certificate (PEM; an imported one keeps its exact DER)
    <store>/<ca>/ca.key           PKCS#8 private key, encrypted unless explicitly not, mode 0600
    <store>/<ca>/ca.json          metadata written once: parent CA, key type, imported, encrypted
    <store>/<ca>/record.jsonl     append-only record: one JSON line per issuance or revocation
    <store>/<ca>/certs/<serial>.pem   every certificate this CA issued (serial in hex)
    <store>/<ca>/crl.pem          the current CRL
    <store>/<ca>/.lock            flock around serial allocation + record append + CRL writes

Callers (pyinfra operations at execution time, the `pkinfra ca` CLI) pass plain values; the core
never imports pyinfra. Every failure is a `CAError` that names the CA, the file and what was being
done, never a key or a passphrase.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import shutil
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, TypeAlias

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pkinfra import names as dns_names
from pkinfra.agent.errors import PkinfraError
from pkinfra.agent.files import fsync_dir, write_atomic
from pkinfra.keys import (
    KeyType,
    KeyTypeError,
    PrivateKey,
    PublicKey,
    generate_private_key,
    key_matches,
    key_type_of,
    signature_hash,
    spki_sha256,
)

CERT_FILE: Final = "ca.crt"
KEY_FILE: Final = "ca.key"
META_FILE: Final = "ca.json"
RECORD_FILE: Final = "record.jsonl"
CERTS_DIR: Final = "certs"
CRL_FILE: Final = "crl.pem"
LOCK_FILE: Final = ".lock"

USAGES: Final[dict[str, x509.ObjectIdentifier]] = {
    "server": ExtendedKeyUsageOID.SERVER_AUTH,
    "client": ExtendedKeyUsageOID.CLIENT_AUTH,
}
REVOCATION_REASONS: Final[tuple[str, ...]] = tuple(r.name for r in x509.ReasonFlags)

# Certificates start a few minutes in the past so a host whose clock lags slightly accepts them.
_BACKDATE: Final = dt.timedelta(minutes=5)
_CA_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")  # always fullmatch


class CAError(PkinfraError):
    """Any failure of the CA store, with what was being done, on which CA and which file.

    The message never contains key material or a passphrase.
    """

    def __init__(
        self,
        message: str,
        *,
        ca: str | None = None,
        path: Path | str | None = None,
        action: str | None = None,
    ) -> None:
        super().__init__(message, ca=ca, path=path, action=action)
        self.message = message
        self.ca = ca
        self.path = None if path is None else Path(path)
        self.action = action

    def __str__(self) -> str:
        where = [f"CA {self.ca}"] if self.ca else []
        if self.path is not None:
            where.append(str(self.path))
        prefix = self.action or "CA store"
        if where:
            prefix += f" ({', '.join(where)})"
        return f"{prefix}: {self.message}"


# --- passphrases ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PassphraseSource:
    """Where a CA passphrase comes from: an environment variable or a file, never a literal.

    Only the source is kept; the value is read when needed and never shown.
    """

    env: str | None = None
    file: Path | None = None

    def __post_init__(self) -> None:
        if (self.env is None) == (self.file is None):
            raise CAError("a passphrase source is exactly one of an environment variable or a file")

    @classmethod
    def from_env(cls, name: str) -> PassphraseSource:
        return cls(env=name)

    @classmethod
    def from_file(cls, path: Path | str) -> PassphraseSource:
        return cls(file=Path(path))

    @classmethod
    def parse(cls, spec: str) -> PassphraseSource:
        """`env:NAME` or `file:PATH` (the form the CLI and the inventory use)."""
        kind, sep, value = spec.partition(":")
        if sep and value and kind == "env":
            return cls.from_env(value)
        if sep and value and kind == "file":
            return cls.from_file(value)
        raise CAError(f"passphrase source must be env:NAME or file:PATH, got {kind or spec!r}:...")

    def describe(self) -> str:
        if self.env is not None:
            return f"environment variable {self.env}"
        return f"file {self.file}"

    def read(self) -> bytes:
        """The passphrase; CAError naming the source when it is missing, unreadable or empty."""
        if self.env is not None:
            raw = os.environb.get(os.fsencode(self.env))
            if raw is None:
                raise CAError(
                    f"passphrase {self.describe()} is not set", action="reading passphrase"
                )
        else:
            assert self.file is not None
            try:
                raw = self.file.read_bytes()
            except OSError as exc:
                raise CAError(
                    f"cannot read passphrase {self.describe()}: {exc.strerror}",
                    action="reading passphrase",
                ) from None
        value = _strip_one_newline(raw)
        if not value:
            raise CAError(f"passphrase {self.describe()} is empty", action="reading passphrase")
        return value


def _strip_one_newline(raw: bytes) -> bytes:
    # Files made with `echo` end in one newline that is not part of the passphrase; anything
    # beyond one is kept, as it may be deliberate.
    if raw.endswith(b"\r\n"):
        return raw[:-2]
    if raw.endswith(b"\n"):
        return raw[:-1]
    return raw


Passphrase: TypeAlias = PassphraseSource | bytes | None


def _passphrase_bytes(passphrase: Passphrase) -> bytes | None:
    if isinstance(passphrase, PassphraseSource):
        return passphrase.read()
    if passphrase is not None and not passphrase:
        raise CAError("empty passphrase", action="reading passphrase")
    return passphrase


# --- DNS names and name constraints ---------------------------------------------------------
#
# Name syntax and subtree matching are pkinfra.names' (the inventory checks the same way). A
# subtree with a leading dot (".example.test") holds only the names below it.


@dataclass(frozen=True)
class DNSConstraints:
    """The DNS part of a CA certificate's name constraints (``.domain``: its subdomains only)."""

    permitted: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()

    @classmethod
    def of(cls, cert: x509.Certificate) -> DNSConstraints:
        try:
            ext = cert.extensions.get_extension_for_class(x509.NameConstraints).value
        except x509.ExtensionNotFound:
            return cls()
        return cls(
            permitted=_dns_subtrees(ext.permitted_subtrees),
            excluded=_dns_subtrees(ext.excluded_subtrees),
        )

    def refusal(self, name: str) -> str | None:
        """Why `name` may not be issued under these constraints, or None."""
        if self.permitted and not any(dns_names.within_subtree(name, p) for p in self.permitted):
            return f"{name} is outside the permitted subtrees ({', '.join(self.permitted)})"
        hit = next((e for e in self.excluded if dns_names.touches_subtree(name, e)), None)
        if hit is not None:
            return f"{name} is inside the excluded subtree {hit}"
        return None


def _dns_subtrees(subtrees: Iterable[x509.GeneralName] | None) -> tuple[str, ...]:
    # As written in the certificate (lower-cased): the leading dot keeps its meaning.
    return tuple(s.value.lower() for s in subtrees or () if isinstance(s, x509.DNSName))


def _constraint_subtrees(values: Iterable[str], what: str) -> tuple[str, ...]:
    out: list[str] = []
    for value in values:
        try:
            out.append(dns_names.normalize_subtree(value))
        except ValueError as exc:
            raise CAError(f"{what} subtree: {exc}") from None
    return tuple(dict.fromkeys(out))


def _name_constraints_extension(constraints: DNSConstraints) -> x509.NameConstraints | None:
    if not constraints.permitted and not constraints.excluded:
        return None
    permitted: list[x509.GeneralName] = [x509.DNSName(p) for p in constraints.permitted]
    excluded: list[x509.GeneralName] = [x509.DNSName(e) for e in constraints.excluded]
    if permitted:
        # A CA limited to some domains must not be able to vouch for IP addresses either:
        # DNS subtrees alone leave iPAddress names unconstrained.
        excluded += [
            x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
            x509.IPAddress(ipaddress.ip_network("::/0")),
        ]
    return x509.NameConstraints(
        permitted_subtrees=permitted or None, excluded_subtrees=excluded or None
    )


# --- records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedRecord:
    """One certificate a CA issued, as its record says (no certificate parsing needed)."""

    ca: str
    serial: int
    kind: str  # "leaf" or "ca" (a sub-CA certificate, recorded in its parent)
    subject: str
    names: tuple[str, ...]
    usages: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    host: str
    cert_name: str
    key_type: str
    spki_sha256: str
    issued_at: dt.datetime
    file: str
    revoked_at: dt.datetime | None = None
    revocation_reason: str | None = None

    @property
    def serial_hex(self) -> str:
        return f"{self.serial:x}"

    def status_at(self, when: dt.datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if when >= self.not_after:
            return "expired"
        if when < self.not_before:
            return "not-yet-valid"
        return "valid"

    @property
    def status(self) -> str:
        """The status now: valid, revoked, expired or not-yet-valid."""
        return self.status_at(_now())


def _record_line(record: IssuedRecord) -> dict[str, Any]:
    return {
        "event": "issued",
        "serial": record.serial_hex,
        "kind": record.kind,
        "subject": record.subject,
        "names": list(record.names),
        "usages": list(record.usages),
        "not_before": record.not_before.isoformat(),
        "not_after": record.not_after.isoformat(),
        "host": record.host,
        "cert_name": record.cert_name,
        "key_type": record.key_type,
        "spki_sha256": record.spki_sha256,
        "issued_at": record.issued_at.isoformat(),
        "file": record.file,
    }


def _record_from_line(ca: str, line: dict[str, Any]) -> IssuedRecord:
    return IssuedRecord(
        ca=ca,
        serial=int(line["serial"], 16),
        kind=line["kind"],
        subject=line["subject"],
        names=tuple(line["names"]),
        usages=tuple(line["usages"]),
        not_before=dt.datetime.fromisoformat(line["not_before"]),
        not_after=dt.datetime.fromisoformat(line["not_after"]),
        host=line["host"],
        cert_name=line["cert_name"],
        key_type=line["key_type"],
        spki_sha256=line["spki_sha256"],
        issued_at=dt.datetime.fromisoformat(line["issued_at"]),
        file=line["file"],
    )


@dataclass
class _Index:
    """In-memory view of one record.jsonl, extended incrementally by reading new lines."""

    inode: int = -1
    offset: int = 0
    records: dict[int, IssuedRecord] = field(default_factory=dict)

    def refresh(self, ca: str, path: Path) -> None:
        try:
            with path.open("rb") as f:
                st = os.fstat(f.fileno())
                if st.st_ino != self.inode or st.st_size < self.offset:
                    # A different record file (the CA was replaced): start over.
                    self.inode, self.offset, self.records = st.st_ino, 0, {}
                f.seek(self.offset)
                data = f.read()
        except OSError as exc:
            raise CAError(
                f"cannot read the record: {exc.strerror}", ca=ca, path=path, action="reading record"
            ) from None
        # Only whole lines: a writer may be appending right now, or may have died mid-line.
        end = data.rfind(b"\n") + 1
        for number, raw in enumerate(data[:end].splitlines()):
            if raw.strip():
                self._apply(ca, path, raw, number)
        self.offset += end

    def _apply(self, ca: str, path: Path, raw: bytes, number: int) -> None:
        try:
            line = json.loads(raw)
            if line["event"] == "issued":
                record = _record_from_line(ca, line)
                self.records[record.serial] = record
            elif line["event"] == "revoked":
                serial = int(line["serial"], 16)
                self.records[serial] = replace(
                    self.records[serial],
                    revoked_at=dt.datetime.fromisoformat(line["revoked_at"]),
                    revocation_reason=line["reason"],
                )
        except (ValueError, KeyError, TypeError) as exc:
            raise CAError(
                f"corrupt line at byte offset {self.offset} (+{number} lines): {exc!r}",
                ca=ca,
                path=path,
                action="reading record",
            ) from None


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CAInfo:
    """What the store knows about one CA (no key material)."""

    name: str
    parent: str | None
    key_type: str
    subject: str
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    path_length: int | None
    constraints: DNSConstraints
    key_encrypted: bool
    imported: bool
    spki_sha256: str
    can_sign_crl: bool
    cert_pem: bytes


@dataclass(frozen=True)
class Issued:
    """A newly issued certificate, already durably recorded."""

    ca: str
    serial: int
    not_after: dt.datetime
    cert_pem: bytes
    chain_pem: bytes  # intermediates, issuing CA first; the root left out
    bundle_pem: bytes  # the intermediates and the root
    record: IssuedRecord

    @property
    def fullchain_pem(self) -> bytes:
        """Certificate followed by the intermediates (what a TLS server sends)."""
        return self.cert_pem + self.chain_pem


@dataclass(frozen=True)
class _LoadedCA:
    name: str
    cert: x509.Certificate
    key: PrivateKey | None  # None when loaded for its certificate only
    chain: tuple[x509.Certificate, ...]  # this CA's certificate first, the root last


# --- file helpers ----------------------------------------------------------------------------


def _make_dir(path: Path) -> None:
    path.mkdir(mode=0o700)
    os.chmod(path, 0o700)  # mkdir's mode is reduced by the umask; the store wants exactly 0700


def _repair_torn_tail(fd: int) -> None:
    # A process killed mid-append leaves a partial last line. That certificate was never handed
    # out (the line was not yet durable), so cutting it off loses nothing, and keeps the next
    # line from being glued to it.
    size = os.fstat(fd).st_size
    pos = size
    while pos > 0:
        start = max(0, pos - 4096)
        chunk = os.pread(fd, pos - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            cut = start + newline + 1
            break
        pos = start
    else:
        cut = 0
    if cut != size:
        os.ftruncate(fd, cut)


def _append_lines(path: Path, lines: Sequence[dict[str, Any]]) -> None:
    """Append JSON lines and fsync before returning (the record is the source of truth)."""
    data = b"".join(json.dumps(line, separators=(",", ":")).encode() + b"\n" for line in lines)
    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    try:
        _repair_torn_tail(fd)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


# One in-process lock per lock file, shared by every CAStore instance on the same directory.
# It is taken first, then the flock: two greenlets of one process must never both wait in
# flock (the second would block the whole hub while the first cannot run to release it). The
# locked sections never yield (no network, no gevent-patched calls), so a greenlet holding the
# lock always finishes before another one runs.
_PROCESS_LOCKS: dict[str, threading.RLock] = {}
_PROCESS_LOCKS_GUARD = threading.Lock()


def _process_lock(path: Path) -> threading.RLock:
    key = os.path.abspath(path)
    with _PROCESS_LOCKS_GUARD:
        lock = _PROCESS_LOCKS.get(key)
        if lock is None:
            lock = _PROCESS_LOCKS[key] = threading.RLock()
        return lock


@contextlib.contextmanager
def _io_errors(ca: str, path: Path, action: str) -> Iterator[None]:
    """Turn a file system failure into a CAError that says what was being written."""
    try:
        yield
    except OSError as exc:
        where = exc.filename or path
        raise CAError(f"{exc.strerror or exc}", ca=ca, path=where, action=action) from None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive against this process's threads/greenlets and against other processes."""
    with _process_lock(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock


# --- certificate building (pure) -------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def random_serial() -> int:
    """A random positive serial of exactly 128 bits (top bit set, 127 random bits)."""
    return secrets.randbits(127) | (1 << 127)


def _subject(common_name: str, organization: str | None) -> x509.Name:
    attributes = []
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _ski(public_key: PublicKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(public_key)


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(_public_key(issuer))
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _public_key(cert: x509.Certificate) -> PublicKey:
    key = cert.public_key()
    key_type_of(key)  # raises KeyTypeError for kinds pkinfra does not handle
    return key  # type: ignore[return-value]


def build_ca_certificate(
    *,
    subject: x509.Name,
    public_key: PublicKey,
    issuer_cert: x509.Certificate | None,
    issuer_key: PrivateKey,
    serial: int,
    not_before: dt.datetime,
    not_after: dt.datetime,
    path_length: int | None,
    constraints: DNSConstraints,
) -> x509.Certificate:
    """A CA certificate: self-signed when `issuer_cert` is None, else signed by that CA."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert is not None else subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(_ski(public_key), critical=False)
    )
    if issuer_cert is not None:
        builder = builder.add_extension(_aki(issuer_cert), critical=False)
    else:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
        builder = builder.add_extension(aki, critical=False)
    extension = _name_constraints_extension(constraints)
    if extension is not None:
        builder = builder.add_extension(extension, critical=True)
    return builder.sign(issuer_key, signature_hash(key_type_of(issuer_key)))


def build_leaf_certificate(
    *,
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    public_key: PublicKey,
    names: Sequence[str],
    usages: Iterable[str],
    serial: int,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.Certificate:
    """An end-entity certificate for `names` (already checked) signed by the CA key."""
    is_rsa = key_type_of(public_key).startswith("rsa-")
    # CN is limited to 64 characters; a longer first name goes only in the SAN (made critical,
    # as RFC 5280 requires for an empty subject).
    cn_fits = len(names[0]) <= 64
    subject = _subject(names[0], None) if cn_fits else x509.Name([])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                # RSA key exchange (TLS 1.2 without ECDHE) encrypts with the certificate's key.
                key_encipherment=is_rsa,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([USAGES[u] for u in sorted(usages)]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=not cn_fits
        )
        .add_extension(_ski(public_key), critical=False)
        .add_extension(_aki(ca_cert), critical=False)
    )
    return builder.sign(ca_key, signature_hash(key_type_of(ca_key)))


def load_csr(csr_pem: bytes, *, expected_spki_sha256: str | None = None) -> PublicKey:
    """The public key of a PEM CSR whose signature is valid; ValueError says what is wrong.

    Nothing else of the CSR is used: names and usages come from the inventory.
    """
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise ValueError("not a PEM certificate signing request") from None
    try:
        public_key = csr.public_key()
        key_type_of(public_key)
    except (KeyTypeError, ValueError) as exc:
        raise ValueError(f"CSR key not supported: {exc}") from None
    if not csr.is_signature_valid:
        raise ValueError("CSR signature is invalid (the CSR was not made with its key)")
    if expected_spki_sha256 is not None and spki_sha256(public_key) != expected_spki_sha256:  # type: ignore[arg-type]
        raise ValueError("CSR does not match the host key (public key fingerprints differ)")
    return public_key  # type: ignore[return-value]


def _has_crl_sign(cert: x509.Certificate) -> bool:
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True  # no keyUsage extension means no restriction
    return usage.crl_sign


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def _dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(san.get_values_for_type(x509.DNSName))


def _usages_of(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(name for name, oid in USAGES.items() if oid in eku)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _parse_reason(reason: str | x509.ReasonFlags) -> x509.ReasonFlags:
    if isinstance(reason, x509.ReasonFlags):
        return reason
    for flag in x509.ReasonFlags:
        if reason in (flag.name, flag.value):
            return flag
    raise CAError(f"unknown revocation reason {reason!r}: one of {', '.join(REVOCATION_REASONS)}")


def parse_serial(value: int | str) -> int:
    """A serial given as an int or as hex text (`0x`, colons and case allowed)."""
    if isinstance(value, int):
        return value
    text = value.strip().lower().removeprefix("0x").replace(":", "")
    try:
        return int(text, 16)
    except ValueError:
        raise CAError(f"serial {value!r} is not a hexadecimal number") from None


# --- the store -------------------------------------------------------------------------------


class CAStore:
    """A directory of CAs: create, import, sign, record, revoke, publish CRLs.

    Safe to share between greenlets and threads of one process, and between processes (every
    write to a CA happens under its lock file). Loaded CA keys are cached in memory, keyed by a
    keyed hash of the passphrase, so a wrong passphrase is never accepted from the cache.
    """

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self._indexes: dict[str, _Index] = {}
        self._cache: dict[tuple[str, bytes, tuple[int, ...]], _LoadedCA] = {}
        self._cache_salt = secrets.token_bytes(32)

    # paths

    def _ca_dir(self, name: str) -> Path:
        if not _CA_NAME.fullmatch(name):
            raise CAError(
                f"invalid CA name {name!r}: lower-case letters, digits, '.', '_', '-'",
                ca=name,
            )
        return self.directory / name

    def _existing_ca_dir(self, name: str, action: str) -> Path:
        path = self._ca_dir(name)
        if not (path / CERT_FILE).is_file():
            raise CAError("unknown CA (not in the store)", ca=name, path=path, action=action)
        return path

    def _ensure_store(self) -> None:
        if not self.directory.is_dir():
            self.directory.mkdir(mode=0o700, parents=True)
            os.chmod(self.directory, 0o700)

    # reading CAs

    def names(self) -> list[str]:
        """Names of the CAs in the store, sorted."""
        if not self.directory.is_dir():
            return []
        return sorted(
            p.name
            for p in self.directory.iterdir()
            if _CA_NAME.fullmatch(p.name) and (p / CERT_FILE).is_file()
        )

    def ca(self, name: str) -> CAInfo:
        """Everything about one CA but its key."""
        path = self._existing_ca_dir(name, "reading CA")
        meta = self._meta(name, path)
        cert = self._load_cert(name, path / CERT_FILE)
        basic = _basic_constraints(cert)
        return CAInfo(
            name=name,
            parent=meta.get("parent"),
            key_type=key_type_of(cert.public_key()),
            subject=cert.subject.rfc4514_string(),
            serial=cert.serial_number,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            path_length=basic.path_length if basic else None,
            constraints=DNSConstraints.of(cert),
            key_encrypted=bool(meta.get("key_encrypted", True)),
            imported=bool(meta.get("imported", False)),
            spki_sha256=spki_sha256(_public_key(cert)),
            can_sign_crl=_has_crl_sign(cert),
            cert_pem=_pem(cert),
        )

    def list_cas(self) -> list[CAInfo]:
        return [self.ca(name) for name in self.names()]

    def chain_pem(self, name: str) -> bytes:
        """The CA's certificate and its intermediates up to, not including, the root."""
        chain = self._load(name, None, with_key=False).chain
        return b"".join(_pem(c) for c in chain[:-1])

    def bundle_pem(self, name: str) -> bytes:
        """The CA's certificate and every ancestor, root included (a trust bundle)."""
        return b"".join(_pem(c) for c in self._load(name, None, with_key=False).chain)

    def root_pem(self, name: str) -> bytes:
        """The root certificate of the CA's hierarchy."""
        return _pem(self._load(name, None, with_key=False).chain[-1])

    def _meta(self, name: str, path: Path) -> dict[str, Any]:
        try:
            meta: dict[str, Any] = json.loads((path / META_FILE).read_bytes())
        except (OSError, ValueError) as exc:
            raise CAError(
                f"unreadable metadata: {exc}", ca=name, path=path / META_FILE, action="reading CA"
            ) from None
        return meta

    def _load_cert(self, name: str, path: Path) -> x509.Certificate:
        try:
            return x509.load_pem_x509_certificate(path.read_bytes())
        except OSError as exc:
            raise CAError(
                f"cannot read certificate: {exc.strerror}", ca=name, path=path, action="loading CA"
            ) from None
        except ValueError:
            raise CAError(
                "not a PEM certificate (corrupt?)", ca=name, path=path, action="loading CA"
            ) from None

    def _load(self, name: str, passphrase: Passphrase, *, with_key: bool) -> _LoadedCA:
        """A CA with its chain (and its key when `with_key`), from the cache when unchanged."""
        path = self._existing_ca_dir(name, "loading CA")
        secret = _passphrase_bytes(passphrase) if with_key else None
        stamp = _stamp(path / CERT_FILE, path / KEY_FILE, path / META_FILE)
        tag = hmac.new(self._cache_salt, secret or b"", hashlib.sha256).digest()
        cache_key = (name, tag if with_key else b"", stamp)
        parent = self._meta(name, path).get("parent")
        # Ancestors come from their own (cached) loads, so a replaced parent is seen at once.
        ancestors = self._load(parent, None, with_key=False).chain if parent else ()
        cached = self._cache.get(cache_key)
        if cached is not None and cached.chain[1:] == ancestors:
            return cached
        cert = self._load_cert(name, path / CERT_FILE)
        key = _load_ca_key(name, path / KEY_FILE, cert, secret) if with_key else None
        loaded = _LoadedCA(name=name, cert=cert, key=key, chain=(cert, *ancestors))
        self._cache[cache_key] = loaded
        return loaded

    # creating CAs

    def create_root(
        self,
        name: str,
        *,
        key_type: str = "ec-p256",
        validity_days: int = 3650,
        common_name: str | None = None,
        organization: str | None = None,
        path_length: int | None = None,
        permitted: Sequence[str] = (),
        excluded: Sequence[str] = (),
        passphrase: Passphrase = None,
        unencrypted: bool = False,
        replace: bool = False,
    ) -> CAInfo:
        """Make a self-signed root CA. Its key is encrypted with `passphrase` unless
        `unencrypted` (and then no passphrase may be given)."""
        action = "creating root CA"
        self._check_new(name, replace, action)
        secret = _storage_secret(name, passphrase, unencrypted, action)
        constraints = _checked_constraints(name, permitted, excluded, action)
        _check_path_length(name, path_length, action)
        _check_days(name, validity_days, action)
        try:
            key = generate_private_key(key_type)
        except KeyTypeError as exc:
            raise CAError(str(exc), ca=name, action=action) from None
        now = _now()
        cert = build_ca_certificate(
            subject=_subject(common_name or name, organization),
            public_key=key.public_key(),
            issuer_cert=None,
            issuer_key=key,
            serial=random_serial(),
            not_before=now - _BACKDATE,
            not_after=now + dt.timedelta(days=validity_days),
            path_length=path_length,
            constraints=constraints,
        )
        meta = _meta_for(None, key_type_of(key), secret is not None, imported=False)
        self._install(name, cert, key, secret, meta, replace=replace, action=action)
        return self.ca(name)

    def create_sub_ca(
        self,
        name: str,
        parent: str,
        *,
        parent_passphrase: Passphrase,
        key_type: str = "ec-p256",
        validity_days: int = 1825,
        common_name: str | None = None,
        organization: str | None = None,
        path_length: int | None = 0,
        permitted: Sequence[str] = (),
        excluded: Sequence[str] = (),
        passphrase: Passphrase = None,
        unencrypted: bool = False,
        replace: bool = False,
    ) -> CAInfo:
        """Make a CA signed by `parent` (itself a root or a sub-CA). Refused when the new CA
        would be allowed more than its ancestors allow (path length, name constraints) or would
        outlive its parent. The issuance is recorded in the parent's record."""
        action = f"creating sub-CA under {parent}"
        self._check_new(name, replace, action)
        secret = _storage_secret(name, passphrase, unencrypted, action)
        constraints = _checked_constraints(name, permitted, excluded, action)
        _check_path_length(name, path_length, action)
        _check_days(name, validity_days, action)
        issuer = self._load(parent, parent_passphrase, with_key=True)
        _check_sub_ca_allowed(name, issuer, path_length, constraints, action)
        try:
            key = generate_private_key(key_type)
        except KeyTypeError as exc:
            raise CAError(str(exc), ca=name, action=action) from None
        now = _now()
        not_after = now + dt.timedelta(days=validity_days)
        if not_after > issuer.cert.not_valid_after_utc:
            raise CAError(
                f"would outlive its parent {parent} (valid until "
                f"{issuer.cert.not_valid_after_utc:%Y-%m-%d}): ask for fewer days",
                ca=name,
                action=action,
            )
        subject = _subject(common_name or name, organization)
        if subject == issuer.cert.subject:
            raise CAError("subject must differ from the parent's", ca=name, action=action)

        def build(serial: int) -> x509.Certificate:
            assert issuer.key is not None
            return build_ca_certificate(
                subject=subject,
                public_key=key.public_key(),
                issuer_cert=issuer.cert,
                issuer_key=issuer.key,
                serial=serial,
                not_before=now - _BACKDATE,
                not_after=not_after,
                path_length=path_length,
                constraints=constraints,
            )

        cert, _ = self._issue(issuer, build, host="", cert_name=name, kind="ca", action=action)
        meta = _meta_for(parent, key_type_of(key), secret is not None, imported=False)
        self._install(name, cert, key, secret, meta, replace=replace, action=action)
        return self.ca(name)

    def import_ca(
        self,
        name: str,
        cert_pem: bytes | Path,
        key_pem: bytes | Path,
        *,
        passphrase: Passphrase = None,
        source_passphrase: Passphrase = None,
        unencrypted: bool = False,
        parent: str | None = None,
        replace: bool = False,
    ) -> CAInfo:
        """Take in an existing CA (e.g. mkcert's rootCA.pem + rootCA-key.pem).

        The certificate is stored unchanged, so everything it issued keeps validating; the key
        (PKCS#1, SEC1 or PKCS#8, encrypted with `source_passphrase` or not) is stored as PKCS#8
        encrypted with `passphrase`. A CA that is not self-signed needs its issuer in the store
        (`parent`, or found by signature).
        """
        action = "importing CA"
        self._check_new(name, replace, action)
        secret = _storage_secret(name, passphrase, unencrypted, action)
        cert = _read_import_cert(name, cert_pem, action)
        key = _read_import_key(name, key_pem, _passphrase_bytes(source_passphrase), action)
        _check_key_matches(name, cert, key, None, action)
        _check_is_ca(name, cert, action)
        parent = self._find_issuer(name, cert, parent, action)
        meta = _meta_for(parent, key_type_of(key), secret is not None, imported=True)
        self._install(name, cert, key, secret, meta, replace=replace, action=action)
        return self.ca(name)

    def _find_issuer(
        self, name: str, cert: x509.Certificate, parent: str | None, action: str
    ) -> str | None:
        if _self_signed(cert):
            if parent is not None:
                raise CAError(
                    f"is self-signed, but parent {parent} was given", ca=name, action=action
                )
            return None
        candidates = [parent] if parent is not None else self.names()
        for candidate in candidates:
            issuer = self._load(candidate, None, with_key=False).cert
            with contextlib.suppress(ValueError, TypeError, InvalidSignature):
                cert.verify_directly_issued_by(issuer)
                return candidate
        if parent is not None:
            raise CAError(f"was not issued by CA {parent}", ca=name, action=action)
        raise CAError(
            f"its issuer ({cert.issuer.rfc4514_string()}) is not in the store: import it first",
            ca=name,
            action=action,
        )

    def _check_new(self, name: str, replace: bool, action: str) -> None:
        path = self._ca_dir(name)
        if path.exists() and not replace:
            raise CAError(
                "already exists (pass replace=True to replace it)",
                ca=name,
                path=path,
                action=action,
            )

    def _install(
        self,
        name: str,
        cert: x509.Certificate,
        key: PrivateKey,
        secret: bytes | None,
        meta: dict[str, Any],
        *,
        replace: bool,
        action: str,
    ) -> None:
        """Build the CA folder beside, then rename it into place (an existing CA is only moved
        aside, to `.<name>.replaced-<time>`, and only when `replace`)."""
        self._ensure_store()
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(secret)
            if secret is not None
            else serialization.NoEncryption()
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
        meta_bytes = json.dumps(meta, indent=2).encode() + b"\n"
        final = self._ca_dir(name)
        staging = self.directory / f".{name}.new-{secrets.token_hex(4)}"
        with _locked(self.directory / LOCK_FILE), _io_errors(name, final, action):
            if final.exists() and not replace:
                raise CAError("already exists", ca=name, path=final, action=action)
            try:
                _make_dir(staging)
                _make_dir(staging / CERTS_DIR)
                write_atomic(staging / KEY_FILE, key_pem, 0o600, sync_dir=False)
                write_atomic(staging / CERT_FILE, _pem(cert), sync_dir=False)
                write_atomic(staging / META_FILE, meta_bytes, sync_dir=False)
                write_atomic(staging / RECORD_FILE, b"", 0o600, sync_dir=False)
                fsync_dir(staging / CERTS_DIR)
                fsync_dir(staging)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            if final.exists():
                aside = f".{name}.replaced-{_now():%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"
                os.rename(final, self.directory / aside)
            os.rename(staging, final)
            fsync_dir(self.directory)
        self._indexes.pop(name, None)

    # issuing

    def sign_csr(
        self,
        ca_name: str,
        csr_pem: bytes,
        *,
        names: Sequence[str],
        usages: Iterable[str],
        validity_days: int,
        host: str,
        cert_name: str,
        passphrase: Passphrase,
        expected_spki_sha256: str | None = None,
    ) -> Issued:
        """Sign a host's CSR: only its public key is used; `names` become the SANs (the first
        also the CN), `usages` ("server", "client") the extended key usage. The certificate is
        written to the store and recorded durably before it is returned. Validity is cut to the
        CA's own expiry."""
        action = f"signing CSR for {host}/{cert_name}"
        wanted = _checked_names(ca_name, names, action)
        wanted_usages = _checked_usages(ca_name, usages, action)
        _check_days(ca_name, validity_days, action)
        if not host or not cert_name:
            raise CAError("host and cert_name must not be empty", ca=ca_name, action=action)
        issuer = self._load(ca_name, passphrase, with_key=True)
        try:
            public_key = load_csr(csr_pem, expected_spki_sha256=expected_spki_sha256)
        except ValueError as exc:
            raise CAError(str(exc), ca=ca_name, action=action) from None
        _check_names_allowed(issuer, wanted, action)
        now = _now()
        _check_ca_current(issuer, now, action)
        not_after = min(now + dt.timedelta(days=validity_days), issuer.cert.not_valid_after_utc)

        def build(serial: int) -> x509.Certificate:
            assert issuer.key is not None
            return build_leaf_certificate(
                ca_cert=issuer.cert,
                ca_key=issuer.key,
                public_key=public_key,
                names=wanted,
                usages=wanted_usages,
                serial=serial,
                not_before=now - _BACKDATE,
                not_after=not_after,
            )

        cert, record = self._issue(
            issuer, build, host=host, cert_name=cert_name, kind="leaf", action=action
        )
        chain = issuer.chain
        return Issued(
            ca=ca_name,
            serial=cert.serial_number,
            not_after=cert.not_valid_after_utc,
            cert_pem=_pem(cert),
            chain_pem=b"".join(_pem(c) for c in chain[:-1]),
            bundle_pem=b"".join(_pem(c) for c in chain),
            record=record,
        )

    def _issue(
        self,
        issuer: _LoadedCA,
        build: Any,
        *,
        host: str,
        cert_name: str,
        kind: str,
        action: str,
    ) -> tuple[x509.Certificate, IssuedRecord]:
        """Allocate a serial unique in the CA's record, build the certificate with it, write it
        and its record line durably: all under the CA's lock, nothing that yields inside."""
        path = self._ca_dir(issuer.name)
        with _locked(path / LOCK_FILE):
            index = self._refreshed(issuer.name)
            serial = random_serial()
            while serial in index.records:  # 2**-127 odds; the record is the authority
                serial = random_serial()
            cert: x509.Certificate = build(serial)
            record = _record_of(issuer.name, cert, host=host, cert_name=cert_name, kind=kind)
            # Certificate file first: a record line must never point at a missing file.
            with _io_errors(issuer.name, path, action):
                write_atomic(path / record.file, _pem(cert))
                _append_lines(path / RECORD_FILE, [_record_line(record)])
            self._refreshed(issuer.name)
        return cert, record

    def adopt_issued(
        self, ca_name: str, entries: Iterable[tuple[bytes, str, str]]
    ) -> list[IssuedRecord]:
        """Record certificates the CA issued outside the store, as (PEM, host, cert name).

        For a CA imported with certificates already out there (so they can be listed and
        revoked), and for building large stores quickly: one fsync for the whole batch.
        """
        action = "adopting issued certificates"
        issuer = self._load(ca_name, None, with_key=False)
        path = self._ca_dir(ca_name)
        parsed: list[tuple[x509.Certificate, str, str]] = []
        for pem, host, cert_name in entries:
            try:
                cert = x509.load_pem_x509_certificate(pem)
                cert.verify_directly_issued_by(issuer.cert)
            except (ValueError, TypeError, InvalidSignature):
                raise CAError(
                    "a certificate is not PEM or was not issued by this CA",
                    ca=ca_name,
                    action=action,
                ) from None
            parsed.append((cert, host, cert_name))
        with _locked(path / LOCK_FILE):
            index = self._refreshed(ca_name)
            records: list[IssuedRecord] = []
            for cert, host, cert_name in parsed:
                if cert.serial_number in index.records:
                    raise CAError(
                        f"serial {cert.serial_number:x} is already recorded",
                        ca=ca_name,
                        action=action,
                    )
                kind = "ca" if (bc := _basic_constraints(cert)) and bc.ca else "leaf"
                records.append(_record_of(ca_name, cert, host=host, cert_name=cert_name, kind=kind))
            with _io_errors(ca_name, path, action):
                for record, (cert, _, _) in zip(records, parsed, strict=True):
                    write_atomic(path / record.file, _pem(cert), sync_dir=False)
                fsync_dir(path / CERTS_DIR)
                _append_lines(path / RECORD_FILE, [_record_line(r) for r in records])
            self._refreshed(ca_name)
        return records

    # records

    def _refreshed(self, name: str) -> _Index:
        path = self._existing_ca_dir(name, "reading record")
        with _process_lock(path / LOCK_FILE):
            index = self._indexes.setdefault(name, _Index())
            index.refresh(name, path / RECORD_FILE)
            return index

    def list_issued(self, ca_name: str | None = None) -> list[IssuedRecord]:
        """Every recorded certificate (of one CA or all), in issuance order per CA."""
        names = [ca_name] if ca_name is not None else self.names()
        out: list[IssuedRecord] = []
        for name in names:
            out.extend(self._refreshed(name).records.values())
        return out

    def get_record(self, ca_name: str, serial: int | str) -> IssuedRecord:
        number = parse_serial(serial)
        record = self._refreshed(ca_name).records.get(number)
        if record is None:
            raise CAError(f"no certificate with serial {number:x}", ca=ca_name)
        return record

    def certificate_pem(self, ca_name: str, serial: int | str) -> bytes:
        """The PEM of a certificate the CA issued."""
        record = self.get_record(ca_name, serial)
        path = self._ca_dir(ca_name) / record.file
        try:
            return path.read_bytes()
        except OSError as exc:
            raise CAError(f"cannot read: {exc.strerror}", ca=ca_name, path=path) from None

    def find_current(
        self, host: str, cert_name: str, *, ca_name: str | None = None
    ) -> IssuedRecord | None:
        """The newest valid (not revoked, not expired) certificate recorded for a host's
        certificate `cert_name`, or None."""
        now = _now()
        candidates = [
            r
            for r in self.list_issued(ca_name)
            if r.host == host and r.cert_name == cert_name and r.status_at(now) == "valid"
        ]
        # Ties (same timestamps) go to the later line of the record.
        newest = max(enumerate(candidates), key=lambda p: (p[1].issued_at, p[0]), default=None)
        return newest[1] if newest is not None else None

    # revocation

    def revoke(
        self, ca_name: str, serial: int | str, reason: str | x509.ReasonFlags = "unspecified"
    ) -> IssuedRecord:
        """Mark a certificate revoked in the record (durably). Revoking twice changes nothing.
        The CRL carries it once `crl()` is next called."""
        action = "revoking"
        number = parse_serial(serial)
        flag = _parse_reason(reason)
        path = self._existing_ca_dir(ca_name, action)
        with _locked(path / LOCK_FILE):
            record = self._refreshed(ca_name).records.get(number)
            if record is None:
                raise CAError(f"no certificate with serial {number:x}", ca=ca_name, action=action)
            if record.revoked_at is not None:
                return record
            line = {
                "event": "revoked",
                "serial": f"{number:x}",
                "revoked_at": _now().isoformat(),
                "reason": flag.name,
            }
            with _io_errors(ca_name, path, action):
                _append_lines(path / RECORD_FILE, [line])
            return self._refreshed(ca_name).records[number]

    def crl(self, ca_name: str, passphrase: Passphrase, next_update_days: int = 7) -> bytes:
        """Issue the CA's CRL from its record, write it to the store and return its PEM."""
        action = "issuing CRL"
        if next_update_days < 1:
            raise CAError("next_update_days must be at least 1", ca=ca_name, action=action)
        issuer = self._load(ca_name, passphrase, with_key=True)
        assert issuer.key is not None
        if not _has_crl_sign(issuer.cert):
            raise CAError(
                "the CA certificate's keyUsage lacks cRLSign: verifiers would reject its CRLs",
                ca=ca_name,
                action=action,
            )
        path = self._ca_dir(ca_name)
        now = _now()
        with _locked(path / LOCK_FILE):
            revoked = [r for r in self._refreshed(ca_name).records.values() if r.revoked_at]
            number = _crl_number(path / CRL_FILE) + 1
            builder = (
                x509.CertificateRevocationListBuilder()
                .issuer_name(issuer.cert.subject)
                .last_update(now - _BACKDATE)
                .next_update(now + dt.timedelta(days=next_update_days))
                .add_extension(x509.CRLNumber(number), critical=False)
                .add_extension(_aki(issuer.cert), critical=False)
            )
            for record in revoked:
                builder = builder.add_revoked_certificate(_revoked_entry(record))
            crl = builder.sign(issuer.key, signature_hash(key_type_of(issuer.key)))
            pem = crl.public_bytes(serialization.Encoding.PEM)
            with _io_errors(ca_name, path, action):
                write_atomic(path / CRL_FILE, pem)
        return pem

    def current_crl(self, ca_name: str) -> bytes | None:
        """The CRL last written for the CA, or None."""
        path = self._existing_ca_dir(ca_name, "reading CRL") / CRL_FILE
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def crl_due(self, ca_name: str, within_days: float) -> bool:
        """Whether the CA's CRL must be issued again: missing, unreadable, not signed by this CA,
        expiring within `within_days`, or missing a revocation made since. (Always True for a
        CA that cannot sign CRLs: check `CAInfo.can_sign_crl` first.)"""
        path = self._existing_ca_dir(ca_name, "checking CRL")
        pem = self.current_crl(ca_name)
        if pem is None:
            return True
        try:
            crl = x509.load_pem_x509_crl(pem)
        except ValueError:
            return True
        cert = self._load_cert(ca_name, path / CERT_FILE)
        if not crl.is_signature_valid(_public_key(cert)):
            return True
        next_update = crl.next_update_utc
        if next_update is None or next_update - _now() <= dt.timedelta(days=within_days):
            return True
        listed = {entry.serial_number for entry in crl}
        revoked = {r.serial for r in self._refreshed(ca_name).records.values() if r.revoked_at}
        return listed != revoked


# --- helpers of the store --------------------------------------------------------------------


def _stamp(*paths: Path) -> tuple[int, ...]:
    """Identity of files' current versions: a replaced CA invalidates its cache entry."""
    out: list[int] = []
    for path in paths:
        try:
            st = path.stat()
        except FileNotFoundError:
            out += [0, 0, 0]
            continue
        out += [st.st_ino, st.st_mtime_ns, st.st_size]
    return tuple(out)


def _meta_for(
    parent: str | None, key_type: KeyType, encrypted: bool, *, imported: bool
) -> dict[str, Any]:
    return {
        "parent": parent,
        "key_type": key_type,
        "key_encrypted": encrypted,
        "imported": imported,
        "created_at": _now().isoformat(),
    }


def _storage_secret(
    name: str, passphrase: Passphrase, unencrypted: bool, action: str
) -> bytes | None:
    if unencrypted:
        if passphrase is not None:
            raise CAError(
                "both a passphrase and unencrypted=True given: choose one", ca=name, action=action
            )
        return None
    secret = _passphrase_bytes(passphrase)
    if secret is None:
        raise CAError(
            "a passphrase is required to encrypt the CA key (or say unencrypted=True)",
            ca=name,
            action=action,
        )
    return secret


def _checked_constraints(
    name: str, permitted: Sequence[str], excluded: Sequence[str], action: str
) -> DNSConstraints:
    if isinstance(permitted, str) or isinstance(excluded, str):
        raise CAError("permitted/excluded are lists of domains, not one string", ca=name)
    try:
        return DNSConstraints(
            permitted=_constraint_subtrees(permitted, "permitted"),
            excluded=_constraint_subtrees(excluded, "excluded"),
        )
    except CAError as exc:
        raise CAError(exc.message, ca=name, action=action) from None


def _check_path_length(name: str, path_length: int | None, action: str) -> None:
    if path_length is not None and path_length < 0:
        raise CAError("path length must be >= 0 or None", ca=name, action=action)


def _check_days(name: str, days: int, action: str) -> None:
    if days < 1:
        raise CAError(f"validity must be at least 1 day, got {days}", ca=name, action=action)


def _check_sub_ca_allowed(
    name: str,
    issuer: _LoadedCA,
    path_length: int | None,
    constraints: DNSConstraints,
    action: str,
) -> None:
    """Refuse a sub-CA that would be allowed more than any of its ancestors allows."""
    # The chain's i-th CA (0 = parent) will be followed by i intermediates plus the new CA, so
    # it leaves room for pathlen_i - (i + 1) more levels below the new CA.
    room: int | None = None
    for depth, cert in enumerate(issuer.chain):
        basic = _basic_constraints(cert)
        if basic is not None and basic.path_length is not None:
            left = basic.path_length - (depth + 1)
            room = left if room is None else min(room, left)
    if room is not None and room < 0:
        raise CAError(
            f"parent {issuer.name}'s path length allows no further CA below it",
            ca=name,
            action=action,
        )
    if room is not None and (path_length is None or path_length > room):
        raise CAError(
            f"path length {path_length} is wider than the parent allows (at most {room})",
            ca=name,
            action=action,
        )
    for cert in issuer.chain:
        _check_subtrees_within(name, DNSConstraints.of(cert), constraints, cert, action)


def _check_subtrees_within(
    name: str,
    ancestor: DNSConstraints,
    child: DNSConstraints,
    ancestor_cert: x509.Certificate,
    action: str,
) -> None:
    who = ancestor_cert.subject.rfc4514_string()
    if ancestor.permitted:
        if not child.permitted:
            raise CAError(
                f"needs permitted subtrees within those of {who} ({', '.join(ancestor.permitted)})",
                ca=name,
                action=action,
            )
        for subtree in child.permitted:
            if not any(dns_names.subtree_within(subtree, p) for p in ancestor.permitted):
                raise CAError(
                    f"permitted subtree {subtree} is wider than {who} allows "
                    f"({', '.join(ancestor.permitted)})",
                    ca=name,
                    action=action,
                )
    for subtree in child.permitted:
        hit = next((e for e in ancestor.excluded if dns_names.subtree_within(subtree, e)), None)
        if hit is not None:
            raise CAError(
                f"permitted subtree {subtree} lies in {who}'s excluded subtree {hit}",
                ca=name,
                action=action,
            )


def _checked_names(ca: str, names: Sequence[str], action: str) -> list[str]:
    if isinstance(names, str) or not names:
        raise CAError("names must be a non-empty list of DNS names", ca=ca, action=action)
    try:
        return list(dict.fromkeys(dns_names.normalize(n, wildcard=True) for n in names))
    except ValueError as exc:
        raise CAError(str(exc), ca=ca, action=action) from None


def _checked_usages(ca: str, usages: Iterable[str], action: str) -> set[str]:
    wanted = set(usages) if not isinstance(usages, str) else {usages}
    unknown = wanted - USAGES.keys()
    if not wanted or unknown:
        raise CAError(
            f"usages must be a non-empty subset of {sorted(USAGES)}, got {sorted(wanted)}",
            ca=ca,
            action=action,
        )
    return wanted


def _check_names_allowed(issuer: _LoadedCA, names: Sequence[str], action: str) -> None:
    """Every CA of the chain constrains what the issuing CA may sign."""
    for cert in issuer.chain:
        constraints = DNSConstraints.of(cert)
        for name in names:
            why = constraints.refusal(name)
            if why is not None:
                who = cert.subject.rfc4514_string()
                raise CAError(f"name {why} of {who}", ca=issuer.name, action=action)


def _check_ca_current(issuer: _LoadedCA, now: dt.datetime, action: str) -> None:
    for cert in issuer.chain:
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
            raise CAError(
                f"{cert.subject.rfc4514_string()} is not valid now (valid "
                f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d})",
                ca=issuer.name,
                action=action,
            )


def _record_of(
    ca: str, cert: x509.Certificate, *, host: str, cert_name: str, kind: str
) -> IssuedRecord:
    public_key = _public_key(cert)
    serial = cert.serial_number
    return IssuedRecord(
        ca=ca,
        serial=serial,
        kind=kind,
        subject=cert.subject.rfc4514_string(),
        names=_dns_names(cert),
        usages=_usages_of(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        host=host,
        cert_name=cert_name,
        key_type=key_type_of(public_key),
        spki_sha256=spki_sha256(public_key),
        # Full precision (unlike certificate times) so renewals within a second keep their order.
        issued_at=dt.datetime.now(dt.UTC),
        file=f"{CERTS_DIR}/{serial:x}.pem",
    )


def _revoked_entry(record: IssuedRecord) -> x509.RevokedCertificate:
    assert record.revoked_at is not None
    builder = (
        x509.RevokedCertificateBuilder()
        .serial_number(record.serial)
        .revocation_date(record.revoked_at)
    )
    reason = x509.ReasonFlags[record.revocation_reason or "unspecified"]
    # RFC 5280: the reason code "unspecified" should be left out rather than written.
    if reason is not x509.ReasonFlags.unspecified:
        builder = builder.add_extension(x509.CRLReason(reason), critical=False)
    return builder.build()


def _crl_number(path: Path) -> int:
    """The number of the CRL on disk (0 when there is none), so CRL numbers only increase."""
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (OSError, ValueError, x509.ExtensionNotFound):
        return 0


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _read_source(name: str, source: bytes | Path, what: str, action: str) -> bytes:
    if isinstance(source, bytes):
        return source
    try:
        return source.read_bytes()
    except OSError as exc:
        raise CAError(
            f"cannot read the {what}: {exc.strerror}", ca=name, path=source, action=action
        ) from None


def _read_import_cert(name: str, source: bytes | Path, action: str) -> x509.Certificate:
    path = source if isinstance(source, Path) else None
    try:
        certs = x509.load_pem_x509_certificates(_read_source(name, source, "certificate", action))
    except ValueError:
        raise CAError("not a PEM certificate", ca=name, path=path, action=action) from None
    if len(certs) != 1:
        raise CAError(
            f"expected one certificate, found {len(certs)}", ca=name, path=path, action=action
        )
    return certs[0]


def _read_import_key(
    name: str, source: bytes | Path, secret: bytes | None, action: str
) -> PrivateKey:
    path = source if isinstance(source, Path) else None
    data = _read_source(name, source, "key", action)
    return _parse_private_key(data, secret, ca=name, path=path, action=action)


def _parse_private_key(
    data: bytes, secret: bytes | None, *, ca: str, path: Path | None, action: str
) -> PrivateKey:
    """Decrypt and parse a PEM private key; the errors tell wrong passphrase from corruption."""
    encrypted = (
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data
    )
    if encrypted and secret is None:
        raise CAError(
            "the key is encrypted and no passphrase was given", ca=ca, path=path, action=action
        )
    try:
        key = serialization.load_pem_private_key(data, secret if encrypted else None)
    except ValueError as exc:
        if encrypted and "password" in str(exc).lower():
            message = "wrong passphrase (or the encrypted key is damaged)"
        else:
            message = "the key file is corrupt or not a PEM private key"
        raise CAError(message, ca=ca, path=path, action=action) from None
    except (TypeError, UnsupportedAlgorithm):
        raise CAError(
            "unsupported or corrupt private key", ca=ca, path=path, action=action
        ) from None
    try:
        key_type_of(key)
    except KeyTypeError as exc:
        raise CAError(str(exc), ca=ca, path=path, action=action) from None
    return key  # type: ignore[return-value]


def _check_key_matches(
    name: str, cert: x509.Certificate, key: PrivateKey, path: Path | None, action: str
) -> None:
    if not key_matches(key, cert):
        raise CAError(
            "the CA certificate does not match its key", ca=name, path=path, action=action
        )


def _check_is_ca(name: str, cert: x509.Certificate, action: str) -> None:
    basic = _basic_constraints(cert)
    if basic is None or not basic.ca:
        raise CAError(
            "not a CA certificate (basicConstraints CA:TRUE missing)", ca=name, action=action
        )
    if cert.not_valid_after_utc <= _now():
        raise CAError(f"expired on {cert.not_valid_after_utc:%Y-%m-%d}", ca=name, action=action)
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.key_cert_sign:
        raise CAError("the CA certificate's keyUsage lacks keyCertSign", ca=name, action=action)


def _load_ca_key(name: str, path: Path, cert: x509.Certificate, secret: bytes | None) -> PrivateKey:
    action = "loading CA key"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CAError(
            f"cannot read the key: {exc.strerror}", ca=name, path=path, action=action
        ) from None
    key = _parse_private_key(data, secret, ca=name, path=path, action=action)
    _check_key_matches(name, cert, key, path, action)
    return key
