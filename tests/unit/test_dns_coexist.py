"""pkinfra beside an admin who keeps BIND by hand: one included configuration file, a zone the
admin keeps with pkinfra's ``$INCLUDE``d records, its SOA serial moved and nothing else.

The rendering is pinned by golden files; then a real ``named`` primary and secondary on
127.0.0.1, configured by "the admin", get pkinfra's files through the ``named`` operation's own
facts and shell commands, run here as they would on the host.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import pytest
from pyinfra.api.command import FileUploadCommand, FunctionCommand
from pyinfra.context import ctx_host, ctx_state

from operations import dns as dns_ops
from operations import facts
from pkinfra import tsig, zones
from pkinfra.model import Inventory, InventoryError, load
from tests.operations.harness import FakeHost, FakeState
from tests.unit.named_fixture import free_port, named_binary

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "dns_golden" / "coexist"
ADMIN_FILE = "/etc/bind/db.example.com"
DB1_TLSA = zones.IncludedTLSA("_5432._tcp.db1.example.com", "3 1 1 " + "ab" * 32)
MON1_TLSA = zones.IncludedTLSA("_443._tcp.mon1.example.com", "3 1 1 " + "cd" * 32)


def settings(**zone: Any) -> dict[str, Any]:
    return {
        "zones": [
            {"name": "example.com", "admin_file": ADMIN_FILE, **zone},
            {"name": "pkinfra.test", "signed": False},
        ],
        "shadow_zone": {"name": "shadow.test", "signed": False},
        "dns": {"primary": "ns1.pkinfra.test"},
        "cas": {"corp": {"unencrypted": True}},
        "acme": {"directory": "https://acme.example.net/dir"},
    }


def hosts() -> dict[str, Any]:
    return {
        "dns": [("ns1", {"fqdn": "ns1.pkinfra.test", "address": "127.0.0.1"})],
        "mail": [
            (
                "mx1",
                {
                    "fqdn": "mx1.example.com",
                    "address": "192.0.2.25",
                    "certificates": [
                        {
                            "name": "mail",
                            "names": ["mx1.example.com"],
                            "issuer": "acme",
                            "challenge": "dns-01",
                        }
                    ],
                    "tlsa": [{"port": 25, "certificate": "mail"}],
                },
            ),
            (
                "db1",
                {
                    "fqdn": "db1.example.com",
                    "certificates": [
                        {"name": "pg", "names": ["db1.example.com"], "issuer": "corp"}
                    ],
                    "tlsa": [{"port": 5432, "certificate": "pg"}],
                },
            ),
        ],
    }


def inventory(**zone: Any) -> Inventory:
    return load(ROOT, hosts(), {"all": settings(**zone)})


# -- rendering ----------------------------------------------------------------------------------


def test_golden_config_and_include_of_an_admin_kept_zone() -> None:
    site = zones.render_site(inventory(), tlsa=[DB1_TLSA])
    layout = zones.Layout()
    admin = site.primary.zones[0]
    assert admin.admin_file == ADMIN_FILE and admin.text == ""
    assert admin.include_path == layout.admin_include("example.com")
    rendered = {
        "etc_bind_pkinfra_named.conf": site.primary.config[layout.config_file],
        "var_lib_bind_pkinfra_example.com.include": admin.include_text,
    }
    if os.environ.get("PKINFRA_UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        for name, text in rendered.items():
            (GOLDEN / name).write_text(text)
    for name, text in rendered.items():
        assert (GOLDEN / name).read_text() == text, name
    # pkinfra declares no zone statement for the admin's zone, and never writes BIND's files.
    assert '\nzone "example.com"' not in site.primary.config[layout.config_file]
    assert list(site.primary.config) == [layout.config_file]


def test_the_include_follows_the_inventory_only() -> None:
    one = zones.render_site(inventory(), tlsa=[DB1_TLSA]).primary.zones[0]
    same = zones.render_site(inventory(), tlsa=[DB1_TLSA]).primary.zones[0]
    more = zones.render_site(inventory(), tlsa=[DB1_TLSA, MON1_TLSA]).primary.zones[0]
    assert one.content == same.content and one.include_text == same.include_text
    assert more.content != one.content
    assert f"_443._tcp.mon1.example.com.\t300\tIN\tTLSA\t{MON1_TLSA.value}\n" in more.include_text


@pytest.mark.parametrize(
    ("zone", "message"),
    [
        (
            {"admin_file": "/var/lib/bind/pkinfra/example.com.db"},
            "group_data/all.py: zones[0].admin_file: '/var/lib/bind/pkinfra/example.com.db' is "
            "pkinfra's own (/var/lib/bind/pkinfra/): the admin's zone file lives elsewhere "
            "(e.g. /etc/bind/db.<zone>)",
        ),
        (
            {"admin_file": "db.example.com"},
            "group_data/all.py: zones[0].admin_file: must be an absolute path, got "
            "'db.example.com'",
        ),
        (
            {"caa": ["letsencrypt.org"]},
            "group_data/all.py: zones[0]: 'caa' and 'admin_file' exclude each other: the admin "
            "keeps the zone's CAA records in its file",
        ),
    ],
)
def test_admin_file_is_validated(zone: dict[str, Any], message: str) -> None:
    with pytest.raises(InventoryError) as info:
        inventory(**zone)
    assert [str(p) for p in info.value.problems] == [message]


def test_records_in_an_admin_kept_zone_are_refused() -> None:
    groups = hosts()
    groups["mail"][0][1]["records"] = [
        {"name": "www.example.com", "type": "A", "value": "192.0.2.80"}
    ]
    with pytest.raises(InventoryError) as info:
        load(ROOT, groups, {"all": settings()})
    assert [str(p) for p in info.value.problems] == [
        "mx1.example.com: records[0].name: 'www.example.com' is in zone 'example.com', which "
        f"the admin keeps ({ADMIN_FILE}): write the record there"
    ]


@pytest.mark.parametrize(
    ("serial", "today", "expected"),
    [
        (2026010203, dt.date(2026, 1, 2), 2026010204),  # today's date serial: one more
        (2025123107, dt.date(2026, 1, 2), 2026010200),  # an earlier day: today's first
        (2026010299, dt.date(2026, 1, 2), 2026010300),  # 99 used up: still grows
        (1767300000, dt.date(2026, 1, 2), 1767300001),  # Unix time: the admin's convention
        (7, dt.date(2026, 1, 2), 8),  # a counter
        (2**32 - 1, dt.date(2026, 1, 2), 0),  # RFC 1982 wrap
    ],
)
def test_admin_serial_rule(serial: int, today: dt.date, expected: int) -> None:
    assert zones.admin_serial(serial, today) == expected


@pytest.mark.parametrize(
    "text",
    [
        "$TTL 1h\n@ IN SOA ns1 hostmaster 2026010203 1 1 1 1\n",
        "; SOA ( comment\n$ORIGIN example.com.\nexample.com. 3600 IN SOA ns1. h. (\n"
        "    2026010203 ; serial (x)\n    1 1 1 1 )\n",
        "\tIN\tSOA\tns1. h. ( 2026010203 1 1 1 1 )\n",
        "@ SOA ns1 h 2026010203 1 1 1 1\n",
        "@ IN 1h soa ns1 h 2026010203 1 1 1 1\r\n",
    ],
)
def test_the_serial_is_found_as_bind_reads_the_file(text: str) -> None:
    data = text.encode()
    serial, start, end = zones.soa_serial_span(data)
    assert serial == 2026010203 and data[start:end] == b"2026010203"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("@ A 192.0.2.1\n", "no SOA record"),
        ("@ SOA ns1 h ( 1h 1 1 1 1 )\n", "no plain decimal serial"),
        ("soa A 192.0.2.1\n", "no SOA record"),
    ],
)
def test_an_soa_without_a_plain_serial_is_refused(text: str, why: str) -> None:
    with pytest.raises(zones.ZoneError, match=why):
        zones.soa_serial_span(text.encode())


def test_include_chain_follows_the_admins_includes() -> None:
    edges = [("/n", "/o"), ("/n", "/l"), ("/l", "/x"), ("/x", "/p"), ("/x", "/n")]
    assert zones.include_chain(edges, "/n", "/p") == ["/n", "/l", "/x"]
    assert zones.include_chain(edges, "/n", "/q") is None


# -- a real named, kept by the admin ------------------------------------------------------------

needs_named = pytest.mark.skipif(named_binary() is None, reason="named is not installed")

ADMIN_ZONE = """\
; example.com, kept by hand. Do not reformat: pkinfra must leave this file alone.
$TTL 3600
@\tIN\tSOA\tns1.pkinfra.test. hostmaster.example.com. (
\t\t\t2026010203\t; serial, YYYYMMDDnn
\t\t\t3600 600 1209600 300 )
\t\tIN\tNS\tns1.pkinfra.test.
www\t\tIN\tA\t192.0.2.80   ; the web server
mx1\t\tIN\tA\t192.0.2.25
@\t\tIN\tMX\t10 mx1
; pkinfra's records (DNS-01 CNAMEs, TLSA):
$INCLUDE "{include}"
; the end
"""


@dataclass
class Site:
    base: Path
    layout: zones.Layout
    admin: dict[str, Path]
    ports: tuple[int, int]
    env: dict[str, str]
    processes: list[subprocess.Popen[bytes]]


def _ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(avoid=ports[-1] if ports else 0)
        if port not in ports:
            ports.append(port)
    return ports


def _admin_files(base: Path, layout: zones.Layout, ports: list[int]) -> dict[str, Path]:
    """What the admin wrote: options of their own, their zone and its secondary."""
    work = base / "work"
    rndc_key = base / "rndc.key"
    rndc_key.write_text(
        'key "rndc-key" { algorithm hmac-sha256; secret "'
        + tsig_secret(base / "secrets" / "rndc")
        + '"; };\n'
    )
    options = Path(layout.options_file)
    options.write_text(
        f"""\
// The admin's options.
options {{
\tdirectory "{work}";
\tlisten-on port {ports[0]} {{ 127.0.0.1; }};
\tlisten-on-v6 {{ none; }};
\trecursion no;
\tdnssec-validation no;
\tversion "kept by hand";
\tnotify-rate 1000;
\tstartup-notify-rate 1000;
\tpid-file none;
\tsession-keyfile none;
\tmanaged-keys-directory "{work}";
}};
include "{rndc_key}";
controls {{ inet 127.0.0.1 port {ports[2]} allow {{ 127.0.0.1; }} keys {{ "rndc-key"; }}; }};
"""
    )
    local = Path(layout.include_into)
    local.write_text(
        f"""\
// The admin's zones.
zone "example.com" {{
\ttype primary;
\tfile "{base}/db.example.com";
\tnotify explicit;
\tnotify-delay 0;
\talso-notify {{ 127.0.0.1 port {ports[1]}; }};
\tallow-transfer {{ 127.0.0.1; }};
}};
{layout.include_line}
"""
    )
    conf = Path(layout.admin_conf)
    conf.write_text(f'include "{options}";\ninclude "{local}";\n')
    zone = base / "db.example.com"
    zone.write_text(ADMIN_ZONE.format(include=layout.admin_include("example.com")))
    secondary = base / "secondary"
    secondary.mkdir()
    (secondary / "named.conf").write_text(
        f"""\
options {{
\tdirectory "{secondary}";
\tlisten-on port {ports[1]} {{ 127.0.0.1; }};
\tlisten-on-v6 {{ none; }};
\trecursion no;
\tpid-file none;
\tsession-keyfile none;
\tmanaged-keys-directory "{secondary}";
\tserial-query-rate 1000;
}};
controls {{ }};
zone "example.com" {{ type secondary; file "example.com.bk";
\tprimaries {{ 127.0.0.1 port {ports[0]}; }}; }};
"""
    )
    rndc = base / "bin" / "rndc"
    rndc.parent.mkdir()
    real = shutil.which("rndc") or "/usr/sbin/rndc"
    rndc.write_text(f'#!/bin/sh\nexec {real} -s 127.0.0.1 -p {ports[2]} -k {rndc_key} "$@"\n')
    rndc.chmod(0o755)
    return {"conf": conf, "options": options, "local": local, "zone": zone}


def tsig_secret(path: Path) -> str:
    """A fresh secret for rndc (made like pkinfra's TSIG keys, never printed)."""
    key = tsig.ensure_key(path.parent, path.name)
    return key.read_text().split('"')[3]


def _start(conf: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(named_binary()), "-g", "-4", "-n", "1", "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _ask(port: int, name: str, rdtype: str) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    query.flags &= ~dns.flags.RD
    return dns.query.udp(query, "127.0.0.1", port=port, timeout=2)


def _values(port: int, name: str, rdtype: str) -> set[str]:
    try:
        response = _ask(port, name, rdtype)
    except (dns.exception.DNSException, OSError):
        return set()
    kind = dns.rdatatype.from_text(rdtype)
    return {r.to_text() for rrset in response.answer if rrset.rdtype == kind for r in rrset}


def _wait(check: Any, site: Site, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            logs = "\n".join(
                (site.base / name).read_text()[-2000:] for name in ("named.log", "secondary.log")
            )
            raise AssertionError(f"{what} after {timeout} s\n{logs}")
        time.sleep(0.05)


@pytest.fixture
def admin_site(tmp_path: Path) -> Iterator[Site]:
    if named_binary() is None:
        pytest.skip("named is not installed")
    base = tmp_path
    ports = _ports(3)
    layout = zones.Layout(
        config_file=str(base / "pkinfra" / "named.conf"),
        admin_conf=str(base / "named.conf"),
        include_into=str(base / "named.conf.local"),
        options_file=str(base / "named.conf.options"),
        key_dir=str(base / "pkinfra" / "keys"),
        zone_dir=str(base / "zones"),
        dnssec_key_dir=str(base / "zones" / "keys"),
        working_dir=str(base / "work"),
        port=ports[0],
    )
    for directory in (layout.key_dir, layout.zone_dir, layout.dnssec_key_dir, layout.working_dir):
        Path(directory).mkdir(parents=True)
    admin = _admin_files(base, layout, ports)
    env = {**os.environ, "PATH": f"{base / 'bin'}:{os.environ.get('PATH', '')}:/usr/sbin"}
    site = Site(base, layout, admin, (ports[0], ports[1]), env, [])
    # The admin's site as it ran before pkinfra: without the include and the $INCLUDE line.
    zone_text, local_text = admin["zone"].read_text(), admin["local"].read_text()
    admin["zone"].write_text(zone_text.replace('$INCLUDE "', '; $INCLUDE "'))
    admin["local"].write_text(local_text.replace(layout.include_line, ""))
    site.processes.append(_start(admin["conf"], base / "named.log"))
    site.processes.append(_start(base / "secondary" / "named.conf", base / "secondary.log"))
    try:
        _wait(lambda: _values(ports[1], "example.com", "SOA"), site, "the admin's zone is served")
        # The admin's two steps (README), without a reload: pkinfra's run checks and reloads.
        admin["zone"].write_text(zone_text)
        admin["local"].write_text(local_text)
        yield site
    finally:
        for process in site.processes:
            process.terminate()
            process.wait(timeout=10)


def _facts(site: Site, zone_files: list[zones.ZoneFile], config_file: str) -> dict[str, Any]:
    """The operation's facts, read here by their own commands (as pyinfra runs them)."""

    def read(fact: Any, **kwargs: Any) -> Any:
        out = subprocess.run(
            ["sh", "-c", fact.command(**kwargs)], capture_output=True, text=True, check=True
        )
        return fact.process(out.stdout.splitlines())

    def key(**kwargs: Any) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(kwargs.items()))

    conf = str(site.admin["conf"])
    found: dict[str, Any] = {
        "facts.BindIncludes": {key(conf=conf): read(facts.BindIncludes(), conf=conf)},
        "facts.ProcessId": {"program=named": site.processes[0].pid},
        "facts.FileDigest": {},
        "facts.ZoneHeader": {},
        "facts.AdminZone": {},
    }
    paths = [config_file] + [z.include_path for z in zone_files if z.include_path]
    for path in paths:
        found["facts.FileDigest"][key(path=path)] = read(facts.FileDigest(), path=path)
    for z in zone_files:
        if z.admin_file:
            args = {"path": z.admin_file, "include": z.include_path}
            found["facts.AdminZone"][key(**args)] = read(facts.AdminZone(), **args)
        else:
            found["facts.ZoneHeader"][key(path=z.path)] = read(facts.ZoneHeader(), path=z.path)
    return found


class CommandFailed(Exception):
    """A command of the operation failed on "the host" (its output is the message)."""


def deploy(site: Site, tlsa: list[zones.IncludedTLSA], now: int) -> tuple[list[Any], str | None]:
    """Render, then run the ``named`` operation's commands here as the primary would."""
    inv = load(ROOT, hosts(), {"all": settings(admin_file=str(site.admin["zone"]))})
    rendered = zones.render_site(inv, tlsa=tlsa, layout=site.layout)
    for name in rendered.primary.keys:
        target = Path(site.layout.key_file(name))
        if not target.exists():
            shutil.copy(tsig.ensure_key(site.base / "secrets", name), target)
    config_file = site.layout.config_file
    kwargs: dict[str, Any] = {
        "config": rendered.primary.config[config_file],
        "zones": [asdict(z) for z in rendered.primary.zones],
        "config_file": config_file,
        "admin_conf": str(site.admin["conf"]),
        "include_into": str(site.admin["local"]),
        "working_dir": site.layout.working_dir,
        "now": now,
    }
    fake = FakeHost(_facts(site, rendered.primary.zones, config_file), {})
    with ctx_state.use(FakeState()), ctx_host.use(fake):
        commands = list(dns_ops.named._inner(**kwargs))
    for command in commands:
        if isinstance(command, FileUploadCommand):
            assert isinstance(command.src, StringIO)
            Path(command.dest).write_text(command.src.getvalue())
        elif isinstance(command, FunctionCommand):
            raise AssertionError("no servers given: no execution-time check expected")
        else:
            result = subprocess.run(
                ["sh", "-c", str(command)], capture_output=True, text=True, env=site.env
            )
            if result.returncode != 0:
                raise CommandFailed(f"{command}\n{result.stdout}{result.stderr}")
    return commands, fake.noop_description


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


NOW = int(dt.datetime(2026, 1, 3, 12, tzinfo=dt.UTC).timestamp())


@needs_named
def test_admin_kept_zone_gets_the_include_and_only_a_new_serial(admin_site: Site) -> None:
    site = admin_site
    before = {name: _sha(path) for name, path in site.admin.items()}
    zone_before = site.admin["zone"].read_bytes()

    commands, noop = deploy(site, [DB1_TLSA], NOW)
    assert noop is None and "rndc reconfig" in commands and "rndc reload example.com" in commands

    # The admin's configuration is as they wrote it; the zone differs in its serial only.
    after = {name: _sha(path) for name, path in site.admin.items()}
    assert {k: v for k, v in after.items() if k != "zone"} == {
        k: v for k, v in before.items() if k != "zone"
    }
    assert site.admin["zone"].read_bytes() == zone_before.replace(b"2026010203", b"2026010300", 1)
    assert not list(site.base.glob("*.pkinfra-new*")) and not list(site.base.glob("*/check-*"))

    primary, secondary = site.ports
    challenge = "_acme-challenge.mx1.example.com"
    for port in (primary, secondary):
        _wait(
            lambda port=port: (
                _values(port, "example.com", "SOA")
                and next(iter(_values(port, "example.com", "SOA"))).split()[2] == "2026010300"
            ),
            site,
            f"port {port} serves serial 2026010300",
        )
        assert _values(port, challenge, "CNAME") == {f"{challenge}.shadow.test."}
        assert _values(port, "_25._tcp.mx1.example.com", "CNAME") == {
            "_25._tcp.mx1.example.com.shadow.test."
        }
        assert _values(port, DB1_TLSA.owner, "TLSA") == {DB1_TLSA.value}
        # The admin's own records and its comments' neighbours are served as before.
        assert _values(port, "www.example.com", "A") == {"192.0.2.80"}
    # pkinfra's own zone and the shadow zone came with the included configuration.
    assert _values(primary, "shadow.test", "SOA") and _values(primary, "pkinfra.test", "NS")

    # A second run changes nothing at all.
    settled = {name: _sha(path) for name, path in site.admin.items()}
    commands, noop = deploy(site, [DB1_TLSA], NOW + 60)
    assert commands == [] and noop is not None and "are current" in noop
    assert {name: _sha(path) for name, path in site.admin.items()} == settled

    # A new TLSA record: the include changes, the serial moves once more, both servers serve it.
    commands, _ = deploy(site, [DB1_TLSA, MON1_TLSA], NOW + 120)
    assert "rndc reload example.com" in commands and "rndc reconfig" not in commands
    assert site.admin["zone"].read_bytes() == zone_before.replace(b"2026010203", b"2026010301", 1)
    for port in (primary, secondary):
        _wait(
            lambda port=port: _values(port, MON1_TLSA.owner, "TLSA") == {MON1_TLSA.value},
            site,
            f"port {port} serves the new TLSA record",
        )


@needs_named
def test_a_broken_include_is_never_installed(admin_site: Site) -> None:
    site = admin_site
    zone_before = site.admin["zone"].read_bytes()
    # The admin already has a record where pkinfra's CNAME goes: named-checkzone refuses.
    text = zone_before.replace(b"; the end", b"_acme-challenge.mx1 IN TXT admin")
    site.admin["zone"].write_bytes(text)
    with pytest.raises(CommandFailed) as info:
        deploy(site, [DB1_TLSA], NOW)
    assert "CNAME and other data" in str(info.value)
    assert "failed the check; nothing was installed" in str(info.value)
    assert site.admin["zone"].read_bytes() == text
    assert not Path(site.layout.admin_include("example.com")).exists()
    assert not Path(site.layout.config_file).exists()
    assert not list(site.base.glob("*.pkinfra-new*"))


@needs_named
def test_named_conf_without_pkinfras_include_is_refused_naming_the_line(
    admin_site: Site,
) -> None:
    site = admin_site
    line = site.layout.include_line
    site.admin["local"].write_text(site.admin["local"].read_text().replace(line, f"// {line}"))
    with pytest.raises(Exception) as info:
        deploy(site, [DB1_TLSA], NOW)
    assert str(info.value) == (
        f"named: BIND's configuration does not include pkinfra's: add the line "
        f"'{site.layout.include_line}' to {site.admin['local']} (read through "
        f"{site.admin['conf']}) and run again"
    )


@needs_named
def test_zone_without_the_include_line_is_refused_naming_it(admin_site: Site) -> None:
    site = admin_site
    text = site.admin["zone"].read_text().replace("$INCLUDE", "; $INCLUDE")
    site.admin["zone"].write_text(text)
    with pytest.raises(Exception) as info:
        deploy(site, [DB1_TLSA], NOW)
    assert str(info.value) == (
        f"zone example.com: {site.admin['zone']} does not include pkinfra's records: add the "
        f'line $INCLUDE "{site.layout.admin_include("example.com")}" to it'
    )
    assert site.admin["zone"].read_text() == text
