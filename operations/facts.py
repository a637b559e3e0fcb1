"""Facts pkinfra reads from hosts. None of them reads or prints a secret."""

from __future__ import annotations

import json
from typing import Any, TypedDict

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


# -- DNS (operations/dns.py) ---------------------------------------------------------------------


class FileDigestInfo(TypedDict):
    sha256: str
    mode: str
    owner: str
    group: str


class FileDigest(FactBase[FileDigestInfo | bool | None]):
    """A file's SHA-256, mode, owner and group (never its content: it may be a TSIG key).

    Returns None when absent, False when the path is not a regular file.
    """

    @override
    def command(self, path: str) -> str:
        return (
            f"if [ -e {q(path)} ]; then stat -L -c '%F|%a|%U|%G' {q(path)};"
            f" if [ -f {q(path)} ]; then sha256sum {q(path)}; fi; fi"
        )

    @override
    def process(self, output: list[str]) -> FileDigestInfo | bool | None:
        if not output:
            return None
        kind, mode, owner, group = output[0].split("|", 3)
        if kind not in ("regular file", "regular empty file") or len(output) < 2:
            return False
        return {
            "sha256": output[1].split()[0],
            "mode": mode.rjust(4, "0"),
            "owner": owner,
            "group": group,
        }


class ZoneHeaderInfo(TypedDict):
    serial: int | None
    content: str | None


class ZoneHeader(FactBase[ZoneHeaderInfo | None]):
    """The ``; pkinfra-zone serial=N content=H`` line of a zone file pkinfra wrote.

    Returns None when the file is absent; serial and content are None when the file has no
    such line (a dynamic zone that named has rewritten, or a file pkinfra did not write).
    """

    @override
    def command(self, path: str) -> str:
        return (
            f"if [ -f {q(path)} ]; then echo present;"
            f" head -n 1 {q(path)} | grep '^; pkinfra-zone ' || true; fi"
        )

    @override
    def process(self, output: list[str]) -> ZoneHeaderInfo | None:
        if not output:
            return None
        from pkinfra.zones import parse_header

        serial, content = parse_header(output[1]) if len(output) > 1 else (None, None)
        return {"serial": serial, "content": content}


class ProcessId(FactBase[int | None]):
    """The PID of a running program (``pidof -s``), or None."""

    @override
    def command(self, program: str) -> str:
        return f"pidof -s {q(program)} || true"

    @override
    def process(self, output: list[str]) -> int | None:
        text = "".join(output).strip()
        return int(text) if text.isdigit() else None


class DirectoryFiles(FactBase[list[str] | None]):
    """The names of the regular files in a directory (not recursive), or None if it is absent."""

    @override
    def command(self, directory: str) -> str:
        return (
            f"if [ -d {q(directory)} ]; then echo present;"
            f" find {q(directory)} -mindepth 1 -maxdepth 1 -type f -printf '%f\\n' | sort; fi"
        )

    @override
    def process(self, output: list[str]) -> list[str] | None:
        if not output:
            return None
        return output[1:]


# -- services (operations/services.py) ----------------------------------------------------------


class DeliveryPlan(FactBase[dict[str, Any] | None]):
    """What the host's delivery agent would change for a mapping (paths and states, no content).

    Returns None when the agent is not installed yet.
    """

    @override
    def command(self, agent: str, mapping: str) -> str:
        # The mapping holds no secret; a quoted heredoc keeps the shell away from its text.
        return (
            f"if [ -f {q(agent)} ]; then python3 {q(agent)} --plan --mapping - <<'PKINFRA_MAP'\n"
            f"{mapping}\nPKINFRA_MAP\ntrue; fi"
        )

    @override
    def process(self, output: list[str]) -> dict[str, Any] | None:
        for line in output:
            if line.startswith("{"):
                result: dict[str, Any] = json.loads(line)
                return result
        return None
