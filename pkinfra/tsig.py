"""TSIG secrets on the controller: one hmac-sha256 key per host, plus the transfer key.

Keys live as BIND key files (``key "name" { algorithm ...; secret "..."; };``) in the inventory's
``secrets_dir`` (0700), one file per key (0600), made here with ``os.urandom`` and never printed:
neither this module's return values nor its errors carry a secret. The same file is what the
primary includes and what the host's agent reads (``pkinfra.dnsupdate.TSIGKey.from_file``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pkinfra.agent.errors import PkinfraError
from pkinfra.agent.files import stage

ALGORITHM = "hmac-sha256"
SECRET_BYTES = 32
#: The key that signs notifies and zone transfers between the primary and its secondaries.
TRANSFER_KEY = "pkinfra-transfer"

_SAFE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")  # always fullmatch
#: A rotated key's name: ``k<generation>.<fqdn>``.
_ROTATED = re.compile(r"k(\d+)\.(.+)")


class TSIGError(PkinfraError):
    """A TSIG key file cannot be made or read; the text names the file, never the secret."""


def key_path(secrets_dir: Path, name: str) -> Path:
    """Where the key called ``name`` lives on the controller."""
    if not _SAFE_NAME.fullmatch(name):
        raise TSIGError(f"TSIG key name {name!r} is not usable as a file name")
    return secrets_dir / f"{name}.key"


def key_text(name: str, secret: str) -> str:
    """A key file as BIND's ``tsig-keygen`` writes it."""
    return f'key "{name}" {{\n\talgorithm {ALGORITHM};\n\tsecret "{secret}";\n}};\n'


def ensure_key(secrets_dir: Path, name: str, path: Path | None = None) -> Path:
    """The key file of ``name``, made (0600, in a 0700 directory) if it does not exist yet.

    An existing file is checked (it must hold exactly this key) but never replaced. The first
    writer wins: the new key is written whole beside, then hard-linked into place, which fails
    when another run (or thread) got there first; that run's key is kept and used. So two runs
    at once can never leave the primary and a host with different secrets. ``path`` overrides
    the file's place (a rotation's next key lives beside the current one).
    """
    path = path or key_path(secrets_dir, name)
    if not path.exists():
        secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        secret = base64.b64encode(os.urandom(SECRET_BYTES)).decode()
        # Staged whole, then linked (not renamed): a key made meanwhile by another run stays.
        tmp = stage(path, key_text(name, secret).encode(), 0o600)
        try:
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    check_key_file(path, name)
    return path


def check_key_file(path: Path, name: str) -> None:
    """Raise ``TSIGError`` unless ``path`` holds one valid key named ``name``."""
    from pkinfra.dnsupdate import DNSUpdateError, TSIGKey

    try:
        key = TSIGKey.from_file(path)
    except DNSUpdateError as exc:
        raise TSIGError(str(exc)) from None
    if key.name.to_text(omit_final_dot=True) != name:
        raise TSIGError(f"TSIG key file {path}: holds key {key.name}, expected {name}")
    if key.algorithm != ALGORITHM:
        raise TSIGError(f"TSIG key file {path}: algorithm {key.algorithm}, expected {ALGORITHM}")
    if path.stat().st_mode & 0o077:
        raise TSIGError(f"TSIG key file {path}: readable by group or others (chmod 600 it)")


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file (what the upload compares; not a secret)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- a host's key and its rotation --------------------------------------------------------------
#
# A host's current key lives in ``<fqdn>.key``; its name is the FQDN at first, ``k<N>.<fqdn>``
# after rotations (BIND cannot hold two keys of one name, so the next key needs a new one).
# ``pkinfra dns rotate-key HOST`` makes ``<fqdn>.next.key``; the next deploy gives the primary
# both keys and grants for both, then (checked: the primary accepts the next key) installs the
# next key on the host and records that in ``<fqdn>.next.installed``. ``--finish`` then makes
# the next key the current one, and the deploy after it removes the old key from the primary.
# At no moment does the host hold a key the primary does not accept.


@dataclass(frozen=True)
class HostKey:
    name: str
    path: Path


@dataclass(frozen=True)
class HostKeys:
    fqdn: str
    current: HostKey
    next: HostKey | None

    @property
    def names(self) -> list[str]:
        return [self.current.name] + ([self.next.name] if self.next else [])

    @property
    def installed(self) -> HostKey:
        """The key the host should hold now: the next one while a rotation runs."""
        return self.next or self.current


def key_name_in(path: Path) -> str:
    from pkinfra.dnsupdate import DNSUpdateError, TSIGKey

    try:
        return str(TSIGKey.from_file(path).name.to_text(omit_final_dot=True))
    except DNSUpdateError as exc:
        raise TSIGError(str(exc)) from None


def host_keys(secrets_dir: Path, fqdn: str) -> HostKeys:
    """The host's current key (named after it until its first rotation) and any next key."""
    current = secrets_dir / f"{fqdn}.key"
    nxt = secrets_dir / f"{fqdn}.next.key"
    name = key_name_in(current) if current.exists() else fqdn
    return HostKeys(
        fqdn=fqdn,
        current=HostKey(name, current),
        next=HostKey(key_name_in(nxt), nxt) if nxt.exists() else None,
    )


def name_clash(fqdn: str, others: Iterable[str]) -> str | None:
    """Why a host called ``fqdn`` would share a TSIG key name or key file, or None.

    Key names: the transfer key, and ``k<N>.<fqdn>`` of another host's rotations. Key files:
    ``<fqdn>.next.key`` is another host's next key while it rotates.
    """
    if fqdn == TRANSFER_KEY:
        return f"'{fqdn}' is the name of pkinfra's transfer key"
    others = set(others) - {fqdn}
    rotated = _ROTATED.fullmatch(fqdn)
    if rotated and rotated.group(2) in others:
        return f"'{fqdn}' is the name {rotated.group(2)}'s TSIG key takes after rotation"
    base = fqdn.removesuffix(".next")
    if base != fqdn and base in others:
        return f"'{fqdn}.key' is the file of {base}'s next TSIG key during a rotation"
    return None


def _generation(name: str, fqdn: str) -> int:
    if name == fqdn:
        return 1
    match = re.fullmatch(rf"k(\d+)\.{re.escape(fqdn)}", name)
    if not match:
        raise TSIGError(f"TSIG key {name!r} does not belong to {fqdn}")
    return int(match.group(1))


def start_rotation(secrets_dir: Path, fqdn: str) -> HostKey:
    """Make the host's next key; refuse while a rotation is already under way."""
    keys = host_keys(secrets_dir, fqdn)
    if keys.next is not None:
        raise TSIGError(
            f"{fqdn}: a rotation to {keys.next.name} is already under way (deploy, then finish it)"
        )
    if not keys.current.path.exists():
        raise TSIGError(f"{fqdn}: has no key yet (deploy first)")
    name = f"k{_generation(keys.current.name, fqdn) + 1}.{fqdn}"
    path = secrets_dir / f"{fqdn}.next.key"
    ensure_key(secrets_dir, name, path=path)
    return HostKey(name, path)


def installed_marker(secrets_dir: Path, fqdn: str) -> Path:
    return secrets_dir / f"{fqdn}.next.installed"


def mark_installed(secrets_dir: Path, fqdn: str) -> None:
    """Record that the host now holds its next key (the digest, not the key)."""
    keys = host_keys(secrets_dir, fqdn)
    if keys.next is None:
        return
    marker = installed_marker(secrets_dir, fqdn)
    marker.write_text(sha256_file(keys.next.path) + "\n")
    marker.chmod(0o600)


def finish_rotation(secrets_dir: Path, fqdn: str) -> HostKey:
    """Make the next key the current one, once a deploy has installed it on the host."""
    keys = host_keys(secrets_dir, fqdn)
    if keys.next is None:
        raise TSIGError(f"{fqdn}: no key rotation under way")
    marker = installed_marker(secrets_dir, fqdn)
    done = marker.read_text().strip() if marker.exists() else ""
    if done != sha256_file(keys.next.path):
        raise TSIGError(
            f"{fqdn}: the next key {keys.next.name} is not on the host yet; run the "
            "deploy first (the old key stays valid until then)"
        )
    os.replace(keys.next.path, keys.current.path)
    marker.unlink()
    return HostKey(keys.next.name, keys.current.path)


def accepted_by(path: Path, server: str, zone: str, port: int = 53, timeout: float = 5.0) -> str:
    """Ask ``server`` a query signed with the key in ``path``; '' when accepted, else why not."""
    import dns.exception
    import dns.message
    import dns.query
    import dns.tsig

    from pkinfra.dnsupdate import DNSUpdateError, TSIGKey

    try:
        key = TSIGKey.from_file(path)
    except DNSUpdateError as exc:
        return str(exc)
    query = dns.message.make_query(zone, "SOA")
    query.use_tsig(key._dns_key())
    try:
        dns.query.tcp(query, server, port=port, timeout=timeout)
    except dns.tsig.PeerError as exc:
        return f"{server} refuses key {key.name.to_text(omit_final_dot=True)}: {type(exc).__name__}"
    except (OSError, dns.exception.DNSException) as exc:
        return f"{server}: {exc or type(exc).__name__}"
    return ""
