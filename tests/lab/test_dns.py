"""The DNS master in the lab: BIND primary + secondary, DNSSEC through the resolver, the shadow
zone's update-policy with the hosts' real keys, reload-not-restart, refused broken zones, and
TSIG secrets that never show in pyinfra's output.

One deploy of deploys/dns.py + deploys/resolver.py for the module; the tests that change the
inventory use a temporary copy of inventory.py and group_data/ (with pki/ and .lab/ linked, so
the keys stay the same) and deploy to ns1 only (``--limit``: the model is still the whole one).
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import dns.renderer
import pytest

from lab.topology import pyinfra_name
from pkinfra import install, publication, zones
from pkinfra.agent import paths
from pkinfra.dnsupdate import DNSUpdateError, RFC2136Client, TSIGKey
from pkinfra.model import Delegation, Inventory, load_inventory_file
from tests.lab.run import docker, docker_exec, limits, pyinfra

ROOT = Path(__file__).resolve().parents[2]
NS1, NS2, RESOLVER = "172.29.53.10", "172.29.53.11", "172.29.53.53"
NS1_HOST = "ns1.example.test"
WEB1_HOST = "web1.example.test"
DEPLOYS = ("deploys/dns.py", "lab/deploys/resolver.py")

pytestmark = pytest.mark.lab


def named_pid() -> str:
    return docker("pkinfra-ns1", "pidof named").strip()


def dig(*args: str) -> str:
    return subprocess.run(
        ["dig", "+time=2", "+tries=1", *args], capture_output=True, text=True, timeout=10
    ).stdout


def serial(server: str, zone: str) -> int | None:
    query = dns.message.make_query(zone, dns.rdatatype.SOA)
    query.flags &= ~dns.flags.RD
    response = dns.query.udp(query, server, timeout=2)
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.SOA:
            return int(rrset[0].serial)
    return None


def wait_same_serial(zone: str, within: float = 2.0) -> float:
    """Seconds until ns2 serves ns1's serial of ``zone``; fails after ``within``."""
    started = time.monotonic()
    while True:
        primary, secondary = serial(NS1, zone), serial(NS2, zone)
        if primary is not None and primary == secondary:
            return time.monotonic() - started
        assert time.monotonic() - started < within, f"{zone}: ns1 {primary}, ns2 {secondary}"
        time.sleep(0.02)


def secrets() -> list[str]:
    found = []
    for path in sorted((ROOT / "pki" / "secrets").glob("*.key")):
        secret = path.read_text().split('secret "')[1].split('"')[0]
        found += [secret, base64.b64decode(secret).hex()]
    assert found, "no TSIG secrets on the controller"
    return found


def key(fqdn: str) -> TSIGKey:
    return TSIGKey.from_file(ROOT / "pki" / "secrets" / f"{fqdn}.key")


@pytest.fixture(scope="module")
def deployed(site_deployed: str) -> Inventory:
    # The hosts these tests use (the DNS deploy still renders from the whole inventory).
    hosts = ["ns1", "ns2", "resolver", "mx1", "web1"]
    run = pyinfra(*DEPLOYS, *limits(*[pyinfra_name(h) for h in hosts]))
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    return load_inventory_file(ROOT / "inventory.py")


def ns1_is_current() -> bool:
    """Whether ns1 holds what the real inventory renders (config and main zone), cheaply."""
    site, _ = publication.dns_site(load_inventory_file(ROOT / "inventory.py"))
    local = zones.Layout().config_file
    want = hashlib.sha256(site.primary.config[local].encode()).hexdigest()
    main = site.primary.zones[0]
    out = docker("pkinfra-ns1", f"sha256sum {local}; head -n 1 {main.path}")
    return want in out and f"content={main.content}" in out


@pytest.fixture(scope="module")
def inventory_copy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of the lab inventory that the deploy-behaviour tests change one after the other.

    ns1 is converged back to the real inventory at the end, unless a test already did.
    """
    yield copy_inventory(tmp_path_factory.mktemp("inventory"))
    if not ns1_is_current():
        back = pyinfra("deploys/dns.py", "--limit", NS1_HOST, "--limit", WEB1_HOST)
        assert back.returncode == 0, back.stdout[-3000:]


def add_record(inventory: Path, record: str) -> None:
    text = inventory.read_text()
    anchor = '"records": [\n                {"name": "www.example.test"'
    assert text.count(anchor) == 1
    inventory.write_text(text.replace('"records": [\n', f'"records": [\n{record},\n', 1))


# -- DNSSEC through the lab resolver ------------------------------------------------------------


@pytest.mark.parametrize(("name", "rdtype"), [("ns1.example.test", "A"), ("shadow.test", "SOA")])
def test_resolver_validates_each_signed_zone(deployed: Inventory, name: str, rdtype: str) -> None:
    out = dig("+dnssec", f"@{RESOLVER}", name, rdtype)
    assert "status: NOERROR" in out, out
    flags = out.split(";; flags:")[1].split(";")[0].split()
    assert "ad" in flags, out


def test_unsigned_zone_answers_without_ad(deployed: Inventory) -> None:
    out = dig("+dnssec", f"@{RESOLVER}", "unsigned.test", "SOA")
    assert "status: NOERROR" in out, out
    assert "ad" not in out.split(";; flags:")[1].split(";")[0].split()


def test_every_zone_is_on_the_secondary_at_the_primarys_serial(deployed: Inventory) -> None:
    for zone in ("example.test", "unsigned.test", "shadow.test"):
        wait_same_serial(zone)


def test_update_with_a_hosts_real_key_is_validated_and_on_the_secondary(
    deployed: Inventory,
) -> None:
    client = RFC2136Client(key("mx1.example.test"), resolvers=[RESOLVER], timeout=2)
    target, _chain = client.follow_cnames("_acme-challenge.mx1.example.test")
    assert target.to_text() == "_acme-challenge.mx1.example.test.shadow.test."
    token = uuid.uuid4().hex
    client.add(target, "TXT", token, 5)
    try:
        timings = client.wait_visible(target, "TXT", token, timeout=2)
        assert set(timings) == {NS1, NS2}
        wait_same_serial("shadow.test")
        # Discovery asked the resolver about the target before it existed: that negative
        # answer is cached for the shadow zone's negative TTL (1 s), no longer.
        deadline = time.monotonic() + 3
        while True:
            out = dig("+dnssec", f"@{RESOLVER}", "_acme-challenge.mx1.example.test", "TXT")
            if token in out or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert token in out, out
        assert "ad" in out.split(";; flags:")[1].split(";")[0].split(), out
    finally:
        client.delete(target, "TXT", token)


# -- isolation ----------------------------------------------------------------------------------


def _try(client: RFC2136Client, name: str, rdtype: str, value: str) -> str:
    try:
        client.add(name, rdtype, value, 5)
    except DNSUpdateError as exc:
        return exc.rcode or str(exc)
    client.delete(name, rdtype, value)
    return "OK"


VALUES = {"TXT": '"isolation"', "TLSA": "3 1 1 " + "ab" * 32, "A": "192.0.2.7"}


def test_each_key_changes_only_its_own_names_and_types(deployed: Inventory) -> None:
    hosts = {
        fqdn: deployed.delegations(spec)
        for fqdn, spec in deployed.hosts.items()
        if deployed.delegations(spec)
    }
    assert sorted(hosts) == ["mx1.example.test", "web1.example.test"]
    results: dict[tuple[str, str, str, str], str] = {}
    expected: dict[tuple[str, str, str, str], str] = {}

    def check(who: str, d: Delegation, rdtype: str, want: str) -> None:
        client = RFC2136Client(key(who), resolvers=[RESOLVER], primary=NS1, timeout=2)
        results[(who, d.target, rdtype, want)] = _try(client, d.target, rdtype, VALUES[rdtype])
        expected[(who, d.target, rdtype, want)] = want

    for who, own in hosts.items():
        for d in own:
            check(who, d, d.rdtype, "OK")
            other = "A" if d.rdtype != "A" else "TXT"
            check(who, d, other, "REFUSED")
        for other_host, theirs in hosts.items():
            if other_host != who:
                for d in theirs:
                    check(who, d, d.rdtype, "REFUSED")
        client = RFC2136Client(key(who), resolvers=[RESOLVER], primary=NS1, timeout=2)
        for name in (who, f"_acme-challenge.{who}", "example.test"):
            results[(who, name, "TXT", "main")] = _try(client, name, "TXT", VALUES["TXT"])
            expected[(who, name, "TXT", "main")] = "REFUSED"
    assert results == expected


# -- faults -------------------------------------------------------------------------------------


def test_wrong_secret_is_one_clear_line_in_bounded_time(deployed: Inventory) -> None:
    wrong = TSIGKey.from_text(
        "mx1.example.test", "hmac-sha256", base64.b64encode(b"x" * 32).decode()
    )
    client = RFC2136Client(wrong, resolvers=[RESOLVER], primary=NS1, timeout=2)
    started = time.monotonic()
    with pytest.raises(DNSUpdateError) as info:
        client.add("_acme-challenge.mx1.example.test.shadow.test", "TXT", "x", 5)
    assert time.monotonic() - started < 5
    text = str(info.value)
    assert "\n" not in text and "BADSIG" in text and "wrong secret" in text, text


def test_primary_down_is_one_clear_line_in_bounded_time(deployed: Inventory) -> None:
    client = RFC2136Client(
        key("mx1.example.test"), resolvers=[RESOLVER], primary="172.29.53.99", timeout=1
    )
    started = time.monotonic()
    with pytest.raises(DNSUpdateError) as info:
        client.add("_acme-challenge.mx1.example.test.shadow.test", "TXT", "x", 5)
    assert time.monotonic() - started < 4
    assert "\n" not in str(info.value) and "172.29.53.99" in str(info.value)


class _Skewed:
    """The time module, an hour ahead (what a host with a wrong clock signs with)."""

    def time(self) -> float:
        return time.time() + 3600

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def test_clock_skew_is_one_clear_line_in_bounded_time(
    deployed: Inventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = RFC2136Client(key("mx1.example.test"), resolvers=[RESOLVER], primary=NS1, timeout=2)
    name = "_acme-challenge.mx1.example.test.shadow.test"
    client.zone_of(name)
    # dnspython 2.3 signs in dns.message, later versions in dns.renderer.
    monkeypatch.setattr(dns.message, "time", _Skewed())
    monkeypatch.setattr(dns.renderer, "time", _Skewed())
    started = time.monotonic()
    with pytest.raises(DNSUpdateError) as info:
        client.add(name, "TXT", "skewed", 5)
    assert time.monotonic() - started < 5
    assert info.value.rcode == "BADTIME" and "\n" not in str(info.value), str(info.value)


# -- deploy behaviour (in this order: each builds on the state the previous one left) ----------


def copy_inventory(directory: Path) -> Path:
    shutil.copy(ROOT / "inventory.py", directory / "inventory.py")
    shutil.copytree(ROOT / "group_data", directory / "group_data")
    for shared in ("pki", ".lab"):
        (directory / shared).symlink_to(ROOT / shared)
    return directory / "inventory.py"


def test_one_record_changed_is_one_reload_and_no_restart(
    deployed: Inventory, inventory_copy: Path
) -> None:
    pid = named_pid()
    before = serial(NS1, "example.test")
    token = uuid.uuid4().hex
    add_record(
        inventory_copy,
        f'                {{"name": "probe.example.test", "type": "TXT", "value": "{token}"}}',
    )
    run = pyinfra("deploys/dns.py", "--limit", NS1_HOST, "-vv", inventory=inventory_copy)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert out.count("rndc reload") == 1 and "rndc reload example.test" in out, out[-4000:]
    assert "rndc reconfig" not in out and "named start" not in out
    assert named_pid() == pid
    wait_same_serial("example.test")
    after = serial(NS1, "example.test")
    assert before is not None and after is not None and after > before
    assert token in dig(f"@{NS2}", "+norec", "probe.example.test", "TXT")

    again = pyinfra("deploys/dns.py", "--limit", NS1_HOST, "-vv", inventory=inventory_copy)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-4000:]
    assert "rndc" not in out.replace("rndc.key", "")
    total = out.split("Grand total")[1].split("\n")[0].split()
    assert total[1] == "-", f"a second run changed something: {total}"
    assert named_pid() == pid


def test_a_host_without_delegations_loses_its_grant_cname_and_key(
    deployed: Inventory, inventory_copy: Path
) -> None:
    text = inventory_copy.read_text()
    publication = '"tlsa": [{"port": 443, "certificate": "web"}],'
    assert text.count(publication) == 1
    inventory_copy.write_text(text.replace(publication, ""))
    pid = named_pid()
    run = pyinfra("deploys/dns.py", "--limit", NS1_HOST, "-vv", inventory=inventory_copy)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert "rndc reconfig" in out and "rndc reload example.test" in out
    assert named_pid() == pid
    keys = docker("pkinfra-ns1", "ls /etc/bind/pkinfra/keys").split()
    assert keys == ["mx1.example.test.key", "pkinfra-transfer.key"]
    assert "CNAME" not in dig(f"@{NS1}", "+norec", "_443._tcp.web1.example.test", "TLSA")
    client = RFC2136Client(key("web1.example.test"), resolvers=[RESOLVER], primary=NS1, timeout=2)
    with pytest.raises(DNSUpdateError) as info:
        client.add("_443._tcp.web1.example.test.shadow.test", "TLSA", VALUES["TLSA"], 60)
    assert info.value.rcode in ("BADKEY", "NOTAUTH", "REFUSED"), str(info.value)


def test_tsig_secrets_never_appear_in_dry_diff_or_verbose_output(
    deployed: Inventory, inventory_copy: Path
) -> None:
    # After the test above, ns1 lacks web1's key; remove web1's own copy too, so that both
    # runs below really upload secrets (and the real one converges ns1 back to the inventory).
    docker("pkinfra-web1", "rm -f /etc/pkinfra/tsig.key")
    limit = ["--limit", NS1_HOST, "--limit", WEB1_HOST]
    dry = pyinfra("deploys/dns.py", *limit, "--dry", "-vvv", "--diff", yes=False)
    real = pyinfra("deploys/dns.py", *limit, "-vvv", "--diff")
    assert dry.returncode == 0 and real.returncode == 0, real.stdout[-3000:]
    changes = dry.stdout + dry.stderr
    assert re.search(r"This host's TSIG key\s+1 \(web1.example.test\)", changes), changes
    # The key's name is web1's FQDN, or k<N>.<FQDN> after rotations (test_dns_rotation.py).
    assert re.search(r"TSIG key (k\d+\.)?web1.example.test\s+1 \(ns1.example.test\)", changes), (
        changes
    )
    for secret in secrets():
        for run in (dry, real):
            assert secret not in run.stdout and secret not in run.stderr
    installed = docker(
        "pkinfra-web1",
        "stat -c '%a %U %G' /etc/pkinfra/tsig.key && sha256sum /etc/pkinfra/tsig.key",
    )
    local = hashlib.sha256((ROOT / "pki/secrets/web1.example.test.key").read_bytes()).hexdigest()
    assert installed.startswith("600 root root") and local in installed
    on_primary = docker("pkinfra-ns1", "stat -c '%n %a %U %G' /etc/bind/pkinfra/keys/*.key")
    assert len(on_primary.splitlines()) == 3
    assert {line.split(" ", 1)[1] for line in on_primary.splitlines()} == {"640 root bind"}
    assert ns1_is_current()


def test_a_broken_zone_is_never_installed(deployed: Inventory, tmp_path: Path) -> None:
    inventory = copy_inventory(tmp_path)
    pid = named_pid()
    path = "/var/lib/bind/pkinfra/example.test.db"
    before = docker("pkinfra-ns1", f"sha256sum {path}")
    add_record(
        inventory,
        '                {"name": "big.example.test", "type": "A", "value": "192.0.2.9",'
        ' "ttl": 99999999999}',
    )
    run = pyinfra("deploys/dns.py", "--limit", NS1_HOST, inventory=inventory)
    out = run.stdout + run.stderr
    assert run.returncode != 0
    assert "pkinfra: zone example.test failed the check; nothing was installed" in out, out[-3000:]
    assert "99999999999" in out  # the checker's own message
    assert docker("pkinfra-ns1", f"sha256sum {path}") == before
    assert docker("pkinfra-ns1", "ls /var/lib/bind/pkinfra | grep -c pkinfra-new || true") == "0\n"
    assert named_pid() == pid
    assert "status: NOERROR" in dig(f"@{NS1}", "+norec", "example.test", "SOA")


# -- the RFC 2136 client on the hosts' own Python -----------------------------------------------


def test_the_client_runs_on_the_hosts_own_python_and_key(deployed: Inventory) -> None:
    """pkinfra.dnsupdate as the deploy installed it, on the host's own python3 + dnspython
    (Debian 13: 2.7; 12: 2.3), with mx1's installed key."""
    script = (
        f"import sys, uuid; sys.path.insert(0, '{paths.LIB_DIR}'); import dns.version;"
        " from pkinfra import dnsupdate;"
        " c = dnsupdate.RFC2136Client(dnsupdate.TSIGKey.from_file('/etc/pkinfra/tsig.key'));"
        " t, _ = c.follow_cnames('_25._tcp.mx1.example.test'); v = '3 1 1 ' + uuid.uuid4().hex * 2;"
        " c.replace(t, 'TLSA', [v], 60); w = c.wait_visible(t, 'TLSA', v, timeout=5);"
        " c.replace(t, 'TLSA', [], 60); print(dns.version.version, sorted(w))"
    )
    out = docker("pkinfra-mx1", f'python3 -c "{script}"')
    release = docker("pkinfra-mx1", "cut -d. -f1 /etc/debian_version").strip()
    expected = {"12": "2.3", "13": "2.7"}[release]
    assert out.startswith(expected) and "172.29.53.10" in out and "172.29.53.11" in out, out


@pytest.mark.parametrize("container", ["pkinfra-mx1", "pkinfra-db1"])
def test_the_rfc2136_suite_passes_on_the_hosts_python(
    deployed: Inventory, tmp_path: Path, container: str
) -> None:
    """tests/unit/test_dnsupdate.py inside a lab container of each release: mx1 runs Debian 13
    (python 3.13, dnspython 2.7, named 9.20), db1 Debian 12 (3.11, 2.3, 9.18); pytest (pure
    Python) is copied in beside it, the image has none."""
    import _pytest
    import iniconfig
    import packaging
    import pluggy
    import pygments

    inbox = tmp_path / "inbox"
    # What a host gets of pkinfra (the agents and what they import), and the test module.
    files = {p: d for p, d in install.agent_files().items() if p.startswith("pkinfra/")}
    for relative in (
        "tests/__init__.py",
        "tests/unit/__init__.py",
        "tests/unit/named_fixture.py",
        "tests/unit/test_dnsupdate.py",
    ):
        files[relative] = (ROOT / relative).read_bytes()
    for relative, data in files.items():
        (inbox / "src" / relative).parent.mkdir(parents=True, exist_ok=True)
        (inbox / "src" / relative).write_bytes(data)
    for module in (_pytest, pytest, pluggy, iniconfig, packaging, pygments):
        source = Path(str(module.__file__)).parent
        shutil.copytree(source, inbox / "lib" / source.name, ignore=shutil.ignore_patterns("*.pyc"))
    # pytest's one-file `py` shim sits beside the packages.
    shutil.copy(Path(str(_pytest.__file__)).parents[1] / "py.py", inbox / "lib" / "py.py")
    docker(container, "rm -rf /tmp/pkinfra-inbox")
    subprocess.run(
        ["docker", "cp", str(inbox), f"{container}:/tmp/pkinfra-inbox"], check=True, timeout=60
    )
    run = docker_exec(
        container, "python3", "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "tests/unit/test_dnsupdate.py",
        workdir="/tmp/pkinfra-inbox/src",
        env=["PYTHONPATH=/tmp/pkinfra-inbox/lib:/tmp/pkinfra-inbox/src"],
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout
    docker(container, "rm -rf /tmp/pkinfra-inbox")
