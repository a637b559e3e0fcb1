"""The DANE checker: TLS (or STARTTLS) handshake, DNSSEC-validated TLSA lookup, and matching.

``check()`` answers what a DANE client (a remote MTA, a validating browser plug-in) would decide
about a service, with the RFC 7671 rule: the service is valid when at least one *usable* TLSA
record matches the chain it presents. Exit codes of the CLI follow ``Verdict``: 0 valid,
1 no usable record matches, 2 no DANE (unsigned zone, no TLSA RRset, or no usable record),
3 failure (connection, SERVFAIL or bogus DNSSEC, timeout).

The handshake uses ``openssl s_client``: it speaks every STARTTLS dialect needed here (smtp,
imap, pop3, postgres) and shows the whole chain the server sends, which Python's ``ssl`` module
(before 3.13) does not.
"""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
import re
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
from cryptography import x509
from cryptography.x509 import verification

from pkinfra import tlsa
from pkinfra.agent.errors import PkinfraError
from pkinfra.tlsa import USAGES, TLSARecord

STARTTLS = ("smtp", "imap", "pop3", "postgres")
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


class Verdict(enum.IntEnum):
    VALID = 0
    MISMATCH = 1
    NO_DANE = 2
    FAILURE = 3


class DaneError(PkinfraError):
    """The check could not be carried out (connection, DNS failure): verdict FAILURE."""


@dataclass
class Lookup:
    """The TLSA RRset as the validating resolver gave it."""

    owner: str
    resolver: str
    #: secure (AD set), insecure (answer without AD), absent (no TLSA RRset), bogus (SERVFAIL)
    status: str
    records: list[TLSARecord] = field(default_factory=list)
    detail: str = ""


@dataclass
class RecordResult:
    record: str
    usage: str
    usable: bool
    matched: bool
    note: str


@dataclass
class Report:
    target: str
    name: str
    starttls: str | None
    verdict: Verdict
    summary: str
    lookup: Lookup | None = None
    records: list[RecordResult] = field(default_factory=list)
    chain: list[str] = field(default_factory=list)
    not_after: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.lookup is not None:
            data["lookup"]["records"] = [r.to_text() for r in self.lookup.records]
        data["verdict"] = self.verdict.name.lower()
        data["exit_code"] = int(self.verdict)
        return data

    def to_text(self) -> str:
        via = f" (STARTTLS {self.starttls})" if self.starttls else ""
        lines = [f"DANE check {self.target}{via}, name {self.name}"]
        if self.lookup is not None:
            lk = self.lookup
            lines.append(
                f"TLSA {lk.owner}: {lk.status}, {len(lk.records)} record(s) via {lk.resolver}"
                + (f" ({lk.detail})" if lk.detail else "")
            )
        for r in self.records:
            mark = "match" if r.matched else ("no match" if r.usable else "unusable")
            lines.append(f"  {r.record[:60]:<60} {r.usage:<8} {mark}: {r.note}")
        if self.chain:
            lines.append(f"chain: {' <- '.join(self.chain)}")
        if self.not_after:
            lines.append(f"certificate expires {self.not_after}")
        lines += [f"warning: {w}" for w in self.warnings]
        lines.append(f"result: {self.verdict.name} ({self.summary})")
        return "\n".join(lines)


# -- DNS ----------------------------------------------------------------------------------------


def default_resolver() -> str:
    """The first nameserver of /etc/resolv.conf."""
    try:
        return str(dns.resolver.Resolver().nameservers[0])
    except (dns.resolver.NoResolverConfiguration, IndexError) as exc:
        raise DaneError("no resolver configured (give --resolver)") from exc


def resolve_address(host: str, resolver: str, timeout: float = 5.0, port: int = 53) -> str:
    """``host``'s address through ``resolver`` (A first, then AAAA); an address stays as it is.

    With ``--resolver`` the handshake must reach the address that resolver gives: the system
    resolver may not know the name at all (a lab or internal zone) or know another answer.
    """
    try:
        ipaddress.ip_address(host.strip("[]"))
        return host.strip("[]")
    except ValueError:
        pass
    resolver_ = dns.resolver.Resolver(configure=False)
    resolver_.nameservers = [resolver]
    resolver_.port = port
    resolver_.lifetime = timeout
    problems = []
    for rdtype in ("A", "AAAA"):
        try:
            answer = resolver_.resolve(host, rdtype)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN) as exc:
            problems.append(exc.__class__.__name__)
            continue
        except dns.exception.DNSException as exc:
            raise DaneError(f"address of {host} via {resolver}: {exc or 'timeout'}") from exc
        return str(answer[0])
    raise DaneError(f"{host} has no address via {resolver} ({', '.join(problems)})")


def lookup_tlsa(owner: str, resolver: str, timeout: float = 5.0, port: int = 53) -> Lookup:
    """Ask a validating resolver for the TLSA RRset of ``owner`` (CNAMEs are followed by it)."""
    query = dns.message.make_query(owner, dns.rdatatype.TLSA, want_dnssec=True)
    query.flags |= dns.flags.AD | dns.flags.RD
    try:
        response, _ = dns.query.udp_with_fallback(query, resolver, timeout=timeout, port=port)
    except (OSError, dns.exception.Timeout) as exc:
        raise DaneError(f"TLSA lookup of {owner} via {resolver}: {exc or 'timeout'}") from exc
    return classify(owner, resolver, response)


def classify(owner: str, resolver: str, response: dns.message.Message) -> Lookup:
    """Turn a resolver's answer into a ``Lookup`` (kept apart so it can be tested on messages)."""
    rcode = response.rcode()
    secure = bool(response.flags & dns.flags.AD)
    if rcode == dns.rcode.SERVFAIL:
        return Lookup(
            owner,
            resolver,
            "bogus",
            detail="SERVFAIL: DNSSEC validation failed or the zone's servers did not answer",
        )
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return Lookup(owner, resolver, "bogus", detail=dns.rcode.to_text(rcode))
    records = [
        TLSARecord.from_rdata(rd)
        for rrset in response.answer
        if rrset.rdtype == dns.rdatatype.TLSA
        for rd in rrset
    ]
    if not records:
        state = "signed" if secure else "unsigned or not validated"
        what = "no such name" if rcode == dns.rcode.NXDOMAIN else "no TLSA RRset"
        return Lookup(owner, resolver, "absent", detail=f"{what} ({state})")
    if not secure:
        return Lookup(
            owner,
            resolver,
            "insecure",
            records,
            detail="answer without AD: the zone is unsigned or the resolver does not validate",
        )
    return Lookup(owner, resolver, "secure", records)


# -- TLS ----------------------------------------------------------------------------------------


def fetch_chain(
    host: str, port: int, *, name: str, starttls: str | None = None, timeout: float = 10.0
) -> list[x509.Certificate]:
    """The certificate chain the server presents (leaf first), through ``openssl s_client``."""
    if starttls is not None and starttls not in STARTTLS:
        raise DaneError(f"unknown STARTTLS protocol '{starttls}' (known: {', '.join(STARTTLS)})")
    connect = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    cmd = ["openssl", "s_client", "-connect", connect, "-servername", name, "-showcerts"]
    if starttls:
        cmd += ["-starttls", starttls]
        if starttls == "smtp":
            cmd += ["-name", "dane-check.invalid"]
    try:
        run = subprocess.run(cmd, input=b"", capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise DaneError(f"TLS handshake with {connect}: no answer within {timeout:g} s") from exc
    except FileNotFoundError as exc:
        raise DaneError("openssl is not installed") from exc
    blocks = _PEM.findall(run.stdout)
    if not blocks:
        last = run.stderr.decode(errors="replace").strip().splitlines() or ["no certificate"]
        raise DaneError(f"TLS handshake with {connect} failed: {last[-1]}")
    return [x509.load_pem_x509_certificate(b) for b in blocks]


# -- matching -----------------------------------------------------------------------------------


def _pkix(
    chain: Sequence[x509.Certificate],
    name: str,
    roots: Sequence[x509.Certificate],
    now: dt.datetime,
) -> tuple[list[x509.Certificate] | None, str]:
    if not roots:
        return None, "no trust anchors"
    builder = verification.PolicyBuilder().store(verification.Store(list(roots))).time(now)
    verifier = builder.build_server_verifier(x509.DNSName(name))
    try:
        return list(verifier.verify(chain[0], list(chain[1:]))), ""
    except verification.VerificationError as exc:
        return None, f"PKIX path check failed: {exc}"


def system_roots(path: Path = SYSTEM_CA_BUNDLE) -> list[x509.Certificate]:
    try:
        return list(x509.load_pem_x509_certificates(path.read_bytes()))
    except (OSError, ValueError):
        return []


def evaluate(
    records: Sequence[TLSARecord],
    chain: Sequence[x509.Certificate],
    name: str,
    *,
    now: dt.datetime | None = None,
    pkix_roots: Sequence[x509.Certificate] | None = None,
) -> list[RecordResult]:
    """Evaluate every record against the presented chain (RFC 6698 / RFC 7671 semantics)."""
    now = now or dt.datetime.now(dt.UTC)
    leaf = chain[0]
    results = []
    roots_cache: list[x509.Certificate] | None = None
    for rec in records:
        text, usage = rec.to_text(), USAGES.get(rec.usage, f"usage {rec.usage}")
        if not rec.usable:
            results.append(
                RecordResult(text, usage, False, False, "unknown usage, selector or matching type")
            )
            continue
        if rec.usage == 3:
            ok = rec.matches(leaf)
            note = "matches the server's key" if ok else "does not match the leaf"
            if ok and rec.selector == 0:
                note = "matches the server's certificate"
            results.append(RecordResult(text, usage, True, ok, note))
            continue
        if rec.usage == 2:
            anchors = [c for c in chain[1:] if rec.matches(c)]
            if not anchors:
                results.append(
                    RecordResult(text, usage, True, False, "matches no CA certificate in the chain")
                )
                continue
            path, why = _pkix(chain, name, anchors, now)
            results.append(
                RecordResult(
                    text,
                    usage,
                    True,
                    path is not None,
                    "chain leads to the matched CA" if path else why,
                )
            )
            continue
        # PKIX-TA / PKIX-EE: the chain must also validate against the public roots.
        if roots_cache is None:
            roots_cache = list(pkix_roots) if pkix_roots is not None else system_roots()
        path, why = _pkix(chain, name, roots_cache, now)
        if path is None:
            results.append(RecordResult(text, usage, True, False, why))
            continue
        targets = [leaf] if rec.usage == 1 else path[1:]
        ok = any(rec.matches(c) for c in targets)
        results.append(
            RecordResult(
                text,
                usage,
                True,
                ok,
                "matches" if ok else "PKIX-valid, but the record matches none",
            )
        )
    return results


def _describe(cert: x509.Certificate) -> str:
    try:
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return str(cn[0].value) if cn else cert.subject.rfc4514_string()
    except ValueError:
        return cert.subject.rfc4514_string()


# -- the check ----------------------------------------------------------------------------------


def check(
    host: str,
    port: int,
    *,
    name: str | None = None,
    starttls: str | None = None,
    resolver: str | None = None,
    proto: str = "tcp",
    warn_days: int = 14,
    timeout: float = 10.0,
    now: dt.datetime | None = None,
) -> Report:
    """Check one service; never raises for a failed check (the report says FAILURE)."""
    name = (name or host).rstrip(".").lower()
    target = f"{host}:{port}"
    report = Report(
        target=target, name=name, starttls=starttls, verdict=Verdict.FAILURE, summary=""
    )
    try:
        owner = tlsa.owner_name(port, proto, name)
        lookup = lookup_tlsa(owner, resolver or default_resolver(), timeout=min(timeout, 5.0))
        report.lookup = lookup
        if lookup.status == "bogus":
            report.summary = f"TLSA lookup failed: {lookup.detail}"
            return report
        if lookup.status != "secure":
            report.verdict = Verdict.NO_DANE
            report.summary = lookup.detail
            return report
        address = host
        if resolver is not None:
            address = resolve_address(host, resolver, timeout=min(timeout, 5.0))
        chain = fetch_chain(address, port, name=name, starttls=starttls, timeout=timeout)
    except (DaneError, tlsa.TLSAError) as exc:
        report.summary = str(exc)
        return report

    now = now or dt.datetime.now(dt.UTC)
    report.chain = [_describe(c) for c in chain]
    expires = chain[0].not_valid_after_utc
    report.not_after = f"{expires:%Y-%m-%d %H:%M} UTC (in {(expires - now).days} days)"
    if expires - now < dt.timedelta(days=warn_days):
        report.warnings.append(f"the certificate expires within {warn_days} days")
    report.records = evaluate(lookup.records, chain, name, now=now)
    usable = [r for r in report.records if r.usable]
    matched = [r for r in usable if r.matched]
    if matched:
        report.verdict = Verdict.VALID
        report.summary = f"{len(matched)} of {len(usable)} usable record(s) match"
        if len(matched) < len(usable):
            report.warnings.append(
                f"{len(usable) - len(matched)} usable record(s) match nothing (stale records?)"
            )
    elif usable:
        report.verdict = Verdict.MISMATCH
        report.summary = f"none of {len(usable)} usable record(s) matches"
    else:
        report.verdict = Verdict.NO_DANE
        report.summary = "no usable TLSA record (RFC 7671: DANE does not apply)"
    return report
