"""TSIG secrets on the controller: one hmac-sha256 key per host, plus the transfer key.

Keys live as BIND key files (``key "name" { algorithm ...; secret "..."; };``) in the inventory's
``secrets_dir`` (0700), one file per key (0600), made here with ``os.urandom`` and never printed:
neither this module's return values nor its errors carry a secret. The same file is what the
primary includes and what the host's agent reads (``pkinfra.dnsupdate.TSIGKey.from_file``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path

ALGORITHM = "hmac-sha256"
SECRET_BYTES = 32
#: The key that signs notifies and zone transfers between the primary and its secondaries.
TRANSFER_KEY = "pkinfra-transfer"

_SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class TSIGError(Exception):
    """A TSIG key file cannot be made or read; the text names the file, never the secret."""


def key_path(secrets_dir: Path, name: str) -> Path:
    """Where the key called ``name`` lives on the controller."""
    if not _SAFE_NAME.match(name):
        raise TSIGError(f"TSIG key name {name!r} is not usable as a file name")
    return secrets_dir / f"{name}.key"


def key_text(name: str, secret: str) -> str:
    """A key file as BIND's ``tsig-keygen`` writes it."""
    return f'key "{name}" {{\n\talgorithm {ALGORITHM};\n\tsecret "{secret}";\n}};\n'


def ensure_key(secrets_dir: Path, name: str) -> Path:
    """The key file of ``name``, made (0600, in a 0700 directory) if it does not exist yet.

    An existing file is checked (it must hold exactly this key) but never replaced.
    """
    path = key_path(secrets_dir, name)
    if path.exists():
        check_key_file(path, name)
        return path
    secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = base64.b64encode(os.urandom(SECRET_BYTES)).decode()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(key_text(name, secret))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
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
