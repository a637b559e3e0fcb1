"""Facts pkinfra reads from hosts. None of them reads or prints a secret."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any, TypedDict

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pyinfra.api import FactBase
from typing_extensions import override

from operations.util import SPKI_HASH, q
from pkinfra.keys import KeyTypeError, PublicKey, key_type_of, public_key_der, spki_sha256


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
        # -pubout prints the public half only, so the fact (shown by -vvv) holds no secret; its
        # type is read on the controller. -passin pass: (empty): an encrypted key fails.
        return (
            f"if [ -e {q(path)} ]; then stat -L -c '%F|%a|%U|%G' {q(path)};"
            f" openssl pkey -passin pass: -in {q(path)} -pubout 2>/dev/null || true; fi"
        )

    @override
    def process(self, output: list[str]) -> PrivateKeyInfo | bool | None:
        if not output:
            return None
        kind, mode, owner, group = output[0].split("|", 3)
        if kind != "regular file":
            return False
        public = _public_key("\n".join(output[1:]))
        return {
            "mode": mode.rjust(4, "0"),
            "owner": owner,
            "group": group,
            "key_type": _key_type(public) if public is not None else None,
        }


# -- private PKI: every certificate directory and CA file of a host in one command -------------

_EKU_OIDS = {
    ExtendedKeyUsageOID.SERVER_AUTH: "server",
    ExtendedKeyUsageOID.CLIENT_AUTH: "client",
}
# File patterns go into the script unquoted (so globs expand): only plain path characters.
_SAFE_PATTERN = re.compile(r"^/[A-Za-z0-9/._*+-]+$")


class PkiKeyInfo(TypedDict):
    kind: str  # "regular file", "directory" ...
    mode: str
    owner: str
    group: str
    #: A model key type, or None when openssl cannot read the file as an unencrypted key.
    key_type: str | None
    #: Hex SHA-256 of the key's SubjectPublicKeyInfo, computed on the host.
    spki_sha256: str | None


class PkiCertInfo(TypedDict):
    serial: str  # hex, lower case
    not_after: str  # ISO 8601, UTC
    names: list[str]
    usages: list[str]  # "server", "client"
    issuer: str  # the issuer's CN (or whole DN when it has none)
    issuer_key_id: str | None  # authority key identifier, hex
    spki_sha256: str | None


class PkiDirInfo(TypedDict):
    key: PkiKeyInfo | None
    #: None: no cert.pem; False: a cert.pem openssl cannot read.
    cert: PkiCertInfo | bool | None
    #: SHA-256 of cert.pem, chain.pem, fullchain.pem, bundle.pem and of cert + chain ("cert+chain").
    sha256: dict[str, str]


class RolloverStateInfo(TypedDict):
    now: int  # the host's clock, unix time
    state: dict[str, Any]  # {"step": "unreadable"} when the file is not a JSON object


def _rollover_state(now: str, lines: Sequence[str]) -> RolloverStateInfo:
    try:
        state = json.loads("\n".join(lines))
    except ValueError:
        state = None
    if not isinstance(state, dict):
        state = {"step": "unreadable"}
    return {"now": int(now) if now.strip().isdigit() else 0, "state": state}


class PkiFilesInfo(TypedDict):
    directories: dict[str, PkiDirInfo]
    #: path -> SHA-256, for the files (and glob matches) that exist.
    files: dict[str, str]
    #: path -> what ``RolloverState`` reads there, for the state files that exist.
    states: dict[str, RolloverStateInfo]


class PkiFiles(FactBase[PkiFilesInfo]):
    """Certificate directories (key, certificate, chain files), CA files and key rollover
    states, in one command.

    For each directory: the key's mode, owner, type and public-key fingerprint (the private key
    is read by openssl on the host, which prints its public half only), the certificate's serial,
    expiry, names, usages, issuer and key fingerprint, and the hashes of the chain files. For
    each file pattern: the SHA-256 of every matching file. For each rollover state file (see
    ``RolloverState``): its JSON and the host's clock. Public data only.
    """

    @override
    def requires_command(self, *args: Any, **kwargs: Any) -> str:
        return "openssl"

    @override
    def command(
        self,
        directories: Sequence[str] = (),
        files: Sequence[str] = (),
        states: Sequence[str] = (),
    ) -> str:
        for pattern in files:
            if not _SAFE_PATTERN.fullmatch(pattern):
                raise ValueError(f"unsafe file pattern {pattern!r}")
        # The key is read by openssl here and only its public half is printed; its type and
        # fingerprint are read on the controller (pkinfra.keys, as for the certificate, which is
        # public and printed as it is). One openssl call per directory, one sha256sum for its
        # files: the fact runs on every host and every run. e: echo without dash's escapes;
        # -passin pass: (empty): an encrypted key fails instead of prompting.
        head = [
            "e() { printf '%s\\n' \"$1\"; }",
        ]
        lines = [
            f"for d in {' '.join(q(d) for d in directories)}; do",
            ' echo "@dir|$d"',
            ' [ -d "$d" ] || continue',
            ' k="$d/key.pem"',
            ' if [ -e "$k" ]; then',
            '  echo "key|$(stat -L -c \'%F|%a|%U|%G\' "$k")"',
            '  p=$(openssl pkey -passin pass: -in "$k" -pubout 2>/dev/null)',
            '  case "$p" in *BEGIN*)',
            "   e \"$p\" | sed 's/^/kp|/';;",
            "  esac",
            " fi",
            " [ ! -f \"$d/cert.pem\" ] || { echo 'cert|'; sed 's/^/c|/' \"$d/cert.pem\"; }",
            ' sha256sum "$d/cert.pem" "$d/chain.pem" "$d/fullchain.pem" "$d/bundle.pem"'
            " 2>/dev/null | sed 's/^/sha|/'",
            ' [ ! -f "$d/cert.pem" ] || [ ! -f "$d/chain.pem" ] ||'
            ' echo "sha|$(cat "$d/cert.pem" "$d/chain.pem" | sha256sum | cut -c1-64)  cert+chain"',
            "done",
        ]
        if not directories:
            lines = []
        if files:
            lines.append(f"sha256sum {' '.join(files)} 2>/dev/null | sed 's/^/@file|/'")
        if states:
            lines += [
                'echo "@now|$(date +%s)"',
                f"for s in {' '.join(q(s) for s in states)}; do",
                ' [ -f "$s" ] || continue',
                ' echo "@state|$s"',
                " sed 's/^/s|/' \"$s\"; echo",  # echo: a last line without its newline
                "done",
            ]
        return "\n".join([*head, *lines, "true"])

    @override
    def process(self, output: list[str]) -> PkiFilesInfo:
        result: PkiFilesInfo = {"directories": {}, "files": {}, "states": {}}
        current: PkiDirInfo | None = None
        key_pem: list[str] = []
        cert_pem: list[str] | None = None
        now = "0"
        states: dict[str, list[str]] = {}
        state: list[str] = []

        def finish() -> None:
            if current is None:
                return
            if current["key"] is not None and key_pem:
                public = _public_key("\n".join(key_pem))
                if public is not None:
                    current["key"]["key_type"] = _key_type(public)
                    current["key"]["spki_sha256"] = spki_sha256(public)
            if cert_pem is not None:
                current["cert"] = _certificate_info("\n".join(cert_pem))

        for line in output:
            tag, _, rest = line.partition("|")
            if tag == "@dir":
                finish()
                current = {"key": None, "cert": None, "sha256": {}}
                key_pem, cert_pem = [], None
                result["directories"][rest] = current
            elif tag == "@file":
                digest, _, path = rest.partition("  ")
                result["files"][path] = digest
            elif tag == "@now":
                now = rest
            elif tag == "@state":
                state = states.setdefault(rest, [])
            elif tag == "s":
                state.append(rest)
            elif current is None:
                continue
            elif tag == "key":
                kind, mode, owner, group = [*rest.split("|", 3), "", "", ""][:4]
                current["key"] = {
                    "kind": kind,
                    "mode": mode.rjust(4, "0"),
                    "owner": owner,
                    "group": group,
                    "key_type": None,
                    "spki_sha256": None,
                }
            elif tag == "kp":
                key_pem.append(rest)
            elif tag == "cert":
                cert_pem = []
            elif tag == "c" and cert_pem is not None:
                cert_pem.append(rest)
            elif tag == "sha":
                digest, _, path = rest.partition("  ")
                current["sha256"][path.rpartition("/")[2]] = digest
        finish()
        result["states"] = {path: _rollover_state(now, lines) for path, lines in states.items()}
        return result


def _public_key(pem: str) -> PublicKey | None:
    """The public key a host printed (never a private key); None when unreadable."""
    try:
        public = serialization.load_pem_public_key(pem.encode())
    except ValueError:
        return None
    return public  # type: ignore[return-value]


def _key_type(public: PublicKey) -> str | None:
    try:
        return key_type_of(public)
    except KeyTypeError:
        return None


def _load_certificate(pem: str) -> x509.Certificate | None:
    """The first certificate of a PEM file a host printed (public); None when there is none."""
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return None


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [n.lower() for n in san.get_values_for_type(x509.DNSName)]


def _issuer(cert: x509.Certificate) -> str:
    """The issuer's CN, or its whole DN when it has none."""
    common = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common[0].value) if common else cert.issuer.rfc4514_string()


def _certificate_info(pem: str) -> PkiCertInfo | bool:
    """The first certificate of a PEM file, as the certificate operation compares it; False
    when there is none."""
    cert = _load_certificate(pem)
    if cert is None:
        return False
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        usages = sorted(_EKU_OIDS[oid] for oid in eku if oid in _EKU_OIDS)
    except x509.ExtensionNotFound:
        usages = []
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        key_id = aki.key_identifier.hex() if aki.key_identifier else None
    except x509.ExtensionNotFound:
        key_id = None
    spki = public_key_der(cert)
    return {
        "serial": f"{cert.serial_number:x}",
        "not_after": cert.not_valid_after_utc.isoformat(),
        "names": _dns_names(cert),
        "usages": usages,
        "issuer": _issuer(cert),
        "issuer_key_id": key_id,
        "spki_sha256": hashlib.sha256(spki).hexdigest(),
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


class AgentFiles(FactBase[dict[str, str]]):
    """The SHA-256 of every ``*.py`` file under the agents' directory, by path below it
    (``pkinfra/agent/delivery.py``); empty when the directory is absent."""

    @override
    def command(self, directory: str) -> str:
        return (
            f"if [ -d {q(directory)} ]; then cd {q(directory)} &&"
            " find . -type f -name '*.py' -exec sha256sum {} +; fi"
        )

    @override
    @staticmethod
    def default() -> dict[str, str]:
        # No output (a host without the directory): pyinfra skips process() and uses this.
        return {}

    @override
    def process(self, output: list[str]) -> dict[str, str]:
        found = {}
        for line in output:
            digest, _, path = line.partition("  ")
            if path.startswith("./"):
                found[path[2:]] = digest
        return found


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


class BindIncludes(FactBase[list[tuple[str, str]] | None]):
    """The ``include`` statements of BIND's configuration: (file, included file) pairs, found
    by following the includes from ``conf`` (named.conf) down.

    Returns None when ``conf`` is absent (BIND not installed). Only file names are printed: key
    files are read for include statements too, but nothing of them is shown (``named-checkconf
    -p`` would print their secrets, so it is not used). Commented-out lines (``//``, ``#``) do
    not count; absolute include paths (Debian's layout). ``pkinfra.zones.include_chain`` finds
    how pkinfra's file is reached.
    """

    @override
    def command(self, conf: str) -> str:
        script = q(r's/^[[:space:]]*include[[:space:]]+"([^"]+)"[[:space:]]*;.*/\1/p')
        return (
            f"[ -f {q(conf)} ] || exit 0; echo present; todo={q(conf)}; seen=' '; n=0;"
            ' while [ -n "$todo" ] && [ $n -lt 200 ]; do n=$((n+1));'
            ' set -- $todo; f=$1; shift; todo="$*";'
            ' case "$seen" in *" $f "*) continue;; esac; seen="$seen$f ";'
            ' [ -f "$f" ] || continue;'
            f' for i in $(sed -nE {script} "$f"); do'
            ' echo "include $f $i"; todo="$todo $i"; done; done'
        )

    @override
    def process(self, output: list[str]) -> list[tuple[str, str]] | None:
        if not output:
            return None
        edges = [line.split(" ", 2) for line in output[1:] if line.startswith("include ")]
        return [(edge[1], edge[2]) for edge in edges if len(edge) == 3]


def include_pattern(include: str) -> str:
    """An extended regex matching the zone-file line ``$INCLUDE <include>`` (quoted or not)."""
    literal = "".join("\\" + c if c in ".[](){}*+?|^$\\" else c for c in include)
    return f'^[$]INCLUDE[[:space:]]+"?{literal}"?([[:space:]]|$)'


class AdminZoneInfo(TypedDict):
    sha256: str
    #: The line ``$INCLUDE "<include>"`` (quoted or not) is in the file.
    includes: bool
    #: The file up to the end of its SOA record (base64 of the bytes; zone data, no secret).
    head: str


class AdminZone(FactBase[AdminZoneInfo | bool | None]):
    """A zone file the admin keeps: its SHA-256, whether it ``$INCLUDE``s ``include``, and its
    beginning up to the end of the SOA record (to find the serial's bytes).

    Returns None when absent, False when the path is not a regular file (a symbolic link is
    refused too: pkinfra renames a new file into its place).
    """

    @override
    def command(self, path: str, include: str) -> str:
        # SOA: the first line with an SOA token outside comments, then until its parentheses
        # close. The controller parses exactly those bytes (pkinfra.zones.soa_serial_span).
        soa_end = q(
            r'{ l = $0; sub(/;.*/, "", l); u = toupper(l);'
            r" if (!s && u ~ /(^|[ \t])SOA([ \t(]|$)/) s = 1;"
            r' if (s) { d += gsub(/\(/, "(", l) - gsub(/\)/, ")", l);'
            r" if (d <= 0) { print NR; exit } } }"
        )
        line = q(include_pattern(include))
        return (
            f"if [ -L {q(path)} ]; then echo link; elif [ -e {q(path)} ]; then"
            f" if [ ! -f {q(path)} ]; then echo other; else echo file;"
            f" sha256sum < {q(path)} | cut -c1-64;"
            f" grep -cE {line} {q(path)} || true;"
            f' n=$(awk {soa_end} {q(path)}); head -n "${{n:-0}}" {q(path)} | base64 -w0; echo;'
            " fi; fi"
        )

    @override
    def process(self, output: list[str]) -> AdminZoneInfo | bool | None:
        if not output:
            return None
        if output[0] != "file" or len(output) < 3:
            return False
        return {
            "sha256": output[1].strip(),
            "includes": output[2].strip() not in ("", "0"),
            "head": output[3].strip() if len(output) > 3 else "",
        }


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


# -- ACME (operations/acme.py) --------------------------------------------------------------------


class CertbotLineage(FactBase[Any]):
    """A certbot lineage: its renewal configuration and the live certificate (public data only).

    Returns None when neither ``renewal/<name>.conf`` nor ``live/<name>/`` exists, else a
    ``pkinfra.acme.LineageInfo``. The certificate (public) is printed as it is and read here;
    the key's public half is hashed on the host; the renewal configuration names an account id
    and hooks, never a secret.
    """

    @override
    def command(self, cert_name: str) -> str:
        conf = q(f"/etc/letsencrypt/renewal/{cert_name}.conf")
        live = f"/etc/letsencrypt/live/{cert_name}"
        cert, key = q(f"{live}/cert.pem"), q(f"{live}/privkey.pem")
        return "\n".join(
            [
                f"[ -f {conf} ] || [ -d {q(live)} ] || exit 0",
                "echo '@lineage'",
                f"[ ! -f {conf} ] || sed 's/^/r|/' {conf}",
                f"if [ -f {cert} ]; then",
                f" sed 's/^/c|/' {cert}",
                "fi",
                f"if [ -f {key} ]; then",
                f' echo "k|$( (openssl pkey -in {key} -pubout | {SPKI_HASH}) 2>/dev/null)"',
                "fi",
                "true",
            ]
        )

    @override
    def process(self, output: list[str]) -> Any:
        if not output or output[0] != "@lineage":
            return None
        renewal: dict[str, str] = {}
        webroot_map: dict[str, str] = {}
        section = ""
        cert: list[str] = []
        spki: str | None = None
        for line in output[1:]:
            tag, _, rest = line.partition("|")
            if tag == "r":
                text = rest.strip()
                if text.startswith("["):
                    section = text
                elif text and not text.startswith("#") and "=" in text:
                    key, _, value = text.partition("=")
                    if section == "[[webroot_map]]":
                        webroot_map[key.strip()] = value.strip()
                    else:
                        renewal[key.strip()] = value.strip()
            elif tag == "c":
                cert.append(rest)
            elif tag == "k":
                # The hash of empty input: openssl could not read the key.
                empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                spki = rest if rest and rest != empty else None
        live = _load_certificate("\n".join(cert)) if cert else None
        return {
            "renewal": renewal,
            "webroot_map": webroot_map,
            "names": _dns_names(live) if live else None,
            "not_before": live.not_valid_before_utc.isoformat() if live else None,
            "not_after": live.not_valid_after_utc.isoformat() if live else None,
            "issuer": _issuer(live) if live else None,
            "key_spki_sha256": spki,
        }


class CertbotAccounts(FactBase[Any]):
    """certbot's accounts on one ACME directory and whether the server still knows them.

    Returns a ``pkinfra.acme.AccountsInfo``, ``{"ids": [...], "state": "valid" | "unknown" |
    "unchecked" | "none"}``: ``unknown`` when the server answers ``accountDoesNotExist`` (a
    restarted Pebble forgets every account), ``unchecked`` when it could not be asked. certbot
    2.1's ``show_account`` crashes on that answer, so its debug log (a private temporary
    directory) is read instead.
    """

    @override
    def command(self, server: str) -> str:
        from pkinfra.acme import account_dir

        directory = q(account_dir(server))
        return "\n".join(
            [
                f'[ -d {directory} ] && [ -n "$(ls -A {directory})" ]'
                " || { echo 'state|none'; exit 0; }",
                f"ls -1 {directory} | sed 's/^/id|/'",
                "l=$(mktemp -d)",
                f'if certbot show_account --server {q(server)} --logs-dir "$l" >/dev/null 2>&1;'
                " then echo 'state|valid';",
                'elif grep -q accountDoesNotExist "$l"/letsencrypt.log 2>/dev/null;'
                " then echo 'state|unknown';",
                "else echo 'state|unchecked'; fi",
                'rm -rf "$l"',
            ]
        )

    @override
    def process(self, output: list[str]) -> Any:
        ids = [line[3:].strip() for line in output if line.startswith("id|")]
        states = [line[6:].strip() for line in output if line.startswith("state|")]
        return {"ids": ids, "state": states[-1] if states else "unchecked"}


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


# -- DANE (operations/dane.py) ------------------------------------------------------------------


class DaneServed(FactBase[str | None]):
    """Whether every authoritative server serves the TLSA records of the host's ACME
    certificates: ``served``, ``stale``, or None when the publisher is not installed."""

    @override
    def command(self, publisher: str, config: str) -> str:
        return (
            f"if [ -x {q(publisher)} ] && [ -f {q(config)} ]; then"
            f" if {q(publisher)} --check --config {q(config)} >/dev/null 2>&1;"
            " then echo served; else echo stale; fi; fi"
        )

    @override
    def process(self, output: list[str]) -> str | None:
        return output[0].strip() if output else None


class RolloverState(FactBase["dict[str, Any] | None"]):
    """A key rollover's state on the host (``pkinfra.agent.rollover``) and the host's clock:
    ``{"now": <unix time>, "state": {...}}``; None when there is no state file."""

    @override
    def command(self, path: str) -> str:
        return f"if [ -f {q(path)} ]; then date +%s; cat {q(path)}; fi"

    @override
    def process(self, output: list[str]) -> dict[str, Any] | None:
        if not output:
            return None
        return dict(_rollover_state(output[0], output[1:]))


# -- nginx (operations/acme.py: HTTP-01) ----------------------------------------------------------


class NginxServers(FactBase["dict[str, Any]"]):
    """nginx's plain-HTTP port-80 servers and pkinfra's own nginx files (``pkinfra.nginx``).

    The reduction runs on the host (``python3 -I -`` fed ``pkinfra/nginx.py``): ``nginx -T``
    prints every configuration file, which may hold secrets; only each server's place, listen
    addresses, names, whether it includes the snippet and its server-level return/rewrite
    come back. ``state``: ``checked`` (``nginx -T`` passed), ``snippet-missing`` (it fails only
    because a server includes the snippet pkinfra has not written yet; the files were read as
    nginx reads them), ``invalid`` (``error`` says where), ``unreadable``, ``absent`` (no
    nginx) or ``no-python``.
    """

    @override
    def command(self, snippet: str, site: str) -> str:
        from pathlib import Path

        from pkinfra import nginx

        source = Path(nginx.__file__).read_text()
        marker = "PKINFRA_NGINX_READER"
        assert marker not in source
        args = f"{q(snippet)} {q(site)}"
        return (
            'command -v python3 >/dev/null 2>&1 || { echo \'{"state": "no-python"}\'; exit 0; }\n'
            f"python3 -I - {args} <<'{marker}'\n{source}{marker}\n"
        )

    @override
    def process(self, output: list[str]) -> dict[str, Any]:
        for line in output:
            if line.startswith("{"):
                result: dict[str, Any] = json.loads(line)
                result.setdefault("servers", [])
                result.setdefault("own", {})
                return result
        return {
            "state": "unreadable",
            "error": "no answer from the reader",
            "servers": [],
            "own": {},
        }
