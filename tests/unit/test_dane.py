"""The DANE checker: record evaluation, resolver answers, and real handshakes via openssl."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pkinfra import cli, dane, tlsa
from pkinfra.ca import CAStore
from pkinfra.dane import Lookup, Verdict
from pkinfra.tlsa import TLSARecord

NAME = "svc.example.test"


@dataclass
class Pki:
    root: x509.Certificate
    sub: x509.Certificate
    leaf: x509.Certificate
    chain: list[x509.Certificate]  # as a server sends it: leaf, intermediate
    cert_file: Path
    chain_file: Path
    key_file: Path


def _csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("dane")
    store = CAStore(tmp / "store")
    store.create_root("root", unencrypted=True, path_length=1)
    store.create_sub_ca("sub", "root", parent_passphrase=None, unencrypted=True)
    key = ec.generate_private_key(ec.SECP256R1())
    issued = store.sign_csr(
        "sub",
        _csr(key),
        names=[NAME],
        usages={"server"},
        validity_days=30,
        host="svc",
        cert_name="svc",
        passphrase=None,
    )
    root = x509.load_pem_x509_certificate(store.root_pem("sub"))
    sub = x509.load_pem_x509_certificate(store.chain_pem("sub"))
    leaf = x509.load_pem_x509_certificate(issued.cert_pem)
    (tmp / "cert.pem").write_bytes(issued.cert_pem)
    (tmp / "chain.pem").write_bytes(issued.chain_pem)
    (tmp / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Pki(root, sub, leaf, [leaf, sub], tmp / "cert.pem", tmp / "chain.pem", tmp / "key.pem")


def rec(text: str) -> TLSARecord:
    u, s, m, data = text.split()
    return TLSARecord(int(u), int(s), int(m), bytes.fromhex(data))


def spki_hash(cert: x509.Certificate, algo: str = "sha256") -> str:
    return hashlib.new(algo, tlsa.spki_der(cert.public_key())).hexdigest()


def cert_hash(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


OTHER = "3 1 1 " + "ab" * 32


# -- evaluation ---------------------------------------------------------------------------------


def test_dane_ee_matches_key_certificate_and_every_matching_type(pki: Pki) -> None:
    spki = tlsa.spki_der(pki.leaf.public_key()).hex()
    records = [
        rec(f"3 1 1 {spki_hash(pki.leaf)}"),
        rec(f"3 0 1 {cert_hash(pki.leaf)}"),
        rec(f"3 1 0 {spki}"),
        rec(f"3 1 2 {spki_hash(pki.leaf, 'sha512')}"),
        rec(OTHER),
    ]
    results = dane.evaluate(records, pki.chain, NAME)
    assert [r.matched for r in results] == [True, True, True, True, False]
    assert all(r.usable for r in results)


def test_dane_ta_needs_the_ca_in_the_chain_and_the_right_name(pki: Pki) -> None:
    ta = rec(f"2 1 1 {spki_hash(pki.sub)}")
    assert dane.evaluate([ta], pki.chain, NAME)[0].matched
    wrong_name = dane.evaluate([ta], pki.chain, "other.example.test")[0]
    assert not wrong_name.matched and "PKIX path check failed" in wrong_name.note
    leaf_as_ta = dane.evaluate([rec(f"2 1 1 {spki_hash(pki.leaf)}")], pki.chain, NAME)[0]
    assert not leaf_as_ta.matched


def test_pkix_usages_need_a_path_to_a_trusted_root(pki: Pki) -> None:
    ee = rec(f"1 1 1 {spki_hash(pki.leaf)}")
    ta = rec(f"0 0 1 {cert_hash(pki.root)}")
    trusted = dane.evaluate([ee, ta], pki.chain, NAME, pkix_roots=[pki.root])
    assert [r.matched for r in trusted] == [True, True]
    untrusted = dane.evaluate([ee, ta], pki.chain, NAME, pkix_roots=[])
    assert [r.matched for r in untrusted] == [False, False]
    assert untrusted[0].note == "no trust anchors"


def test_unknown_parameters_make_a_record_unusable(pki: Pki) -> None:
    results = dane.evaluate([rec("4 1 1 00"), rec("3 2 1 00"), rec("3 1 3 00")], pki.chain, NAME)
    assert [r.usable for r in results] == [False, False, False]


# -- resolver answers ---------------------------------------------------------------------------


def answer(
    owner: str,
    rdatas: list[str],
    *,
    ad: bool,
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR,
) -> dns.message.Message:
    query = dns.message.make_query(owner, "TLSA", want_dnssec=True)
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    if rdatas:
        response.answer.append(dns.rrset.from_text_list(owner, 60, "IN", "TLSA", rdatas))
    if ad:
        response.flags |= dns.flags.AD
    return response


def test_classify_resolver_answers() -> None:
    owner = "_443._tcp.svc.example.test"
    secure = dane.classify(owner, "r", answer(owner, ["3 1 1 " + "00" * 32], ad=True))
    assert secure.status == "secure" and secure.records[0].usage == 3
    assert (
        dane.classify(owner, "r", answer(owner, ["3 1 1 " + "00" * 32], ad=False)).status
        == "insecure"
    )
    absent = dane.classify(owner, "r", answer(owner, [], ad=True, rcode=dns.rcode.NXDOMAIN))
    assert absent.status == "absent" and "signed" in absent.detail
    assert (
        dane.classify(owner, "r", answer(owner, [], ad=False, rcode=dns.rcode.SERVFAIL)).status
        == "bogus"
    )


# -- real handshakes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            "openssl",
            "s_server",
            "-accept",
            f"127.0.0.1:{port}",
            "-cert",
            str(pki.cert_file),
            "-key",
            str(pki.key_file),
            "-cert_chain",
            str(pki.chain_file),
            "-naccept",
            "100",
            "-quiet",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield port
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def smtp_server(pki: Pki) -> Iterator[int]:
    """A minimal SMTP server that offers STARTTLS (the client side is real openssl)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    full = pki.cert_file.read_bytes() + pki.chain_file.read_bytes()
    fullchain = pki.cert_file.with_name("full.pem")
    fullchain.write_bytes(full)
    ctx.load_cert_chain(fullchain, pki.key_file)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                stream = conn.makefile("rwb")
                stream.write(b"220 svc ESMTP\r\n")
                stream.flush()
                while line := stream.readline():
                    verb = line.strip().upper()
                    if verb.startswith((b"EHLO", b"HELO")):
                        stream.write(b"250-svc\r\n250 STARTTLS\r\n")
                    elif verb == b"STARTTLS":
                        stream.write(b"220 go ahead\r\n")
                        stream.flush()
                        try:
                            with ctx.wrap_socket(conn, server_side=True) as tls:
                                tls.recv(1)
                        except (OSError, ssl.SSLError):
                            pass
                        break
                    else:
                        stream.write(b"250 ok\r\n")
                    stream.flush()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join(timeout=2)
    listener.close()


def test_fetch_chain_plain_and_starttls(pki: Pki, tls_server: int, smtp_server: int) -> None:
    chain = dane.fetch_chain("127.0.0.1", tls_server, name=NAME)
    assert [c.serial_number for c in chain] == [pki.leaf.serial_number, pki.sub.serial_number]
    chain = dane.fetch_chain("127.0.0.1", smtp_server, name=NAME, starttls="smtp")
    assert chain[0].serial_number == pki.leaf.serial_number


def test_connection_refused_is_a_clear_failure() -> None:
    with pytest.raises(dane.DaneError, match="failed"):
        dane.fetch_chain("127.0.0.1", free_port(), name=NAME, timeout=5)


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[Lookup]:
    """What the (stubbed) validating resolver returns for the next lookups."""
    answers: list[Lookup] = []

    def lookup(owner: str, resolver: str, timeout: float = 5.0, port: int = 53) -> Lookup:
        got = answers[0]
        got.owner = owner
        return got

    monkeypatch.setattr(dane, "lookup_tlsa", lookup)
    return answers


def test_check_verdicts(pki: Pki, tls_server: int, published: list[Lookup]) -> None:
    good = rec(f"3 1 1 {spki_hash(pki.leaf)}")

    def run(lookup: Lookup) -> dane.Report:
        published[:] = [lookup]
        return dane.check("127.0.0.1", tls_server, name=NAME, resolver="127.0.0.1")

    ok = run(Lookup("", "r", "secure", [good]))
    assert ok.verdict is Verdict.VALID and ok.summary == "1 of 1 usable record(s) match"
    stale = run(Lookup("", "r", "secure", [good, rec(OTHER)]))
    assert stale.verdict is Verdict.VALID
    assert any("match nothing" in w for w in stale.warnings)
    assert run(Lookup("", "r", "secure", [rec(OTHER)])).verdict is Verdict.MISMATCH
    assert run(Lookup("", "r", "insecure", [good])).verdict is Verdict.NO_DANE
    assert run(Lookup("", "r", "absent", [], "no TLSA RRset")).verdict is Verdict.NO_DANE
    assert run(Lookup("", "r", "bogus", [], "SERVFAIL")).verdict is Verdict.FAILURE
    published[:] = [Lookup("", "r", "secure", [good])]
    expiring = dane.check("127.0.0.1", tls_server, name=NAME, resolver="r", warn_days=60)
    assert expiring.verdict is Verdict.VALID
    assert any("expires within 60 days" in w for w in expiring.warnings)


def test_cli_exit_code_and_json(
    pki: Pki, tls_server: int, published: list[Lookup], capsys: pytest.CaptureFixture[str]
) -> None:
    published[:] = [Lookup("", "r", "secure", [rec(OTHER)])]
    code = cli.main(
        [
            "dane",
            "check",
            f"127.0.0.1:{tls_server}",
            "--name",
            NAME,
            "--resolver",
            "127.0.0.1",
            "--json",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert report["verdict"] == "mismatch" and report["exit_code"] == 1
    assert report["lookup"]["owner"] == f"_{tls_server}._tcp.{NAME}"
    assert cli.main(["dane", "check", "no-port"]) == 1
    assert "is not HOST:PORT" in capsys.readouterr().err


def test_connection_failure_gives_exit_3(published: list[Lookup]) -> None:
    published[:] = [Lookup("", "r", "secure", [rec(OTHER)])]
    report = dane.check("127.0.0.1", free_port(), name=NAME, resolver="r", timeout=5)
    assert report.verdict is Verdict.FAILURE and "handshake" in report.summary
