"""RFC 2136 client against a real BIND primary and secondary (tests/unit/named_fixture.py).

The first tests need no server (key files, argument checks); the rest share one primary and
one secondary for the module and use distinct values, so they do not depend on each other.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rdata
import dns.rdatatype
import dns.renderer
import dns.rrset
import pytest

from pkinfra.dnsupdate import (
    MAX_CNAME_HOPS,
    Change,
    DNSUpdateError,
    RFC2136Client,
    Server,
    TSIGKey,
    default_resolvers,
    served_by,
    served_everywhere,
)
from tests.unit.named_fixture import (
    ADDRESS,
    MX1_CHALLENGE,
    MX1_TLSA,
    SHADOW_ZONE,
    STATIC_ZONE,
    WEB1_CHALLENGE,
    NamedLab,
    named_binary,
    running_lab,
)

SECRET = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
TLSA_VALUE = "3 1 1 " + "ab" * 32


def assert_secret_free(exc: BaseException, *secrets: str) -> None:
    """Neither the message, the repr nor the args of `exc` (or its cause) carry a secret."""
    texts = [str(exc), repr(exc), repr(exc.args)]
    if exc.__cause__ is not None:
        texts += [str(exc.__cause__), repr(exc.__cause__)]
    for secret in secrets:
        raw = base64.b64decode(secret)
        for text in texts:
            assert secret not in text
            assert raw.hex() not in text


# --- no server needed ----------------------------------------------------------------------


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_key_file_as_tsig_keygen_writes_it(tmp_path: Path) -> None:
    path = write(
        tmp_path / "k.key",
        f'key "mx1.example.test" {{\n\talgorithm hmac-sha256;\n\tsecret "{SECRET}";\n}};\n',
    )
    key = TSIGKey.from_file(path)
    assert key.name == dns.name.from_text("mx1.example.test")
    assert key.algorithm == "hmac-sha256"
    assert key.secret == base64.b64decode(SECRET)


def test_key_file_with_comments_and_several_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path / "keys.conf",
        "// two keys, two comment styles\n"
        "# hash comment\n"
        f'key one {{ algorithm HMAC-SHA512; secret "{SECRET}"; }};\n'
        "\n"
        f'key "two." {{ secret "{SECRET}"; algorithm hmac-sha1; }};\n',
    )
    assert TSIGKey.from_file(path, "one").algorithm == "hmac-sha512"
    assert TSIGKey.from_file(path, "two").algorithm == "hmac-sha1"
    with pytest.raises(DNSUpdateError, match="several keys"):
        TSIGKey.from_file(path)
    with pytest.raises(DNSUpdateError, match="no key named three"):
        TSIGKey.from_file(path, "three")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('key "k" { algorithm hmac-sha256; };', "no secret"),
        (f'key "k" {{ secret "{SECRET}"; }};', "no algorithm"),
        (f'key "k" {{ algorithm hmac-foo; secret "{SECRET}"; }};', "unknown algorithm"),
        ('key "k" { algorithm hmac-sha256; secret "not*base64"; };', "not valid base64"),
        (f'key "k" {{ algorithm hmac-sha256; secret "{SECRET}; }};', "unterminated"),
        (f'key "k" {{ algorithm hmac-sha256; secret "{SECRET}" }};', "expected ';'"),
        (f'key "k" {{ algorithm hmac-sha256; secret {SECRET}; }}', "without ';'"),
        (f'key "k" {{ algorithm hmac-sha256; secret "{SECRET}"; extra 1; }};', "expected"),
        ("options { };", "no key statement"),
        # A key file, not a named.conf: no other statement, no block comment.
        ('server 10.0.0.1 { keys { "k"; }; };', "no key statement"),
        (f'/* note */ key "k" {{ algorithm hmac-sha256; secret "{SECRET}"; }};', "no key"),
        (f'key "k" {{ algorithm hmac-sha256; algorithm hmac-sha1; secret "{SECRET}"; }};', "once"),
        (f'key "k" {{ algorithm hmac-sha256; secret "{SECRET}";', "missing '};'"),
        ('key "k" { algorithm hmac-sha256; secret', "secret has no value"),
    ],
)
def test_key_file_errors_are_clear_and_secret_free(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "bad.key", text)
    with pytest.raises(DNSUpdateError, match=message) as caught:
        TSIGKey.from_file(path)
    assert str(path) in str(caught.value)
    assert_secret_free(caught.value, SECRET)


def test_algorithm_names_are_normalized() -> None:
    assert TSIGKey.from_text("k", "HMAC-MD5.SIG-ALG.REG.INT.", SECRET).algorithm == "hmac-md5"
    assert TSIGKey(dns.name.from_text("k"), "HMAC-SHA256", b"x").algorithm == "hmac-sha256"


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(DNSUpdateError, match="No such file"):
        TSIGKey.from_file(tmp_path / "absent.key")


def test_world_readable_key_file_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(
        tmp_path / "open.key",
        f'key k {{ algorithm hmac-sha256; secret "{SECRET}"; }};',
        mode=0o644,
    )
    with caplog.at_level(logging.WARNING, logger="pkinfra.dnsupdate"):
        TSIGKey.from_file(path)
    assert "readable by every user" in caplog.text
    assert SECRET not in caplog.text


def test_repr_hides_the_secret() -> None:
    key = TSIGKey.from_text("k", "hmac-sha256", SECRET)
    client = RFC2136Client(key, resolvers=["192.0.2.1"])
    for text in (repr(key), str(key), repr(client)):
        assert SECRET not in text
        assert base64.b64decode(SECRET).hex() not in text
    assert "k." in repr(key)


def test_server_text() -> None:
    assert Server.from_text("192.0.2.1") == Server("192.0.2.1", 53)
    assert Server.from_text("192.0.2.1#5353") == Server("192.0.2.1", 5353)
    assert Server.from_text("2001:db8::1", 5300) == Server("2001:db8::1", 5300)
    assert str(Server("192.0.2.1", 5353)) == "192.0.2.1#5353"
    assert str(Server("192.0.2.1")) == "192.0.2.1"
    with pytest.raises(DNSUpdateError, match="invalid server"):
        Server.from_text("192.0.2.1#http")


def test_default_resolvers(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("search example.test\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n")
    assert default_resolvers(str(conf)) == ["192.0.2.53", "2001:db8::53"]
    assert default_resolvers(str(tmp_path / "absent")) == ["127.0.0.1"]


def test_default_resolvers_read_a_whole_resolv_conf(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# the lab's\ndomain example.test\noptions trust-ad edns0 timeout:2\n"
        "nameserver 172.29.53.53\n"
    )
    assert default_resolvers(str(conf)) == ["172.29.53.53"]
    conf.write_text("search example.test\n")
    assert default_resolvers(str(conf)) == ["127.0.0.1"]


def test_change_arguments_are_checked() -> None:
    with pytest.raises(DNSUpdateError, match=r"adding TLSA at x.test: invalid value"):
        Change.add("x.test", "TLSA", "3 1 1 zz", 60)
    with pytest.raises(DNSUpdateError, match="TTL -1 out of range"):
        Change.add("x.test", "TXT", "v", -1)
    with pytest.raises(DNSUpdateError, match="adding NOPE"):
        Change.add("x.test", "NOPE", "v", 60)
    with pytest.raises(DNSUpdateError, match="not a type this client changes"):
        Change.replace("x.test", "SOA", [], 60)


def test_malformed_names_are_project_errors() -> None:
    client = RFC2136Client(resolvers=["192.0.2.1"])
    with pytest.raises(DNSUpdateError, match="following CNAMEs: invalid name"):
        client.follow_cnames("a" * 64 + ".test")
    with pytest.raises(DNSUpdateError, match="adding TXT"):
        Change.add("a..test", "TXT", "v", 5)


def test_error_text_leaves_out_unknown_parts() -> None:
    full = DNSUpdateError(
        "adding TXT",
        "REFUSED",
        name="x.shadow.example.test.",
        zone=dns.name.from_text("shadow.example.test"),
        server=Server("172.29.53.10"),
        rcode="REFUSED",
    )
    assert str(full) == (
        "adding TXT at x.shadow.example.test in zone shadow.example.test via 172.29.53.10: REFUSED"
    )
    assert str(DNSUpdateError("reading x", "gone")) == "reading x: gone"


# --- authority: a small server that answers with or without AA ----------------------------

FAKE_ZONE = "fake.test."
FAKE_NAME = "_25._tcp.mx1.fake.test."


@contextlib.contextmanager
def answering(*, authoritative: bool) -> Iterator[Server]:
    """A UDP server on 127.0.0.1 for FAKE_ZONE (SOA, NS ns1 = itself, TLSA_VALUE at FAKE_NAME)
    that sets the AA flag on its answers only when told: a cache or a server that has not
    loaded the zone answers the same data without it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    soa = dns.rrset.from_text(
        FAKE_ZONE, 60, "IN", "SOA", f"ns1.{FAKE_ZONE} admin.{FAKE_ZONE} 1 60 60 600 5"
    )
    data = {
        (FAKE_ZONE, "SOA"): soa,
        (FAKE_ZONE, "NS"): dns.rrset.from_text(FAKE_ZONE, 60, "IN", "NS", f"ns1.{FAKE_ZONE}"),
        (FAKE_NAME, "TLSA"): dns.rrset.from_text(FAKE_NAME, 60, "IN", "TLSA", TLSA_VALUE),
    }
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                wire, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(wire)
            question = query.question[0]
            response = dns.message.make_response(query)
            found = data.get((question.name.to_text(), dns.rdatatype.to_text(question.rdtype)))
            if found is not None:
                response.answer.append(found)
            else:
                response.authority.append(soa)  # no data
            if authoritative:
                response.flags |= dns.flags.AA
            sock.sendto(response.to_wire(), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield Server("127.0.0.1", sock.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=2)
        sock.close()


def test_a_non_authoritative_answer_is_not_served() -> None:
    name = dns.name.from_text(FAKE_NAME)
    rdata = dns.rdata.from_text("IN", "TLSA", TLSA_VALUE)
    with answering(authoritative=False) as server:
        assert served_by(server, name, dns.rdatatype.TLSA, rdata, 1.0) == (
            False,
            "not authoritative (NOERROR)",
        )
        assert served_everywhere(FAKE_NAME, "TLSA", TLSA_VALUE, [str(server)], timeout=1.0) == (
            f"{server} does not serve 3 1 1 ababababababab... at _25._tcp.mx1.fake.test yet"
            " (not authoritative (NOERROR))"
        )
    with answering(authoritative=True) as server:
        assert served_by(server, name, dns.rdatatype.TLSA, rdata, 1.0) == (True, "serves it")
        assert served_everywhere(FAKE_NAME, "TLSA", TLSA_VALUE, [str(server)], timeout=1.0) == ""
        other = "3 1 1 " + "cd" * 32
        assert "(1 other value(s))" in served_everywhere(FAKE_NAME, "TLSA", other, [str(server)])


def test_wait_visible_takes_only_authoritative_answers() -> None:
    def client(server: Server) -> RFC2136Client:
        return RFC2136Client(
            resolvers=[str(server)],
            server_addresses={f"ns1.{FAKE_ZONE}": str(server)},
            timeout=0.5,
        )

    with answering(authoritative=False) as server:
        with pytest.raises(DNSUpdateError) as caught:
            client(server).wait_visible(FAKE_NAME, "TLSA", TLSA_VALUE, timeout=0.3)
        assert str(caught.value).endswith(
            f"after 0.3 s still not on {server} (not authoritative (NOERROR))"
        )
    with answering(authoritative=True) as server:
        timings = client(server).wait_visible(FAKE_NAME, "TLSA", TLSA_VALUE, timeout=2)
        assert set(timings) == {str(server)}


# --- against BIND ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NamedLab]:
    if named_binary() is None:
        pytest.skip("named is not installed (apt-get install bind9); the project setup installs it")
    with running_lab(tmp_path_factory.mktemp("named")) as running:
        yield running


def token() -> str:
    return uuid.uuid4().hex


def test_zone_and_servers_are_discovered(lab: NamedLab) -> None:
    zone = lab.client().zone_of(MX1_CHALLENGE)
    assert zone.name == dns.name.from_text(SHADOW_ZONE)
    assert zone.primary_name == dns.name.from_text("ns1.example.test")
    # ns1 is looked up in the zone; ns2 comes from server_addresses.
    assert zone.primary == Server(ADDRESS, lab.primary.port)
    assert set(zone.servers) == {
        Server(ADDRESS, lab.primary.port),
        Server(ADDRESS, lab.secondary.port),
    }


def test_zone_of_a_name_that_does_not_exist_yet(lab: NamedLab) -> None:
    zone = lab.client().zone_of("nothing.here.shadow.example.test")
    assert str(zone) == "shadow.example.test"


def record_queries(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(name, type) of every query the client sends over UDP, from now on."""
    asked: list[tuple[str, str]] = []
    real = dns.query.udp_with_fallback

    def spy(query: dns.message.Message, *args: Any, **kwargs: Any) -> Any:
        question = query.question[0]
        asked.append((question.name.to_text(), dns.rdatatype.to_text(question.rdtype)))
        return real(query, *args, **kwargs)

    monkeypatch.setattr(dns.query, "udp_with_fallback", spy)
    return asked


def test_a_zone_hint_spares_the_walk_up(lab: NamedLab, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"new-{uuid.uuid4().hex[:8]}.{SHADOW_ZONE}"
    client = lab.client()
    client.hint_zone(name, SHADOW_ZONE.rstrip("."))
    asked = record_queries(monkeypatch)
    zone = client.zone_of(name)
    assert str(zone) == "shadow.example.test"
    # Only the zone's own SOA/NS and name server addresses: never the (nonexistent) name.
    assert asked and all(qname != name for qname, _ in asked)


def test_without_a_hint_the_name_itself_is_asked(
    lab: NamedLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The counterpart of the test above: the walk up starts at the name.
    name = f"new-{uuid.uuid4().hex[:8]}.{SHADOW_ZONE}"
    asked = record_queries(monkeypatch)
    assert str(lab.client().zone_of(name)) == "shadow.example.test"
    assert (name, "SOA") in asked


def test_a_zone_hint_is_taken_as_given(lab: NamedLab) -> None:
    # Not verified: a wrong (but well-formed) hint is the caller's to retry without.
    client = lab.client()
    client.hint_zone(MX1_CHALLENGE, STATIC_ZONE)
    assert str(client.zone_of(MX1_CHALLENGE)) == "example.test"
    with pytest.raises(DNSUpdateError) as caught:
        client.add(MX1_CHALLENGE, "TXT", token(), 5)
    assert "in zone example.test" in str(caught.value)
    assert caught.value.rcode in ("NOTZONE", "REFUSED", "NOTAUTH")


def test_a_zone_hint_must_be_a_parent() -> None:
    client = RFC2136Client(resolvers=["127.0.0.1"])
    with pytest.raises(DNSUpdateError) as caught:
        client.hint_zone("_acme-challenge.mx1.example.test", "other.test")
    assert str(caught.value) == (
        "taking a zone hint: other.test is not a parent of _acme-challenge.mx1.example.test"
    )
    with pytest.raises(DNSUpdateError, match="taking a zone hint: invalid name"):
        client.hint_zone("a..b", "b")


def test_cname_one_hop(lab: NamedLab) -> None:
    final, chain = lab.client().follow_cnames("_acme-challenge.mx1.example.test")
    assert final == dns.name.from_text(MX1_CHALLENGE)
    assert [n.to_text() for n in chain] == ["_acme-challenge.mx1.example.test.", MX1_CHALLENGE]


def test_cname_chain_through_two_zones(lab: NamedLab) -> None:
    final, chain = lab.client().follow_cnames("_acme-challenge.web1.example.test")
    assert final == dns.name.from_text(WEB1_CHALLENGE)
    assert [n.to_text() for n in chain] == [
        "_acme-challenge.web1.example.test.",
        "alias.web1.example.test.",
        WEB1_CHALLENGE,
    ]


def test_name_without_cname_is_its_own_target(lab: NamedLab) -> None:
    final, chain = lab.client().follow_cnames(MX1_CHALLENGE)
    assert final == dns.name.from_text(MX1_CHALLENGE)
    assert chain == (final,)


def test_cname_loop_is_named(lab: NamedLab) -> None:
    with pytest.raises(DNSUpdateError) as caught:
        lab.client().follow_cnames("loop1.example.test")
    assert str(caught.value) == (
        "following CNAMEs from loop1.example.test: CNAME loop: "
        "loop1.example.test -> loop2.example.test -> loop3.example.test -> loop1.example.test"
    )


def test_cname_chain_is_bounded(lab: NamedLab) -> None:
    with pytest.raises(DNSUpdateError, match=f"more than {MAX_CNAME_HOPS} CNAMEs"):
        lab.client().follow_cnames("long0.example.test")


def test_add_and_delete_one_value_leave_the_others(lab: NamedLab) -> None:
    client = lab.client()
    keep, drop = token(), token()
    client.add(MX1_CHALLENGE, "TXT", keep, 5)
    client.add(MX1_CHALLENGE, "TXT", drop, 5)
    assert {f'"{keep}"', f'"{drop}"'} <= lab.values(lab.primary, MX1_CHALLENGE, "TXT")
    client.delete(MX1_CHALLENGE, "TXT", drop)
    served = lab.values(lab.primary, MX1_CHALLENGE, "TXT")
    assert f'"{keep}"' in served
    assert f'"{drop}"' not in served
    client.delete(MX1_CHALLENGE, "TXT", keep)
    assert f'"{keep}"' not in lab.values(lab.primary, MX1_CHALLENGE, "TXT")


def test_replace_sets_the_whole_rrset(lab: NamedLab) -> None:
    client = lab.client()
    other = "3 1 1 " + "cd" * 32
    client.add(MX1_TLSA, "TLSA", TLSA_VALUE, 60)
    client.replace(MX1_TLSA, "TLSA", [other], 60)
    assert lab.values(lab.primary, MX1_TLSA, "TLSA") == {other}
    client.replace(MX1_TLSA, "TLSA", [], 60)
    assert lab.values(lab.primary, MX1_TLSA, "TLSA") == set()


def test_batch_is_one_message_and_one_serial(
    lab: NamedLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = lab.client()
    client.zone_of(MX1_CHALLENGE)  # discovery first: it may use TCP too
    sent: list[dns.message.Message] = []
    real_tcp: Callable[..., Any] = dns.query.tcp

    def counting_tcp(message: dns.message.Message, *args: Any, **kwargs: Any) -> Any:
        sent.append(message)
        return real_tcp(message, *args, **kwargs)

    monkeypatch.setattr(dns.query, "tcp", counting_tcp)
    before = lab.serial(lab.primary)
    first, second = token(), token()
    client.update(
        [
            Change.add(MX1_CHALLENGE, "TXT", first, 5),
            Change.add(MX1_CHALLENGE, "TXT", second, 5),
            Change.replace(MX1_TLSA, "TLSA", [TLSA_VALUE], 60),
        ]
    )
    assert len(sent) == 1
    assert lab.serial(lab.primary) == before + 1
    assert {f'"{first}"', f'"{second}"'} <= lab.values(lab.primary, MX1_CHALLENGE, "TXT")
    client.update(
        [
            Change.delete(MX1_CHALLENGE, "TXT", first),
            Change.delete(MX1_CHALLENGE, "TXT", second),
            Change.replace(MX1_TLSA, "TLSA", [], 60),
        ]
    )
    assert len(sent) == 2
    assert lab.serial(lab.primary) == before + 2


def test_batch_across_zones_is_refused_before_sending(lab: NamedLab) -> None:
    with pytest.raises(DNSUpdateError, match=r"changes span zones example.test, shadow"):
        lab.client().update(
            [
                Change.add(MX1_CHALLENGE, "TXT", token(), 5),
                Change.add("_acme-challenge.mx1.example.test", "TXT", token(), 5),
            ]
        )


def test_wait_visible_on_both_servers(lab: NamedLab) -> None:
    client = lab.client()
    value = token()
    client.add(MX1_CHALLENGE, "TXT", value, 5)
    timings = client.wait_visible(MX1_CHALLENGE, "TXT", value, timeout=5)
    assert set(timings) == {lab.primary.server, lab.secondary.server}
    assert f'"{value}"' in lab.values(lab.secondary, MX1_CHALLENGE, "TXT")
    client.delete(MX1_CHALLENGE, "TXT", value)
    timings = client.wait_visible(MX1_CHALLENGE, "TXT", value, present=False, timeout=5)
    assert set(timings) == {lab.primary.server, lab.secondary.server}
    assert f'"{value}"' not in lab.values(lab.secondary, MX1_CHALLENGE, "TXT")


def test_wait_visible_times_out_listing_the_lagging_servers(lab: NamedLab) -> None:
    started = time.monotonic()
    with pytest.raises(DNSUpdateError) as caught:
        lab.client().wait_visible(MX1_CHALLENGE, "TXT", token(), timeout=0.3)
    assert time.monotonic() - started < 1.5
    text = str(caught.value)
    assert text.startswith(f"waiting for TXT at {MX1_CHALLENGE.rstrip('.')} in zone shadow")
    assert lab.primary.server in text
    assert lab.secondary.server in text
    assert caught.value.rcode == "timeout"


def test_wait_visible_counts_from_the_callers_start(lab: NamedLab) -> None:
    # A budget that began 10 s ago: 0.3 s are left, and the error names the whole budget.
    started = time.monotonic()
    with pytest.raises(DNSUpdateError) as caught:
        lab.client().wait_visible(
            MX1_CHALLENGE, "TXT", token(), timeout=10.3, started=time.monotonic() - 10
        )
    assert time.monotonic() - started < 1.5
    assert "after 10.3 s still not on " in str(caught.value)


def test_another_hosts_name_is_refused(lab: NamedLab) -> None:
    with pytest.raises(DNSUpdateError) as caught:
        lab.client("mx1-key").add(WEB1_CHALLENGE, "TXT", token(), 5)
    assert str(caught.value) == (
        f"adding TXT at {WEB1_CHALLENGE.rstrip('.')} in zone shadow.example.test"
        f" via {lab.primary.server}: REFUSED"
    )
    assert caught.value.rcode == "REFUSED"
    assert_secret_free(caught.value, *lab.secrets.values())


def test_another_type_at_its_own_name_is_refused(lab: NamedLab) -> None:
    with pytest.raises(DNSUpdateError, match=r"adding A at .*: REFUSED$"):
        lab.client("mx1-key").add(MX1_CHALLENGE, "A", "192.0.2.1", 5)
    with pytest.raises(DNSUpdateError, match=r"adding TLSA at .*: REFUSED$"):
        lab.client("web1-key").add(WEB1_CHALLENGE, "TLSA", TLSA_VALUE, 5)


def test_update_at_the_cname_itself_is_refused(lab: NamedLab) -> None:
    # What stock certbot does: the main zone takes no updates at all.
    with pytest.raises(DNSUpdateError, match=r"in zone example.test via .*: REFUSED$"):
        lab.client().add("_acme-challenge.mx1.example.test", "TXT", token(), 5)


def test_wrong_secret_is_badsig(lab: NamedLab) -> None:
    key = TSIGKey.from_text("mx1-key", "hmac-sha256", SECRET)
    with pytest.raises(DNSUpdateError) as caught:
        lab.client(key).add(MX1_CHALLENGE, "TXT", token(), 5)
    assert caught.value.rcode == "BADSIG"
    assert "wrong secret?" in str(caught.value)
    assert f"via {lab.primary.server}" in str(caught.value)
    assert_secret_free(caught.value, SECRET, *lab.secrets.values())


def test_unknown_key_is_badkey(lab: NamedLab) -> None:
    key = TSIGKey.from_text("db1-key", "hmac-sha256", SECRET)
    with pytest.raises(DNSUpdateError) as caught:
        lab.client(key).add(MX1_CHALLENGE, "TXT", token(), 5)
    assert caught.value.rcode == "BADKEY"
    assert "key db1-key" in str(caught.value)
    assert_secret_free(caught.value, SECRET)


class _SkewedTime:
    """The time module, an hour ahead: what a host with a wrong clock signs with."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def time(self) -> float:
        return time.time() + self.offset

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def test_clock_skew_is_badtime(lab: NamedLab, monkeypatch: pytest.MonkeyPatch) -> None:
    client = lab.client()
    client.zone_of(MX1_CHALLENGE)
    # dnspython 2.3 signs in dns.message, later versions in dns.renderer.
    monkeypatch.setattr(dns.message, "time", _SkewedTime(3600))
    monkeypatch.setattr(dns.renderer, "time", _SkewedTime(3600))
    with pytest.raises(DNSUpdateError) as caught:
        client.add(MX1_CHALLENGE, "TXT", token(), 5)
    assert caught.value.rcode == "BADTIME"
    assert_secret_free(caught.value, *lab.secrets.values())


def test_key_from_file_end_to_end(lab: NamedLab) -> None:
    client = lab.client(TSIGKey.from_file(lab.key_file("web1-key")))
    value = token()
    client.add(WEB1_CHALLENGE, "TXT", value, 5)
    client.delete(WEB1_CHALLENGE, "TXT", value)


def test_primary_down_is_a_quick_clear_error(lab: NamedLab) -> None:
    with socket.socket() as probe:
        probe.bind((ADDRESS, 0))
        closed = probe.getsockname()[1]
    client = lab.client(primary=f"{ADDRESS}#{closed}")
    started = time.monotonic()
    with pytest.raises(DNSUpdateError) as caught:
        client.add(MX1_CHALLENGE, "TXT", token(), 5)
    assert time.monotonic() - started < 1
    assert str(caught.value).endswith(f"via {ADDRESS}#{closed}: connection refused")


def test_silent_primary_times_out(lab: NamedLab) -> None:
    # A listener that never reads: TCP connects, the answer never comes.
    with socket.socket() as silent:
        silent.bind((ADDRESS, 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        client = lab.client(primary=f"{ADDRESS}#{port}", timeout=0.3)
        started = time.monotonic()
        with pytest.raises(DNSUpdateError) as caught:
            client.add(MX1_CHALLENGE, "TXT", token(), 5)
        assert time.monotonic() - started < 1.5
    assert caught.value.rcode == "timeout"
    assert str(caught.value).endswith("timeout after 0.3 s")


def test_resolver_down_is_a_bounded_error(lab: NamedLab) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((ADDRESS, 0))  # bound, so no ICMP; never answers
        address = f"{ADDRESS}#{silent.getsockname()[1]}"
        client = lab.client(resolvers=[address], timeout=0.3)
        started = time.monotonic()
        with pytest.raises(DNSUpdateError) as caught:
            client.follow_cnames("_acme-challenge.mx1.example.test")
        assert time.monotonic() - started < 1.5
    assert str(caught.value) == (
        "finding the zone of _acme-challenge.mx1.example.test at"
        f" _acme-challenge.mx1.example.test: {address}: timeout after 0.3 s"
    )
