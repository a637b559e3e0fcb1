"""nginx and pkinfra's HTTP-01 integration: what answers a certificate's names on port 80.

Standard library only. The module has two halves:

- **On the host** (``python3 -I -`` with this file on stdin, as root; the ``NginxServers`` fact):
  ``main`` runs ``nginx -T``, parses the configuration nginx reads and prints one JSON line
  with the port-80 servers of the ``http`` block only: where each is (file, line), its listen
  addresses, its server names, whether it includes pkinfra's snippet, and which of its
  rewrite-phase directives would answer a challenge before any location. ``nginx -T`` prints
  every configuration file, secrets included on some sites; none of that text leaves the host.
- **On the controller**: ``challenge_plan`` decides, per certificate name, whether an admin's
  server answers it (then it must include the snippet), whether pkinfra's own server block must
  (no server of the admin's answers the name by name), and says why. ``snippet`` and
  ``server_block`` render pkinfra's two files.

Why an admin's server must include the snippet: nginx picks one server per request by address,
then by name (exact, longest leading wildcard, longest trailing wildcard, first regex, then the
address's default server). Two servers with the same exact name on one address are a conflict
("conflicting server name ... ignored": the first one loaded answers), a wildcard or regex
server of the admin's loses every name pkinfra's exact-name server lists, and a server on a
specific address hides every ``listen 80`` server on that address. So no server of pkinfra's can
answer a name the admin's server answers without taking it away from the admin.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

try:
    from pkinfra.agent.errors import PkinfraError
except ImportError:  # on a host this file runs alone (python3 -I -): no pkinfra to import
    PkinfraError = Exception  # type: ignore[misc,assignment]

SNIPPET = "/etc/nginx/snippets/pkinfra-acme-challenge.conf"
SITE = "/etc/nginx/sites-enabled/pkinfra-acme-challenge"
#: The line an admin adds to a port-80 server of theirs (relative to nginx's configuration
#: directory, as Debian's own snippets are included).
INCLUDE_LINE = "include snippets/pkinfra-acme-challenge.conf;"
CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
#: A request path a server-level ``rewrite`` is tried against (on the host).
PROBE_PATH = CHALLENGE_PREFIX + "pkinfra-probe"
_MAX_INCLUDE_DEPTH = 32
_LOOPBACK = re.compile(r"^(127\.\d+\.\d+\.\d+|\[::1\]|localhost)$")


class NginxError(PkinfraError):
    """nginx's configuration could not be read or is not what pkinfra can work with."""


# -- rendering --------------------------------------------------------------------------------


def snippet(webroots: Sequence[str]) -> str:
    """The challenge location, included by pkinfra's server block and by admins' servers.

    One webroot is served as its ``root``; with several, each is tried in turn (certbot puts a
    token under the webroot of its certificate, and a token is no secret: serving it for every
    name of this host proves nothing the host could not prove anyway).
    """
    roots = sorted(set(webroots))
    if not roots:
        raise NginxError("no webroot for the HTTP-01 snippet")
    lines = [
        "# Written by pkinfra (deploys/acme.py): HTTP-01 challenges from the webroot.",
        "# Include it in every port-80 server of yours that answers a certificate's names:",
        f"#     {INCLUDE_LINE}",
        f"location ^~ {CHALLENGE_PREFIX} {{",
    ]
    if len(roots) == 1:
        lines += [
            f"    root {roots[0]};",
            "    default_type text/plain;",
            "    try_files $uri =404;",
        ]
    else:
        tries = " ".join(f"{root}$uri" for root in roots)
        lines += ["    root /;", "    default_type text/plain;", f"    try_files {tries} =404;"]
    return "\n".join([*lines, "}"]) + "\n"


def server_block(
    names: Sequence[str], addresses: Sequence[str] = (), include: str = SNIPPET
) -> str:
    """pkinfra's own port-80 server for ``names``: the snippet and nothing else.

    ``addresses``: specific addresses (``192.0.2.1``) an admin's servers listen on at port 80;
    nginx only looks at that address's servers for a connection to it, so pkinfra's server
    listens there too.
    """
    listens = ["80", "[::]:80", *(f"{a}:80" for a in sorted(set(addresses)))]
    return (
        "# Written by pkinfra (deploys/acme.py): HTTP-01 challenges for the names no port-80\n"
        "# server of yours answers. To answer them yourself, add to your server:\n"
        f"#     {INCLUDE_LINE}\n"
        "server {\n"
        + "".join(f"    listen {listen};\n" for listen in listens)
        + f"    server_name {' '.join(names)};\n"
        f"    include {include};\n"
        # Nothing else: without it nginx would serve its default root (a welcome page).
        "    location / {\n        return 404;\n    }\n"
        "}\n"
    )


# -- the decision (controller) ----------------------------------------------------------------


@dataclass(frozen=True)
class ChallengePlan:
    """What pkinfra writes for nginx and why.

    ``own_names``: the names pkinfra's server block answers (empty: no server block);
    ``addresses``: specific port-80 addresses that block also listens on; ``covered``: name ->
    the admin's server that answers it with the snippet; ``problems``: one line each, for the
    names no server can answer (the admin must edit a server).
    """

    own_names: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()
    covered: dict[str, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    def reason(self) -> str:
        parts = []
        if self.own_names:
            parts.append(f"pkinfra's server block answers {', '.join(self.own_names)}")
        by_server: dict[str, list[str]] = {}
        for name, where in self.covered.items():
            by_server.setdefault(where, []).append(name)
        parts += [f"{where} answers {', '.join(names)}" for where, names in by_server.items()]
        return "; ".join(parts) or "no names"


def _where(server: Mapping[str, Any]) -> str:
    return f"{server['file']}:{server['line']}"


def _name_rank(pattern: str, name: str) -> tuple[int, int] | None:
    """How a ``server_name`` entry matches ``name`` in nginx's order (lower first), or None."""
    if pattern.startswith("~"):
        try:
            return (3, 0) if re.search(pattern[1:], name, re.IGNORECASE) else None
        except re.error:
            return (3, 0)  # a PCRE-only pattern: assume it may answer the name
    pattern = pattern.lower()
    if pattern == name:
        return (0, 0)
    if pattern.startswith("."):  # ".example.com": the name and every name below it
        if name == pattern[1:] or name.endswith(pattern):
            return (1, -len(pattern))
        return None
    if pattern.startswith("*.") and name.endswith(pattern[1:]):
        return (1, -len(pattern))
    if pattern.endswith(".*") and name.startswith(pattern[:-1]):
        return (2, -len(pattern))
    return None


def _answering(servers: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
    """The server nginx picks for ``name`` by its names (not the default), in nginx's order."""
    best: tuple[tuple[int, int], int] | None = None
    chosen = None
    for index, server in enumerate(servers):
        ranks = [r for p in server["names"] if (r := _name_rank(p, name)) is not None]
        if not ranks:
            continue
        key = (min(ranks), index)  # the first loaded wins a tie (exact names, regexes)
        if best is None or key < best:
            best, chosen = key, server
    return chosen


def _default(servers: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The default server for port 80 on every address: ``default_server``, else the first."""
    for server in servers:
        if any(listen["default"] for listen in server["listen"]):
            return server
    return servers[0] if servers else None


def _problem(server: Mapping[str, Any], names: Sequence[str]) -> str:
    """One line: which server answers ``names`` and the exact edit it needs."""
    head = f"nginx: the port-80 server at {_where(server)} answers {', '.join(names)}"
    edits = []
    if not server["snippet"]:
        edits.append(f"add '{INCLUDE_LINE}' to that server block")
    if server["rewrites"]:
        edits.append(
            f"move its server-level {', '.join(server['rewrites'])} into 'location / {{ ... }}'"
            " (server-level return and rewrite run before any location is chosen, so the"
            " challenge location would never answer)"
        )
    return f"{head} but cannot serve their HTTP-01 challenges: {' and '.join(edits)}"


def challenge_plan(
    servers: Sequence[Mapping[str, Any]], names: Sequence[str], own: Iterable[str] = (SITE,)
) -> ChallengePlan:
    """Decide who answers each certificate name's challenges on port 80.

    + servers: the ``NginxServers`` fact's ``servers`` (port-80 servers of the http block)
    + names: the names of the host's HTTP-01 certificates
    + own: pkinfra's own files (their servers are not the admin's)

    A name an admin's server answers by name must be served there, through the snippet, by a
    server with no server-level return or rewrite that catches the challenge: pkinfra never adds
    a second server for it. A name no admin server answers by name goes to pkinfra's server
    block (nginx prefers a server that names it over the default server), unless the default
    server already includes the snippet and can serve it.
    """
    mine = set(own)
    theirs = [
        s
        for s in servers
        if s["file"] not in mine and any(not _LOOPBACK.match(x["addr"]) for x in s["listen"])
    ]
    own_names: list[str] = []
    covered: dict[str, str] = {}
    blocked: dict[str, list[str]] = {}
    servers_by_where = {_where(s): s for s in theirs}
    default = _default(theirs)
    for name in dict.fromkeys(n.lower() for n in names):
        server = _answering(theirs, name)
        if server is None:
            if default is not None and default["snippet"] and not default["rewrites"]:
                covered[name] = _where(default)
            else:
                own_names.append(name)
        elif server["snippet"] and not server["rewrites"]:
            covered[name] = _where(server)
        else:
            blocked.setdefault(_where(server), []).append(name)
    addresses: set[str] = set()
    if own_names:
        addresses = {
            x["addr"]
            for s in theirs
            for x in s["listen"]
            if x["addr"] not in ("*", "[::]") and not _LOOPBACK.match(x["addr"])
        }
    problems = tuple(_problem(servers_by_where[w], ns) for w, ns in blocked.items())
    return ChallengePlan(tuple(own_names), tuple(sorted(addresses)), covered, problems)


# -- the host side: parse what nginx reads ----------------------------------------------------


@dataclass
class Directive:
    name: str
    args: list[str]
    file: str
    line: int
    block: list[Directive] | None = None
    #: For ``include``: the files it pulled in.
    included: list[str] = field(default_factory=list)


def tokenize(text: str) -> list[tuple[str, int, bool]]:
    """nginx's tokens as (text, line, is-word); ``;``, ``{`` and ``}`` are not words.

    As nginx reads them: ``#`` starts a comment only at a token's start, quotes and ``\\``
    escape, and ``{`` right after ``$`` is part of a word (``${host}``).
    """
    tokens: list[tuple[str, int, bool]] = []
    i, line, n = 0, 1, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c in " \t\r":
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in ";{}":
            tokens.append((c, line, False))
            i += 1
        elif c in "\"'":
            start, i, buf = line, i + 1, []
            while i < n and text[i] != c:
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                if text[i] == "\n":
                    line += 1
                buf.append(text[i])
                i += 1
            tokens.append(("".join(buf), start, True))
            i += 1
        else:
            start, buf = line, []
            while i < n:
                ch = text[i]
                if ch in " \t\r\n;" or (ch == "{" and not (buf and buf[-1] == "$")):
                    break
                if ch == "\\" and i + 1 < n:
                    i += 1
                    ch = text[i]
                buf.append(ch)
                i += 1
            tokens.append(("".join(buf), start, True))
    return tokens


class Config:
    """nginx's configuration tree with includes spliced in, from ``nginx -T`` or the disk."""

    def __init__(self, main: str, files: Mapping[str, str] | None, missing_ok: Iterable[str] = ()):
        self.main = main
        self.prefix = os.path.dirname(main)
        self.files = files  # None: read the disk
        self.missing_ok = set(missing_ok)
        self.tree = self._parse_file(main, 0)

    def _read(self, path: str) -> str:
        if self.files is not None:
            if path in self.files:
                return self.files[path]
        else:
            try:
                with open(path, encoding="utf-8", errors="replace") as handle:
                    return handle.read()
            except FileNotFoundError:
                pass
        if path in self.missing_ok:
            return ""
        raise NginxError(f"{path}: not found")

    def _resolve(self, pattern: str) -> list[str]:
        path = pattern if pattern.startswith("/") else os.path.join(self.prefix, pattern)
        if not glob.has_magic(path):
            return [path]
        if self.files is None:
            return sorted(glob.glob(path))
        depth = path.count("/")
        return sorted(
            p for p in self.files if p.count("/") == depth and fnmatch.fnmatchcase(p, path)
        )

    def _parse_file(self, path: str, depth: int) -> list[Directive]:
        if depth > _MAX_INCLUDE_DEPTH:
            raise NginxError(f"{path}: includes nested too deep")
        tokens = tokenize(self._read(path))
        block, rest = self._parse(tokens, 0, path, depth)
        if rest != len(tokens):
            raise NginxError(f"{path}:{tokens[rest][1]}: unexpected '}}'")
        return block

    def _parse(
        self, tokens: list[tuple[str, int, bool]], i: int, path: str, depth: int
    ) -> tuple[list[Directive], int]:
        out: list[Directive] = []
        words: list[tuple[str, int, bool]] = []
        while i < len(tokens):
            text, line, word = tokens[i]
            if word:
                words.append(tokens[i])
                i += 1
                continue
            if text == "}":
                return out, i
            if not words:
                raise NginxError(f"{path}:{line}: unexpected '{text}'")
            directive = Directive(words[0][0], [w[0] for w in words[1:]], path, words[0][1])
            words = []
            i += 1
            if text == "{":
                directive.block, i = self._parse(tokens, i, path, depth)
                if i >= len(tokens):
                    raise NginxError(f"{path}:{line}: '{{' is never closed")
                i += 1
            out.append(directive)
            if directive.name == "include" and directive.block is None and directive.args:
                for included in self._resolve(directive.args[0]):
                    directive.included.append(included)
                    out.extend(self._parse_file(included, depth + 1))
        if words:
            raise NginxError(f"{path}: unexpected end of file")
        return out, i


def _walk(block: Iterable[Directive]) -> Iterable[Directive]:
    for directive in block:
        yield directive
        if directive.block is not None:
            yield from _walk(directive.block)


def _listen(args: Sequence[str], port: int = 80) -> dict[str, Any] | None:
    """One ``listen`` as {addr, default} when it is plain HTTP on ``port``, else None."""
    if not args or args[0].startswith("unix:"):
        return None
    spec = args[0]
    if spec.isdigit():
        addr, number = "*", spec
    elif spec.startswith("["):
        host, _, rest = spec.partition("]")
        addr, number = host + "]", rest[1:] if rest.startswith(":") else "80"
    elif ":" in spec:
        addr, number = spec.rsplit(":", 1)
    else:
        addr, number = spec, "80"
    if number != str(port) or "ssl" in args[1:] or "quic" in args[1:]:
        return None
    addr = "*" if addr in ("*", "0.0.0.0") else addr
    return {"addr": addr, "default": any(a in ("default_server", "default") for a in args[1:])}


def _catches_challenge(directive: Directive) -> bool:
    if directive.name == "return":
        return True
    if directive.name == "rewrite" and directive.args:
        try:
            return re.search(directive.args[0], PROBE_PATH) is not None
        except re.error:
            return True
    return False


def _server(directive: Directive, snippet_path: str, port: int) -> dict[str, Any] | None:
    block = directive.block or []
    listens = [d for d in block if d.name == "listen"]
    ports = [x for d in listens if (x := _listen(d.args, port)) is not None]
    if listens and not ports:
        return None
    if not listens and port == 80:
        ports = [{"addr": "*", "default": False}]  # nginx's default when run as root
    names = [
        a.lower() if not a.startswith("~") else a
        for d in block
        if d.name == "server_name"
        for a in d.args
    ]
    rewrites = []
    for d in block:
        inner = [d] if d.name != "if" else list(_walk(d.block or []))
        if any(_catches_challenge(x) for x in inner):
            place = f"line {d.line}" if d.file == directive.file else f"{d.file}:{d.line}"
            rewrites.append(f"'{d.name}' ({place})")
    includes = any(snippet_path in d.included for d in _walk(block) if d.name == "include")
    return {
        "file": directive.file,
        "line": directive.line,
        "listen": ports,
        "names": names or [""],
        "snippet": includes,
        "rewrites": rewrites,
    }


def port80_servers(
    config: Config, snippet_path: str = SNIPPET, port: int = 80
) -> list[dict[str, Any]]:
    """The reduced facts about every plain-HTTP port-80 server of the http block (another
    ``port``: tests that run nginx unprivileged)."""
    servers = []
    for http in (d for d in config.tree if d.name == "http" and d.block is not None):
        for directive in http.block or []:
            if directive.name == "server" and directive.block is not None:
                server = _server(directive, snippet_path, port)
                if server is not None:
                    servers.append(server)
    return servers


_HEADER = re.compile(r"^# configuration file (/.+):$")


def split_dump(dump: str) -> tuple[str, dict[str, str]]:
    """``nginx -T``'s output as (main file, {path: content})."""
    files: dict[str, list[str]] = {}
    main = ""
    current: list[str] | None = None
    for line in dump.split("\n"):
        match = _HEADER.match(line)
        if match:
            current = files.setdefault(match.group(1), [])
            main = main or match.group(1)
        elif current is not None:
            current.append(line)
    # nginx -T adds one empty line after each file.
    return main, {p: "\n".join(c[:-1] if c and c[-1] == "" else c) for p, c in files.items()}


def _error_place(stderr: str) -> str:
    """nginx's first error, without quoted values (they may echo configuration text)."""
    for line in stderr.splitlines():
        if "[emerg]" in line or "[crit]" in line:
            message = line.split("]", 1)[1].split(": ", 1)[-1]
            return re.sub(r'"[^"]*"', '"..."', message).strip()[:300]
    return "nginx -t failed"


def _sha256(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


def read_host(
    nginx: Sequence[str], snippet_path: str, own: Sequence[str], port: int = 80
) -> dict[str, Any]:
    """The fact's result: run ``nginx -T`` and reduce it (see the module docstring)."""
    result: dict[str, Any] = {"own": {p: _sha256(p) for p in own}, "servers": []}
    try:
        run = subprocess.run([*nginx, "-T"], capture_output=True, text=True, errors="replace")
    except FileNotFoundError:
        return {**result, "state": "absent"}
    try:
        if run.returncode == 0:
            main, files = split_dump(run.stdout)
            config = Config(main, files)
            result["state"] = "checked"
        elif f'open() "{snippet_path}" failed' in run.stderr and _sha256(snippet_path) is None:
            # An admin included the snippet before pkinfra wrote it: read the files as nginx
            # would, with the snippet empty; pkinfra's check before reload does the rest.
            config = Config(_conf_path(nginx, run.stderr), None, missing_ok=[snippet_path])
            result["state"] = "snippet-missing"
        else:
            return {**result, "state": "invalid", "error": _error_place(run.stderr)}
        result["servers"] = port80_servers(config, snippet_path, port)
    except NginxError as exc:
        return {**result, "state": "unreadable", "error": str(exc)}
    return result


def _conf_path(nginx: Sequence[str], stderr: str) -> str:
    args = list(nginx)
    if "-c" in args[:-1]:
        return args[args.index("-c") + 1]
    match = re.search(r"configuration file (/\S+) test failed", stderr)
    return match.group(1) if match else "/etc/nginx/nginx.conf"


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 - SNIPPET [OWN...] [--port N] [-- NGINX ARGS...]``: print the fact's JSON line.

    The SHA-256 of the snippet and of each OWN file (pkinfra's) is reported beside the servers.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    nginx = ["nginx"]
    if "--" in args:
        nginx += args[args.index("--") + 1 :]
        args = args[: args.index("--")]
    port = 80
    if "--port" in args:
        index = args.index("--port")
        port = int(args[index + 1])
        del args[index : index + 2]
    snippet_path, own = args[0], args
    print(json.dumps(read_host(nginx, snippet_path, own, port), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
