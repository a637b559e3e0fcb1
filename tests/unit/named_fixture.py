"""Throw-away BIND servers for the RFC 2136 client tests and benchmark.

Two `named -g` processes in a temporary directory, both on 127.0.0.1 on random free ports: a
primary and a TSIG-authenticated secondary (notify + IXFR). named listens only on addresses that
an interface carries, and containers may not add 127.0.0.2 to `lo`, hence two ports. The zone
says `ns2.example.test A 127.0.0.2`; clients map that name to the secondary's port with
`server_addresses` (see `NamedLab.client`), while `ns1` is really looked up. They serve

- `example.test`, static: NS and glue, CNAME chains into the shadow zone, a CNAME loop, a chain
  longer than the client's bound;
- `shadow.example.test`, dynamic: `update-policy` grants one name and type per host key
  (`mx1-key`, `web1-key`), as the DNS master issue asks.

Nothing here depends on pytest, so the benchmark can use it too.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from pkinfra.dnsupdate import RFC2136Client, TSIGKey

ADDRESS = "127.0.0.1"
# What the zone says about ns2; clients are told the secondary's real address and port.
NS2_ADDRESS = "127.0.0.2"
STATIC_ZONE = "example.test."
SHADOW_ZONE = "shadow.example.test."
HOST_KEYS = ("mx1-key", "web1-key")
TRANSFER_KEY = "xfr-key"

# Owner names the tests rely on; the grants below are the only changes each key may make.
MX1_CHALLENGE = "_acme-challenge.mx1.shadow.example.test."
MX1_TLSA = "_25._tcp.mx1.shadow.example.test."
WEB1_CHALLENGE = "_acme-challenge.web1.shadow.example.test."
CHAIN_LENGTH_LONG = 10
# BIND releases rate-limited notifies and refresh queries in ticks: at the default 20/s, ten
# every 500 ms, so a change made just after another reaches the secondary up to ~0.8 s late.
# 1000/s makes the tick 10 ms.
QUERY_RATE = 1000

_GRANTS = (
    ("mx1-key", MX1_CHALLENGE, "TXT"),
    ("mx1-key", MX1_TLSA, "TLSA"),
    ("web1-key", WEB1_CHALLENGE, "TXT"),
)


def named_binary() -> str | None:
    """Path of `named`, also when /usr/sbin is not on PATH (non-root shells)."""
    found = shutil.which("named")
    if found:
        return found
    return "/usr/sbin/named" if os.access("/usr/sbin/named", os.X_OK) else None


def _static_zone() -> str:
    long_chain = "\n".join(
        f"long{i} CNAME long{i + 1}" for i in range(CHAIN_LENGTH_LONG)
    )  # long10 has no data
    return f"""\
$TTL 60
@ SOA ns1 hostmaster 1 3600 600 86400 1
@ NS ns1
@ NS ns2
ns1 A {ADDRESS}
ns2 A {NS2_ADDRESS}
shadow NS ns1
shadow NS ns2
; one hop, as model.py derives it
_acme-challenge.mx1 CNAME {MX1_CHALLENGE}
_25._tcp.mx1 CNAME {MX1_TLSA}
; two hops, the second one inside the static zone
_acme-challenge.web1 CNAME alias.web1
alias.web1 CNAME {WEB1_CHALLENGE}
; a name whose CNAME leads where mx1's key may not write
_acme-challenge.www CNAME {WEB1_CHALLENGE}
loop1 CNAME loop2
loop2 CNAME loop3
loop3 CNAME loop1
{long_chain}
"""


_SHADOW_ZONE = """\
$TTL 5
@ SOA ns1.example.test. hostmaster.example.test. 1 3600 600 86400 1
@ NS ns1.example.test.
@ NS ns2.example.test.
"""


def _key_clause(name: str, secret: str) -> str:
    return f'key "{name}" {{ algorithm hmac-sha256; secret "{secret}"; }};\n'


def _common_options(directory: Path, port: int) -> str:
    return f"""\
    directory "{directory}";
    pid-file none;
    session-keyfile none;
    managed-keys-directory "{directory}";
    listen-on port {port} {{ {ADDRESS}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify-delay 0;
    allow-query {{ any; }};
"""


def _primary_conf(
    directory: Path, ports: tuple[int, int], secrets: Mapping[str, str], rate: int | None
) -> str:
    keys = "".join(_key_clause(name, secret) for name, secret in secrets.items())
    grants = "".join(
        f"        grant {key} name {name} {rdtype};\n" for key, name, rdtype in _GRANTS
    )
    notify = (
        f"notify explicit; also-notify {{ {ADDRESS} port {ports[1]} key {TRANSFER_KEY}; }}; "
        f"allow-transfer {{ key {TRANSFER_KEY}; }};"
    )
    return f"""\
options {{
{_common_options(directory, ports[0])}
{f"    notify-rate {rate};" if rate else ""}
}};
controls {{ }};
{keys}
zone "{STATIC_ZONE}" {{ type primary; file "static.db"; {notify} }};
zone "{SHADOW_ZONE}" {{
    type primary; file "shadow.db"; {notify}
    update-policy {{
{grants}    }};
}};
"""


def _secondary_conf(
    directory: Path, ports: tuple[int, int], secrets: Mapping[str, str], rate: int | None
) -> str:
    primaries = f"primaries {{ {ADDRESS} port {ports[0]} key {TRANSFER_KEY}; }};"
    return f"""\
options {{
{_common_options(directory, ports[1])}
    notify no;
{f"    serial-query-rate {rate};" if rate else ""}
}};
controls {{ }};
{_key_clause(TRANSFER_KEY, secrets[TRANSFER_KEY])}
zone "{STATIC_ZONE}" {{ type secondary; {primaries} }};
zone "{SHADOW_ZONE}" {{ type secondary; {primaries} }};
"""


def _port_is_free(port: int) -> bool:
    sockets: list[socket.socket] = []
    try:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            sock = socket.socket(socket.AF_INET, kind)
            sockets.append(sock)
            sock.bind((ADDRESS, port))
    except OSError:
        return False
    finally:
        for sock in sockets:
            sock.close()
    return True


def free_port(avoid: int = 0) -> int:
    """A port free for TCP and UDP on 127.0.0.1 (only probed: hence the retries below)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((ADDRESS, 0))
            port: int = probe.getsockname()[1]
        if port != avoid and _port_is_free(port):
            return port
    raise RuntimeError("no free port on 127.0.0.1")


@dataclass
class NamedServer:
    """One running `named -g`; its log is kept for failure messages."""

    name: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def server(self) -> str:
        """BIND-style `address#port`, as the client's options take it."""
        return f"{ADDRESS}#{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class NamedLab:
    """The primary and secondary of one test run, and the keys that go with them."""

    directory: Path
    secrets: dict[str, str]
    primary: NamedServer
    secondary: NamedServer

    @property
    def servers(self) -> tuple[NamedServer, NamedServer]:
        return (self.primary, self.secondary)

    def key(self, name: str) -> TSIGKey:
        return TSIGKey.from_text(name, "hmac-sha256", self.secrets[name])

    def key_file(self, name: str) -> Path:
        """The key as BIND's tsig-keygen writes it, mode 0600."""
        path = self.directory / f"{name}.key"
        path.write_text(_key_clause(name, self.secrets[name]))
        path.chmod(0o600)
        return path

    def client(self, key: TSIGKey | str | None = "mx1-key", **overrides: Any) -> RFC2136Client:
        """A client that discovers everything through the primary, as the agent would.

        Only ns2's address is given; ns1 (NS and SOA MNAME) is looked up in the zone.
        """
        options: dict[str, Any] = {
            "resolvers": [self.primary.server],
            "port": self.primary.port,
            "server_addresses": {"ns2.example.test": self.secondary.server},
            "timeout": 2.0,
        }
        options.update(overrides)
        if isinstance(key, str):
            key = self.key(key)
        return RFC2136Client(key, **options)

    def serial(self, server: NamedServer, zone: str = SHADOW_ZONE) -> int:
        """The SOA serial `server` serves for `zone`."""
        query = dns.message.make_query(zone, dns.rdatatype.SOA)
        query.flags &= ~dns.flags.RD
        response = dns.query.udp(query, ADDRESS, timeout=2, port=server.port)
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.SOA:
                return int(rrset[0].serial)
        raise RuntimeError(f"{server.name} serves no SOA for {zone}")

    def values(self, server: NamedServer, name: str, rdtype: str) -> set[str]:
        """What `server` serves at `name`, as presentation text."""
        query = dns.message.make_query(name, rdtype)
        query.flags &= ~dns.flags.RD
        response = dns.query.udp(query, ADDRESS, timeout=2, port=server.port)
        return {
            rdata.to_text()
            for rrset in response.answer
            if rrset.rdtype == dns.rdatatype.from_text(rdtype)
            for rdata in rrset
        }

    def log_tails(self) -> str:
        return "\n".join(f"--- {s.name} ---\n{s.log_tail()}" for s in self.servers)


def _start(binary: str, name: str, port: int, directory: Path, conf: str) -> NamedServer:
    directory.mkdir(parents=True, exist_ok=True)
    conf_path = directory / "named.conf"
    conf_path.write_text(conf)
    log_path = directory / "named.log"
    with log_path.open("wb") as log:
        # -g: foreground, log to stderr; -4: no IPv6 sockets; -n 1: one worker is plenty and
        # starts faster. Running as root without -u keeps the temp directory writable.
        process = subprocess.Popen(
            [binary, "-g", "-4", "-n", "1", "-c", str(conf_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return NamedServer(name, port, directory, process, log_path)


def _serves(port: int, zone: str) -> bool:
    query = dns.message.make_query(zone, dns.rdatatype.SOA)
    query.flags &= ~dns.flags.RD
    try:
        response = dns.query.udp(query, ADDRESS, timeout=0.2, port=port)
    except (dns.exception.DNSException, OSError):
        return False
    return response.rcode() == dns.rcode.NOERROR and bool(response.flags & dns.flags.AA)


def _wait_ready(lab: NamedLab, deadline: float) -> None:
    for server in lab.servers:
        for zone in (STATIC_ZONE, SHADOW_ZONE):
            while not _serves(server.port, zone):
                if server.process.poll() is not None:
                    raise RuntimeError(f"{server.name} named exited:\n{lab.log_tails()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{server.name} does not serve {zone}:\n{lab.log_tails()}")
                time.sleep(0.02)


@contextmanager
def running_lab(directory: Path, query_rate: int | None = QUERY_RATE) -> Iterator[NamedLab]:
    """Start primary and secondary in `directory`; stop both on exit.

    + query_rate: `notify-rate` of the primary and `serial-query-rate` of the secondary
      (`None`: BIND's defaults, for the benchmark's comparison)
    """
    binary = named_binary()
    if binary is None:
        raise RuntimeError("named is not installed (apt-get install bind9)")
    secrets = {
        name: base64.b64encode(os.urandom(32)).decode() for name in (*HOST_KEYS, TRANSFER_KEY)
    }
    last_error: RuntimeError | None = None
    # Ports are only probed, not held, so another process may take one first: retry.
    for attempt in range(3):
        base = directory / f"run{attempt}"
        first = free_port()
        ports = (first, free_port(avoid=first))
        with ExitStack() as stack:
            primary_dir = base / "primary"
            primary_dir.mkdir(parents=True)
            (primary_dir / "static.db").write_text(_static_zone())
            (primary_dir / "shadow.db").write_text(_SHADOW_ZONE)
            primary = _start(
                binary,
                "primary",
                ports[0],
                primary_dir,
                _primary_conf(primary_dir, ports, secrets, query_rate),
            )
            stack.callback(primary.stop)
            secondary_dir = base / "secondary"
            secondary = _start(
                binary,
                "secondary",
                ports[1],
                secondary_dir,
                _secondary_conf(secondary_dir, ports, secrets, query_rate),
            )
            stack.callback(secondary.stop)
            lab = NamedLab(base, secrets, primary, secondary)
            try:
                _wait_ready(lab, time.monotonic() + 15)
            except RuntimeError as exc:
                last_error = exc
                continue
            yield lab
            return
    raise RuntimeError(f"could not start named after 3 attempts: {last_error}")
