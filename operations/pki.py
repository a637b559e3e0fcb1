"""Operations for the private PKI on managed hosts (keys, certificates)."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import OperationError, operation

from operations.facts import PrivateKey
from operations.util import GENPKEY_ARGS, genpkey, q


@operation()
def private_key(
    path: str,
    key_type: str = "ec-p256",
    owner: str = "root",
    group: str = "root",
    mode: str = "0600",
):
    """
    Ensure a private key exists on the host, made there (``umask 077``) and never copied out.

    + path: the key file
    + key_type: one of ``ec-p256``, ``ec-p384``, ``rsa-2048``, ``rsa-3072``, ``rsa-4096``,
      ``ed25519``
    + owner, group, mode: the key file's ownership and mode (never readable by others)

    An existing key of another type is never replaced: that is a rollover, asked for elsewhere.

    **Example:**

    .. code:: python

        pki.private_key(path="/etc/pkinfra/certs/postgres/key.pem", key_type="ec-p256")
    """
    if key_type not in GENPKEY_ARGS:
        raise OperationError(f"unknown key type '{key_type}'")
    if int(mode, 8) & 0o007:
        raise OperationError(f"key {path}: mode {mode} would make it readable by others")

    info = host.get_fact(PrivateKey, path=path)
    if info is False:
        raise OperationError(f"key {path}: exists but is not a regular file; not touching it")
    if info is None:
        yield genpkey(path, key_type, owner, group)
        if mode != "0600":
            yield f"chmod {mode} {q(path)}"
        return
    assert isinstance(info, dict)
    if info["key_type"] is None:
        raise OperationError(
            f"key {path}: exists but openssl cannot read it as a key; not touching it"
        )
    if info["key_type"] != key_type:
        raise OperationError(
            f"key {path}: is {info['key_type']}, the inventory wants {key_type}; "
            "a new key type needs a key rollover"
        )
    changed = False
    if (info["owner"], info["group"]) != (owner, group):
        yield f"chown {q(owner)}:{q(group)} {q(path)}"
        changed = True
    if info["mode"] != mode.rjust(4, "0"):
        yield f"chmod {mode} {q(path)}"
        changed = True
    if not changed:
        host.noop(f"key {path} exists ({key_type}, {mode} {owner}:{group})")
