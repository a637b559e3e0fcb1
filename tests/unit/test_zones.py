"""Zone and BIND configuration rendering (pkinfra.zones), TSIG secrets (pkinfra.tsig).

Golden files pin the lab inventory's rendering (regenerate with PKINFRA_UPDATE_GOLDEN=1); the
output is also checked by BIND's own tools and served by a throw-away ``named`` on 127.0.0.1.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from pkinfra import tsig, zones
from pkinfra.dnsupdate import DNSUpdateError, RFC2136Client, TSIGKey
from pkinfra.model import (
    Inventory,
    InventoryError,
    check_record_value,
    inventory_groups,
    load,
    load_inventory_file,
    read_group_data,
)
from tests.unit.named_fixture import free_port, named_binary

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "dns_golden"
DB1_TLSA = zones.IncludedTLSA("_5432._tcp.db1.example.test", "3 1 1 " + "ab" * 32)


def lab_inventory() -> Inventory:
    return load_inventory_file(ROOT / "inventory.py")


def lab_groups() -> dict[str, Any]:
    """The lab inventory's groups, as data (a copy the test may change)."""
    # One namespace for globals and locals: the inventory's helper functions read its globals.
    namespace: dict[str, Any] = {"__file__": str(ROOT / "x.py")}
    text = (ROOT / "inventory.py").read_text().replace("_inventory = load_or_exit(", "_g = (")
    exec(compile(text, str(ROOT / "inventory.py"), "exec"), namespace)
    return copy.deepcopy(inventory_groups(namespace))


def inventory_from(groups: dict[str, Any]) -> Inventory:
    return load(ROOT, groups, read_group_data(ROOT / "group_data"))


def golden_name(path: str) -> str:
    return path.strip("/").replace("/", "_")


def test_lab_rendering_matches_the_golden_files() -> None:
    site = zones.render_site(lab_inventory(), tlsa=[DB1_TLSA])
    rendered: dict[str, str] = {}
    for path, text in site.primary.config.items():
        rendered[f"primary_{golden_name(path)}"] = text
    for fqdn, server in site.secondaries.items():
        for path, text in server.config.items():
            rendered[f"{fqdn}_{golden_name(path)}"] = text
    for zone in site.primary.zones:
        if zone.admin_file is None:  # the admin's own file is not pkinfra's rendering
            rendered[golden_name(zone.path)] = zone.render(2026010100)
        if zone.include_path:
            rendered[golden_name(zone.include_path)] = zone.include_text
    if os.environ.get("PKINFRA_UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        for name, text in rendered.items():
            (GOLDEN / name).write_text(text)
    assert sorted(p.name for p in GOLDEN.iterdir() if p.is_file()) == sorted(rendered)
    for name, text in rendered.items():
        assert (GOLDEN / name).read_text() == text, name


def test_site_facts_of_the_lab() -> None:
    site = zones.render_site(lab_inventory())
    assert site.host_keys == ["mx1.example.test", "web1.example.test"]
    assert site.signed_zones == ["example.test", "shadow.test"]
    assert site.all_zones == ["example.test", "unsigned.test", "shadow.test"]
    assert list(site.secondaries) == ["ns2.example.test"]
    assert site.primary.keys == [tsig.TRANSFER_KEY, "mx1.example.test", "web1.example.test"]
    shadow = site.primary.zones[-1]
    assert shadow.dynamic and shadow.zone == "shadow.test"
    # Negative answers cached for negative_ttl: SOA TTL and minimum.
    soa = next(line for line in shadow.render(7).splitlines() if "\tSOA\t" in line)
    assert soa.split()[1] == "1" and soa.endswith(" 1 )")


def test_every_delegation_has_its_cname_and_grant() -> None:
    inventory = lab_inventory()
    site = zones.render_site(inventory)
    local = site.primary.config[zones.Layout().config_file]
    main = site.primary.zones[0].text
    delegations = inventory.all_delegations()
    assert len(delegations) == 4
    for d in delegations:
        assert d.grant in local
        assert f"{d.owner}.\tIN\tCNAME\t{d.target}." in main
    assert local.count("\t\tgrant ") == 4


def test_adding_a_host_adds_exactly_its_grants_cnames_and_key() -> None:
    groups = lab_groups()
    before = zones.render_site(inventory_from(groups))
    groups["mail"].append(
        (
            "@docker/pkinfra-mx2",
            {
                "fqdn": "mx2.example.test",
                "address": "172.29.53.26",
                "certificates": [
                    {
                        "name": "mail",
                        "names": ["mx2.example.test"],
                        "issuer": "acme",
                        "challenge": "dns-01",
                    }
                ],
                "tlsa": [{"port": 25, "certificate": "mail"}],
            },
        )
    )
    after = zones.render_site(inventory_from(groups))
    local = zones.Layout().config_file

    def lines(text: str) -> set[str]:
        return set(text.splitlines())

    added = lines(after.primary.config[local]) - lines(before.primary.config[local])
    assert added == {
        '\t\tgrant "mx2.example.test" name _25._tcp.mx2.example.test.shadow.test. TLSA;',
        '\t\tgrant "mx2.example.test" name _acme-challenge.mx2.example.test.shadow.test. TXT;',
        'include "/etc/bind/pkinfra/keys/mx2.example.test.key";',
    }
    assert not lines(before.primary.config[local]) - lines(after.primary.config[local])
    zone_added = lines(after.primary.zones[0].text) - lines(before.primary.zones[0].text)
    body = {line for line in zone_added if not line.startswith("; pkinfra-zone")}
    assert body == {
        "mx2.example.test.\tIN\tA\t172.29.53.26",
        "_acme-challenge.mx2.example.test.\tIN\tCNAME\t_acme-challenge.mx2.example.test.shadow.test.",
        "_25._tcp.mx2.example.test.\tIN\tCNAME\t_25._tcp.mx2.example.test.shadow.test.",
    }
    assert after.host_keys == ["mx1.example.test", "mx2.example.test", "web1.example.test"]
    # The other zones did not change at all: their serials stay.
    assert [z.content for z in after.primary.zones[1:]] == [
        z.content for z in before.primary.zones[1:]
    ]


def test_content_hash_ignores_the_serial_and_follows_the_include() -> None:
    inventory = lab_inventory()
    plain = zones.render_site(inventory).primary.zones[0]
    again = zones.render_site(inventory).primary.zones[0]
    with_tlsa = zones.render_site(inventory, tlsa=[DB1_TLSA]).primary.zones[0]
    assert plain.content == again.content
    assert with_tlsa.content != plain.content
    assert with_tlsa.text == plain.text.replace(plain.content, with_tlsa.content)
    header = plain.render(42).splitlines()[0]
    assert zones.parse_header(header) == (42, plain.content)
    assert zones.parse_header("; something else") == (None, None)


def test_next_serial_only_grows() -> None:
    assert zones.next_serial(None, 1_800_000_000) == 1_800_000_000
    assert zones.next_serial(1_700_000_000, 1_800_000_000) == 1_800_000_000
    # A clock behind the last serial (or two changes in one second) still increases it.
    assert zones.next_serial(1_800_000_005, 1_800_000_000) == 1_800_000_006


def test_cname_beside_other_data_is_refused_naming_the_hosts() -> None:
    groups = lab_groups()
    web1 = groups["web"][0][1]
    web1["records"].append({"name": "www.example.test", "type": "A", "value": "192.0.2.1"})
    with pytest.raises(InventoryError) as info:
        inventory_from(groups)
    assert [str(p) for p in info.value.problems] == [
        "web1.example.test: records[0].name: 'www.example.test' has a CNAME and other data: "
        "web1.example.test records[1] (A)"
    ]


def test_the_renderer_still_refuses_a_cname_beside_other_data() -> None:
    # The model refuses this when the inventory loads; the renderer checks the rows it makes.
    rows = [
        zones._Row("www.example.test", "CNAME", "web1.example.test.", why="web1: records[0]"),
        zones._Row("www.example.test", "A", "192.0.2.1", why="mx1: records[0]"),
    ]
    with pytest.raises(zones.ZoneError, match=r"www\.example\.test has a CNAME and other data"):
        zones._check_conflicts(rows, "example.test")


def test_invalid_record_value_names_host_and_record() -> None:
    groups = lab_groups()
    groups["mail"][0][1]["records"].append(
        {"name": "mx1.example.test", "type": "A", "value": "not-an-address"}
    )
    with pytest.raises(
        InventoryError, match=r"mx1.example.test: records\[1\].value: not a valid A"
    ):
        inventory_from(groups)


def test_txt_values_are_quoted() -> None:
    groups = lab_groups()
    groups["mail"][0][1]["records"].append(
        {"name": "example.test", "type": "TXT", "value": 'v=spf1 mx -all "x"'}
    )
    text = zones.render_site(inventory_from(groups)).primary.zones[0].text
    assert 'example.test.\tIN\tTXT\t"v=spf1 mx -all \\"x\\""' in text


def test_caa_records_from_the_inventory() -> None:
    groups = lab_groups()
    data = read_group_data(ROOT / "group_data")
    data["all"]["zones"] = [
        {"name": "example.test", "caa": ["letsencrypt.org", "pki.goog"]},
        {"name": "unsigned.test", "signed": False},
    ]
    inventory = load(ROOT, groups, data)
    assert zones.caa_values(inventory, "unsigned.test") == []
    # The lab's example.test names are issued by http-01 (web1) and dns-01 (mx1), no wildcard.
    expected = [
        '0 issue "letsencrypt.org; validationmethods=dns-01,http-01"',
        '0 issue "pki.goog; validationmethods=dns-01,http-01"',
        '0 issuewild ";"',
    ]
    assert zones.caa_values(inventory, "example.test") == expected
    for value in expected:
        assert check_record_value("CAA", value) == value  # one value, as dnspython writes it
    text = zones.render_site(inventory).primary.zones[0].text
    for value in expected:
        assert f"example.test.\tIN\tCAA\t{value}\n" in text
    # A wildcard of the zone: wildcards may be issued (the issue records cover them).
    groups["mail"][0][1]["certificates"][0]["names"].append("*.mail.example.test")
    web = groups["web"][0][1]["certificates"][0]
    web.update(challenge="dns-01")
    web.pop("webroot")
    inventory = load(ROOT, groups, data)
    assert zones.caa_values(inventory, "example.test") == [
        '0 issue "letsencrypt.org; validationmethods=dns-01"',
        '0 issue "pki.goog; validationmethods=dns-01"',
    ]
    # Without `caa` nothing changes (the lab's golden files have no CAA record).
    assert "CAA" not in zones.render_site(lab_inventory()).primary.zones[0].text


def test_unbound_config_of_the_lab() -> None:
    anchor = zones.TrustAnchor("example.test", 257, 3, 13, "AAAA")
    assert zones.anchors_text([anchor]) == 'trust-anchor: "example.test. DNSKEY 257 3 13 AAAA"\n'
    text = zones.render_unbound(lab_inventory(), "/etc/unbound/anchors.conf")
    assert 'include: "/etc/unbound/anchors.conf"' in text
    assert "cache-max-negative-ttl: 1" in text and "aggressive-nsec: no" in text
    assert "access-control: 172.29.53.0/24 allow" in text
    for zone in ("example.test", "unsigned.test", "shadow.test"):
        assert f'local-zone: "{zone}." transparent' in text
        assert f'name: "{zone}."\n\tstub-addr: 172.29.53.10\n\tstub-addr: 172.29.53.11' in text
    if shutil.which("unbound-checkconf"):
        path = Path(os.environ.get("TMPDIR", "/tmp")) / f"pkinfra-unbound-{os.getpid()}.conf"
        path.write_text(text)
        try:
            result = subprocess.run(
                ["unbound-checkconf", str(path)], capture_output=True, text=True, check=False
            )
        finally:
            path.unlink()
        assert result.returncode == 0, result.stdout + result.stderr


def test_anchors_are_the_key_signing_keys() -> None:
    anchors = zones.anchors_from_rrsets(
        "example.test",
        [(257, 3, 13, b"ksk"), (256, 3, 13, b"zsk"), (257 | 0x80, 3, 13, b"r")],
    )
    assert [a.to_text() for a in anchors] == ["example.test. DNSKEY 257 3 13 a3Nr"]


# -- TSIG secrets -------------------------------------------------------------------------------


def test_tsig_key_is_made_once_0600_and_readable_by_the_client(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    path = tsig.ensure_key(secrets, "mx1.example.test")
    assert path == secrets / "mx1.example.test.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert secrets.stat().st_mode & 0o777 == 0o700
    first = path.read_text()
    assert tsig.ensure_key(secrets, "mx1.example.test").read_text() == first
    key = TSIGKey.from_file(path)
    assert key.algorithm == "hmac-sha256" and len(key.secret) == 32
    assert tsig.ensure_key(secrets, "web1.example.test").read_text() != first


def test_tsig_key_file_problems_never_show_the_secret(tmp_path: Path) -> None:
    path = tsig.ensure_key(tmp_path, "mx1.example.test")
    secret = path.read_text().split('"')[3]
    path.chmod(0o644)
    with pytest.raises(tsig.TSIGError, match="readable by group or others") as info:
        tsig.ensure_key(tmp_path, "mx1.example.test")
    assert secret not in str(info.value)
    path.chmod(0o600)
    other = tmp_path / "web1.example.test.key"
    shutil.copy(path, other)
    with pytest.raises(tsig.TSIGError, match=r"holds key mx1\.example\.test") as info:
        tsig.ensure_key(tmp_path, "web1.example.test")
    assert secret not in str(info.value)
    with pytest.raises(tsig.TSIGError, match="not usable as a file name"):
        tsig.key_path(tmp_path, "../evil")


# -- BIND's own checks, and a throw-away named serving the rendering ----------------------------

needs_named = pytest.mark.skipif(named_binary() is None, reason="named is not installed")


def admin_options(base: Path, port: int = 53) -> str:
    """The admin's own options (what README recommends), for a throw-away named as a test user."""
    return f"""\
options {{
\tdirectory "{base}/work";
\tlisten-on port {port} {{ 127.0.0.1; }};
\tlisten-on-v6 {{ none; }};
\trecursion no;
\tdnssec-validation no;
\tnotify-rate {zones.QUERY_RATE};
\tstartup-notify-rate {zones.QUERY_RATE};
\tserial-query-rate {zones.QUERY_RATE};
\tpid-file none;
\tsession-keyfile none;
\tmanaged-keys-directory "{base}/work";
}};
"""


def install(site: zones.Site, layout: zones.Layout, base: Path, serial: int) -> Path:
    """Write the primary's files as the deploy would, and the admin's named.conf including
    pkinfra's; returns that named.conf."""
    Path(layout.config_file).parent.mkdir(parents=True, exist_ok=True)
    for directory in (layout.key_dir, layout.zone_dir, layout.dnssec_key_dir, layout.working_dir):
        Path(directory).mkdir(parents=True, exist_ok=True)
    for key in site.primary.keys:
        shutil.copy(tsig.ensure_key(base / "secrets", key), layout.key_file(key))
    for path, text in site.primary.config.items():
        Path(path).write_text(text)
    for zone in site.primary.zones:
        Path(zone.path).write_text(zone.render(serial))
        if zone.include_path:
            Path(zone.include_path).write_text(zone.include_text)
    Path(layout.options_file).write_text(admin_options(base, layout.port))
    Path(layout.include_into).write_text(f"{layout.include_line}\n")
    conf = Path(layout.admin_conf)
    conf.write_text(f'include "{layout.options_file}";\ninclude "{layout.include_into}";\n')
    return conf


def test_layout(base: Path, port: int = 53) -> zones.Layout:
    return zones.Layout(
        config_file=str(base / "pkinfra" / "named.conf"),
        admin_conf=str(base / "named.conf"),
        include_into=str(base / "named.conf.local"),
        options_file=str(base / "named.conf.options"),
        key_dir=str(base / "keys"),
        zone_dir=str(base / "zones"),
        dnssec_key_dir=str(base / "zones" / "keys"),
        working_dir=str(base / "work"),
        port=port,
    )


test_layout.__test__ = False  # type: ignore[attr-defined]


@needs_named
def test_rendered_config_and_zones_pass_bind_checks(tmp_path: Path) -> None:
    layout = test_layout(tmp_path)
    site = zones.render_site(lab_inventory(), tlsa=[DB1_TLSA], layout=layout)
    conf = install(site, layout, tmp_path, 2026010100)
    result = subprocess.run(["named-checkconf", "-z", str(conf)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # unsigned.test is the admin's (its zone statement too): pkinfra declares the others.
    for name in ("example.test", "shadow.test"):
        assert f"zone {name}/IN: loaded serial 2026010100" in result.stdout
    assert "unsigned.test" not in result.stdout
    for zone in site.primary.zones:
        if zone.admin_file is not None:
            continue
        check = subprocess.run(
            ["named-checkzone", zone.zone, zone.path], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout
    secondary = site.secondaries["ns2.example.test"]
    for path, text in secondary.config.items():
        Path(path).write_text(text)
    result = subprocess.run(["named-checkconf", str(conf)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_named
def test_a_broken_zone_fails_named_checkzone_with_its_reason(tmp_path: Path) -> None:
    groups = lab_groups()
    groups["mail"][0][1]["records"].append(
        {"name": "big.example.test", "type": "A", "value": "192.0.2.1", "ttl": 99999999999}
    )
    layout = test_layout(tmp_path)
    site = zones.render_site(inventory_from(groups), layout=layout)
    install(site, layout, tmp_path, 1)
    zone = site.primary.zones[0]
    check = subprocess.run(
        ["named-checkzone", zone.zone, zone.path], capture_output=True, text=True
    )
    assert check.returncode != 0
    assert "99999999999" in check.stdout and "not loaded due to errors" in check.stdout


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[zones.Site, Path, int]]:
    if named_binary() is None:
        pytest.skip("named is not installed")
    base = tmp_path_factory.mktemp("served")
    port = free_port()
    layout = test_layout(base, port)
    site = zones.render_site(lab_inventory(), tlsa=[DB1_TLSA], layout=layout)
    conf = install(site, layout, base, 2026010100)
    log = (base / "named.log").open("wb")
    process = subprocess.Popen(
        [str(named_binary()), "-g", "-4", "-n", "1", "-c", str(conf)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while not _serves(port, "shadow.test", dns.rdatatype.DNSKEY):
            assert process.poll() is None, (base / "named.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (base / "named.log").read_text()[-3000:]
            time.sleep(0.05)
        yield site, base, port
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def _ask(port: int, name: str, rdtype: Any) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, want_dnssec=True)
    query.flags &= ~dns.flags.RD
    return dns.query.udp(query, "127.0.0.1", port=port, timeout=2)


def _serves(port: int, name: str, rdtype: Any) -> bool:
    try:
        response = _ask(port, name, rdtype)
    except (dns.exception.DNSException, OSError):
        return False
    return any(rrset.rdtype == rdtype for rrset in response.answer)


def test_named_serves_the_tlsa_include_and_the_delegations(
    served: tuple[zones.Site, Path, int],
) -> None:
    _site, _base, port = served
    response = _ask(port, "_5432._tcp.db1.example.test", "TLSA")
    assert [r.to_text() for rrset in response.answer if rrset.rdtype == 52 for r in rrset] == [
        DB1_TLSA.value
    ]
    assert any(rrset.rdtype == dns.rdatatype.RRSIG for rrset in response.answer), "signed"
    response = _ask(port, "_acme-challenge.mx1.example.test", "TXT")
    cname = next(r for r in response.answer if r.rdtype == dns.rdatatype.CNAME)
    assert cname[0].target.to_text() == "_acme-challenge.mx1.example.test.shadow.test."
    # The negative TTL of the shadow zone is 1 s.
    response = _ask(port, "nothing-here.shadow.test", "TXT")
    assert response.rcode() == dns.rcode.NXDOMAIN
    soa = next(r for r in response.authority if r.rdtype == dns.rdatatype.SOA)
    assert soa.ttl == 1


def test_update_policy_lets_each_key_change_only_its_own_names(
    served: tuple[zones.Site, Path, int],
) -> None:
    site, base, port = served
    server = f"127.0.0.1#{port}"

    def client(key: str) -> RFC2136Client:
        return RFC2136Client(
            TSIGKey.from_file(tsig.key_path(base / "secrets", key)),
            resolvers=[server],
            port=port,
            primary=server,
            timeout=2,
        )

    mx1, web1 = client("mx1.example.test"), client("web1.example.test")
    mx1.add("_acme-challenge.mx1.example.test.shadow.test", "TXT", "token", 5)
    mx1.add("_25._tcp.mx1.example.test.shadow.test", "TLSA", "3 1 1 " + "cd" * 32, 60)
    web1.add("_443._tcp.web1.example.test.shadow.test", "TLSA", "3 1 1 " + "ef" * 32, 60)
    refused = [
        (mx1, "_443._tcp.web1.example.test.shadow.test", "TLSA", "3 1 1 " + "00" * 32),
        (mx1, "_acme-challenge.mx1.example.test.shadow.test", "A", "192.0.2.1"),
        (mx1, "mx1.example.test", "TXT", "x"),
        (web1, "_acme-challenge.mx1.example.test.shadow.test", "TXT", "x"),
        (web1, "www.example.test.shadow.test", "TXT", "x"),
    ]
    for who, name, rdtype, value in refused:
        with pytest.raises(DNSUpdateError) as info:
            who.add(name, rdtype, value, 5)
        assert info.value.rcode == "REFUSED", (name, rdtype, str(info.value))
    assert site.primary.zones[-1].dynamic
