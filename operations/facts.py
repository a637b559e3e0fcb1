"""Facts pkinfra reads from hosts. None of them reads or prints a secret."""

from __future__ import annotations

from typing import TypedDict

from pyinfra.api import FactBase
from typing_extensions import override

from operations.util import key_type_from_text_pub, q


class PrivateKeyInfo(TypedDict):
    mode: str
    owner: str
    group: str
    #: A model key type ("ec-p256", ...), or None when the file holds no key openssl can read.
    key_type: str | None


class PrivateKey(FactBase[PrivateKeyInfo | bool | None]):
    """A private key file: its mode, owner and key type (public data only).

    Returns None when absent, False when the path is not a regular file.
    """

    @override
    def command(self, path: str) -> str:
        # -text_pub prints the public half only, so the fact (shown by -vvv) holds no secret.
        return (
            f"if [ -e {q(path)} ]; then stat -L -c '%F|%a|%U|%G' {q(path)};"
            f" openssl pkey -in {q(path)} -noout -text_pub 2>/dev/null | grep -v '^ ' || true; fi"
        )

    @override
    def process(self, output: list[str]) -> PrivateKeyInfo | bool | None:
        if not output:
            return None
        kind, mode, owner, group = output[0].split("|", 3)
        if kind != "regular file":
            return False
        return {
            "mode": mode.rjust(4, "0"),
            "owner": owner,
            "group": group,
            "key_type": key_type_from_text_pub("\n".join(output[1:])),
        }
