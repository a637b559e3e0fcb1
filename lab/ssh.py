"""The controller's side of SSH into the lab: its keypair, known_hosts, and reachability.

The keypair is made once, on the controller, with `cryptography` (no ssh-keygen needed) and
kept in `.lab/ssh/`. known_hosts is rewritten from the host keys the containers generated at
their first start, so strict host key checking works against a fresh lab.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lab.engine import LabError
from lab.topology import KNOWN_HOSTS, SSH_DIR, SSH_KEY, SSH_PUBLIC_KEY


def _write_private(path: Path, data: bytes, mode: int) -> None:
    # Written to a temporary name created with its final mode, then renamed: the file is never
    # readable by others, not even for a moment.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def ensure_keypair() -> str:
    """Make the controller's ed25519 keypair if missing; return the public key line."""
    SSH_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not SSH_KEY.exists():
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        _write_private(SSH_KEY, private, 0o600)
        _write_private(SSH_PUBLIC_KEY, public + b" pkinfra-lab\n", 0o644)
    if SSH_KEY.stat().st_mode & 0o077:
        os.chmod(SSH_KEY, 0o600)
    if not SSH_PUBLIC_KEY.exists():
        try:
            private_key = serialization.load_ssh_private_key(SSH_KEY.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise LabError(f"cannot read the lab SSH key {SSH_KEY}: {exc}") from exc
        public = private_key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        _write_private(SSH_PUBLIC_KEY, public + b" pkinfra-lab\n", 0o644)
    return SSH_PUBLIC_KEY.read_text(encoding="ascii").strip()


def known_hosts_text(host_keys: dict[str, str]) -> str:
    """known_hosts lines (`address type base64`) for address -> `type base64 [comment]`."""
    lines = []
    for address, key in sorted(host_keys.items()):
        fields = key.split()
        if len(fields) < 2:
            raise LabError(f"malformed SSH host key for {address}: {key!r}")
        lines.append(f"{address} {fields[0]} {fields[1]}\n")
    return "".join(lines)


def write_known_hosts(host_keys: dict[str, str]) -> bool:
    """Rewrite KNOWN_HOSTS for these host keys; return whether its content changed."""
    text = known_hosts_text(host_keys)
    try:
        if KNOWN_HOSTS.read_text(encoding="ascii") == text:
            return False
    except FileNotFoundError:
        pass
    _write_private(KNOWN_HOSTS, text.encode("ascii"), 0o644)
    return True


def wait_for_ssh(address: str, timeout: float = 15.0) -> None:
    """Wait until `address:22` answers with an SSH banner, from this host; LabError if never."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            with socket.create_connection((address, 22), timeout=2) as sock:
                sock.settimeout(2)
                banner = sock.recv(64)
            if banner.startswith(b"SSH-"):
                return
            last = f"unexpected banner {banner[:32]!r}"
        except OSError as exc:
            last = exc.strerror or str(exc)
        if time.monotonic() >= deadline:
            raise LabError(
                f"sshd at {address}:22 is not reachable from this host after {timeout:.0f} s "
                f"({last}); the host must reach the lab network through its gateway"
            )
        time.sleep(0.2)
