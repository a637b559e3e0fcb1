"""The site's certificate and DANE state at a glance: ``pkinfra status``, decided here.

Pure functions: the inventory, what each host's probe read (``pkinfra.agent.status_probe``),
the controller's CRLs and the DNS observations go in; rows with a state and the exact reasons
come out (as ``issue.reissue_reasons`` does for one certificate), and the renderers turn them
into a terminal table, JSON (``schema`` 1), a node_exporter textfile or one HTML page. Nothing
here talks to a host or a server (``pkinfra.cli_status`` gathers).

States follow the monitoring-plugin convention: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. Worst
first means CRITICAL, UNKNOWN (a host that could not be read may be critical), WARNING, OK; the
exit status is the state of the worst row in that order.

The next run: CA-issued certificates and CRLs are renewed only by pyinfra runs, so the latest
time the next run must start is the earliest of every CA-issued certificate's renewal date,
every controller CRL at half its life (when a run issues it again) and every rollover step that
is due. A CRL or CA-issued certificate on a host that expires before that time is CRITICAL: if
runs keep only to what is due, it lapses first.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from pkinfra import acme, issue, rollover, services, tlsa
from pkinfra.agent import paths
from pkinfra.model import NEXT_SUFFIX, Certificate, HostSpec, Inventory, tlsa_owner, zone_of

SCHEMA = 1
TEMPLATES = Path(__file__).parent / "templates"
ROLLOVER_DIR = paths.ROLLOVER_DIR
RENEWAL_DIR = "/etc/letsencrypt/renewal"
#: A renewal this much past its date is overdue (certbot's timer runs twice a day; a run may
#: be a few hours late).
GRACE = dt.timedelta(days=1)
#: The next run counts as overdue this long after it was due.
RUN_GRACE = dt.timedelta(hours=1)
#: certbot renews this long before expiry unless the renewal file says otherwise.
CERTBOT_DEFAULT_WINDOW = dt.timedelta(days=30)
#: STARTTLS dialect of the live DANE check, by port.
STARTTLS_PORTS = {25: "smtp", 587: "smtp", 110: "pop3", 143: "imap", 5432: "postgres"}


class State(enum.IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    @property
    def rank(self) -> int:
        """Badness for sorting and the exit status: CRITICAL > UNKNOWN > WARNING > OK."""
        return {State.OK: 0, State.WARNING: 1, State.UNKNOWN: 2, State.CRITICAL: 3}[self]

    @property
    def label(self) -> str:
        return self.name.lower()


def worst(states: Iterable[State]) -> State:
    return max(states, key=lambda s: s.rank, default=State.OK)


@dataclass(frozen=True)
class Thresholds:
    warn_days: int = 21
    crit_days: int = 7

    def __post_init__(self) -> None:
        if self.crit_days < 0 or self.warn_days < self.crit_days:
            raise ValueError(
                f"--warn-days ({self.warn_days}) must be at least --crit-days ({self.crit_days}) "
                "and both at least 0"
            )


@dataclass
class Finding:
    """One reason with its state; a row's state is the worst of its findings."""

    state: State
    text: str


def _state_of(findings: Sequence[Finding]) -> State:
    return worst(f.state for f in findings)


def _reasons(findings: Sequence[Finding]) -> list[str]:
    ordered = sorted(findings, key=lambda f: -f.state.rank)
    return [f"{f.state.label}: {f.text}" if f.state else f.text for f in ordered]


# -- observations from DNS (gathered by the CLI) --------------------------------------------------


@dataclass
class TlsaObservation:
    """What the controller saw for one TLSA owner name."""

    owner: str
    #: Authoritative server address -> the records it serves (canonical text), or an error.
    servers: dict[str, list[str] | str] = field(default_factory=dict)
    resolver: str | None = None
    #: The validating resolver's answer: secure (AD), insecure, absent, bogus; None: not asked.
    ad_status: str | None = None
    ad_detail: str = ""
    #: The live DANE check: valid, mismatch, no_dane, failure; None: not run.
    dane: str | None = None
    dane_summary: str = ""


# -- rows ---------------------------------------------------------------------------------------


@dataclass
class ServiceRow:
    name: str
    state: State
    #: ok, pending, held, stale, missing, unknown: the one word a table shows.
    summary: str
    pending: str | None = None
    held: str | None = None
    files_match: bool | None = None
    reasons: list[str] = field(default_factory=list)


@dataclass
class TlsaRow:
    owner: str
    port: int
    proto: str
    state: State
    signed: bool
    servers: dict[str, list[str] | str] = field(default_factory=dict)
    #: The records the served keys need (3 1 1 of each key in service).
    wanted: list[str] = field(default_factory=list)
    matches_key: bool | None = None
    ad: str | None = None
    dane: str | None = None
    dane_summary: str = ""
    reasons: list[str] = field(default_factory=list)

    @property
    def dane_valid(self) -> bool | None:
        return None if self.dane is None else self.dane == "valid"


@dataclass
class CertRow:
    host: str
    name: str
    issuer: str
    acme: bool
    names: list[str]
    key_type: str | None
    state: State
    not_after: dt.datetime | None = None
    seconds_left: float | None = None
    next_renewal: dt.datetime | None = None
    #: "step published to '2026-11'", "asked: '2026-11' (the next run starts it)", or None.
    rollover: str | None = None
    services: list[ServiceRow] = field(default_factory=list)
    tlsa: list[TlsaRow] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def days_left(self) -> int | None:
        """Whole days left, rounded down (-1: expired less than a day ago)."""
        if self.seconds_left is None:
            return None
        return math.floor(self.seconds_left / 86400)


@dataclass
class CrlRow:
    ca: str
    #: ``controller`` or the host's FQDN.
    where: str
    state: State
    next_update: dt.datetime | None = None
    this_update: dt.datetime | None = None
    number: int | None = None
    reasons: list[str] = field(default_factory=list)


@dataclass
class HostRow:
    host: str
    pyinfra_name: str
    state: State
    error: str | None = None
    certificates: list[CertRow] = field(default_factory=list)
    crls: list[CrlRow] = field(default_factory=list)


@dataclass(frozen=True)
class Due:
    """Something only a pyinfra run does, and when it must happen."""

    at: dt.datetime
    host: str
    what: str


@dataclass
class NextRun:
    due: dt.datetime | None
    state: State
    because: list[Due] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


@dataclass
class Report:
    generated: dt.datetime
    thresholds: Thresholds
    hosts: list[HostRow]
    crls: list[CrlRow]
    next_run: NextRun

    @property
    def state(self) -> State:
        return worst(
            [h.state for h in self.hosts] + [c.state for c in self.crls] + [self.next_run.state]
        )

    @property
    def exit_code(self) -> int:
        return int(self.state)

    def certificates(self) -> list[CertRow]:
        return [c for h in self.hosts for c in h.certificates]


# -- what to ask each host ----------------------------------------------------------------------


def probed(host: HostSpec, inventory: Inventory) -> bool:
    """Whether a host has anything for the probe to read."""
    return bool(host.certificates or host.services or issue.host_plan(inventory, host.fqdn).crls)


def probe_request(inventory: Inventory, host: HostSpec) -> dict[str, Any]:
    """The probe's request for one host: paths only, derived from the inventory."""
    certs = []
    for cert in host.certificates:
        files = services.certificate_files(cert)
        entry: dict[str, Any] = {
            "name": cert.name,
            "files": {"cert": files["cert"], "key": files["key"]},
            "rollover": f"{ROLLOVER_DIR}/{cert.name}.json",
        }
        if cert.is_acme:
            entry["renewal"] = f"{RENEWAL_DIR}/{cert.name}.conf"
            entry["next_cert"] = f"/etc/letsencrypt/live/{cert.name}{NEXT_SUFFIX}/cert.pem"
        else:
            entry["next_cert"] = f"{cert.host_directory}/next/{issue.CERT_FILE}"
        certs.append(entry)
    plan = issue.host_plan(inventory, host.fqdn)
    return {
        "certificates": certs,
        "services": services.mapping(inventory, host)["services"],
        "crls": {ca: issue.crl_path(ca) for ca in plan.crls},
        "state_dir": paths.STATE_DIR,
        "dane_seen": paths.DANE_SEEN,
    }


# -- deciding -----------------------------------------------------------------------------------


def _when(value: Any) -> dt.datetime | None:
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, dt.UTC)
    return None


def _days(delta: dt.timedelta) -> str:
    days = math.floor(delta.total_seconds() / 86400)
    if days >= 1:
        return f"{days} day{'s' if days != 1 else ''}"
    hours = max(0, math.floor(delta.total_seconds() / 3600))
    return f"{hours} h"


def _date(when: dt.datetime | None) -> str:
    return f"{when:%Y-%m-%d %H:%M} UTC" if when else "-"


def certbot_window(renewal: Mapping[str, str] | None) -> dt.timedelta:
    """certbot's ``renew_before_expiry`` ("30 days", "2 weeks", "12 hours"), else its default."""
    text = (renewal or {}).get("renew_before_expiry", "")
    number, _, unit = text.strip().partition(" ")
    units = {"day": 86400, "week": 604800, "hour": 3600, "minute": 60}
    seconds = units.get(unit.strip().rstrip("s"))
    if not number.isdigit() or seconds is None:
        return CERTBOT_DEFAULT_WINDOW
    return dt.timedelta(seconds=int(number) * seconds)


def next_renewal(cert: Certificate, held: Mapping[str, Any], renewal: Any) -> dt.datetime | None:
    """When the certificate is renewed: CA-issued by a pyinfra run (``issue.Wanted``); ACME by
    certbot's timer or pkinfra's run, whichever comes first."""
    not_after, not_before = _when(held.get("not_after")), _when(held.get("not_before"))
    if not_after is None or not_before is None:
        return None
    if not cert.is_acme:
        wanted = issue.Wanted(
            names=tuple(cert.names),
            usages=tuple(cert.usages),
            issuer=cert.issuer,
            validity_days=cert.validity_days,
            renew_before_days=cert.renew_before_days,
        )
        return not_after - wanted.renew_window
    ours = acme.renew_before(not_before, not_after, cert.renew_before_days)
    return not_after - max(ours, certbot_window(renewal if isinstance(renewal, dict) else None))


def _tlsa_ttl(inventory: Inventory, cert: Certificate, owner: str) -> int:
    if cert.is_acme:
        return inventory.settings.shadow_zone.tlsa_ttl
    zone = zone_of(owner, inventory.zone_names)
    found = next((z for z in inventory.settings.zones if z.name == zone), None)
    return found.tlsa_ttl if found else 300


#: Rollover steps after which only a run (CA-issued) or the host's agent, run by a run, goes on.
_ACTIVE_STEPS = ("issued", "starting", "published", "switching", "switched", "retiring")


def rollover_due(
    inventory: Inventory,
    host: HostSpec,
    cert: Certificate,
    state: Mapping[str, Any] | None,
    now: dt.datetime,
) -> tuple[str | None, dt.datetime | None]:
    """(what the rollover is at, when a run must take its next step); (None, None): none."""
    state = state or {}
    step, label = state.get("step"), state.get("label")
    if step == "unreadable":
        return "state file unreadable", now
    if step in _ACTIVE_STEPS:
        text = f"step {step} to '{label}'"
        if step == "published":
            owners = [tlsa_owner(p.port, p.proto, host.tlsa_name(p)) for p in host.tlsa]
            ttl = max((_tlsa_ttl(inventory, cert, o) for o in owners), default=0)
            if _when(state.get("served_since")) is None:
                return text, now + dt.timedelta(seconds=ttl)
            return text, dt.datetime.fromtimestamp(rollover.switch_due(state, ttl), dt.UTC)
        return text, now
    if cert.rollover and not (step == "done" and label == cert.rollover):
        return f"asked: '{cert.rollover}' (the next run starts it)", now
    if step == "done":
        return f"done: '{label}'", None
    return None, None


def _service_row(
    service: Mapping[str, Any],
    probe: Mapping[str, Any] | None,
    cert_spki: str | None,
    cert_sha256: str | None,
    now: dt.datetime,
) -> ServiceRow:
    name = service["name"]
    gated = bool(service.get("gate"))
    if probe is None:
        return ServiceRow(name, State.UNKNOWN, "unknown", reasons=["not read"])
    findings: list[Finding] = []
    summary = "ok"
    held = None
    pending = probe.get("pending")
    if pending:
        since = _when(probe.get("pending_since"))
        ago = f" for {_days(now - since)}" if since else ""
        findings.append(Finding(State.WARNING, f"{name}: notification pending{ago}: {pending}"))
        summary = "pending"
    old_key = False
    stale = []
    match = True
    for f in probe.get("files", []):
        if not f.get("present"):
            findings.append(Finding(State.CRITICAL, f"{name}: {f['path']} is missing"))
            summary, match = "missing", False
            continue
        spki = f.get("spki_sha256")
        if cert_spki and spki and spki != cert_spki:
            old_key = True
        if f.get("current") is False:
            stale.append(f["path"])
            match = False
    if probe.get("files") is not None and "served" in probe:
        served = probe.get("served")
        if served is None:
            findings.append(Finding(State.WARNING, f"{name}: not told about its certificate yet"))
            summary, match = "stale", False
        elif cert_sha256 and served.get("sha256") != cert_sha256:
            match = False
            if cert_spki and served.get("spki_sha256") != cert_spki:
                old_key = True
            else:
                findings.append(
                    Finding(State.WARNING, f"{name}: not told about the renewed certificate yet")
                )
                summary = "stale"
    if probe.get("held"):
        # What the delivery agent wrote down when the service's gate held the new key back.
        held = str(probe["held"])
        since = _when(probe.get("held_since"))
        ago = f" for {_days(now - since)}" if since else ""
        findings.append(Finding(State.WARNING, f"{name}: delivery held{ago}: {held}"))
        summary = "held"
    elif old_key and gated:
        findings.append(
            Finding(
                State.WARNING,
                f"{name}: still has the previous key; the next delivery asks the DANE gate",
            )
        )
        summary = "stale" if summary == "ok" else summary
    elif old_key:
        findings.append(Finding(State.WARNING, f"{name}: still has the previous key"))
        summary = "stale" if summary == "ok" else summary
    elif stale:
        findings.append(
            Finding(State.WARNING, f"{name}: {', '.join(stale)} differ(s) from the certificate")
        )
        summary = "stale" if summary == "ok" else summary
    return ServiceRow(
        name,
        _state_of(findings),
        summary,
        pending=pending,
        held=held,
        files_match=match,
        reasons=_reasons(findings),
    )


def _in_service_keys(probe_services: Mapping[str, Any], names: Iterable[str]) -> set[str]:
    keys = set()
    for name in names:
        for f in (probe_services.get(name) or {}).get("files", []):
            if f.get("content") in ("cert", "fullchain", "combined") and f.get("spki_sha256"):
                keys.add(f["spki_sha256"])
    return keys


def _tlsa_row(
    inventory: Inventory,
    owner: str,
    port: int,
    proto: str,
    keys: Sequence[str],
    obs: TlsaObservation | None,
) -> TlsaRow:
    zone = zone_of(owner, inventory.zone_names)
    signed = next((z.signed for z in inventory.settings.zones if z.name == zone), False)
    wanted = [f"3 1 1 {k}" for k in keys]
    row = TlsaRow(owner, port, proto, State.OK, signed, wanted=wanted)
    if obs is None:
        row.reasons = ["DNS not checked"]
        return row
    findings: list[Finding] = []
    row.servers = obs.servers
    sets = {}
    for server, records in sorted(obs.servers.items()):
        if isinstance(records, str):
            findings.append(Finding(State.CRITICAL, f"{owner}: {server}: {records}"))
            continue
        have = {tlsa.canonical(r) for r in records}
        sets[server] = have
        missing = [w for w in wanted if w not in have]
        if missing:
            findings.append(
                Finding(
                    State.CRITICAL,
                    f"{owner}: {server} does not serve the record of the key in service "
                    f"({missing[0][:22]}...)",
                )
            )
    if len({frozenset(s) for s in sets.values()}) > 1:
        findings.append(Finding(State.WARNING, f"{owner}: the authoritative servers disagree"))
    if sets:
        row.matches_key = (
            bool(wanted)
            and all(all(w in have for w in wanted) for have in sets.values())
            and len(sets) == len(obs.servers)
        )
    row.ad, row.dane, row.dane_summary = obs.ad_status, obs.dane, obs.dane_summary
    if obs.ad_status is not None and signed and obs.ad_status != "secure":
        detail = f" ({obs.ad_detail})" if obs.ad_detail else ""
        findings.append(
            Finding(State.CRITICAL, f"{owner}: {obs.ad_status} via {obs.resolver}{detail}")
        )
    if obs.dane == "mismatch" or (obs.dane == "no_dane" and signed):
        findings.append(Finding(State.CRITICAL, f"{owner}: DANE check: {obs.dane_summary}"))
    elif obs.dane == "failure":
        findings.append(Finding(State.UNKNOWN, f"{owner}: DANE check failed: {obs.dane_summary}"))
    if not signed:
        findings.append(Finding(State.OK, f"{owner}: zone {zone} is unsigned: no DANE"))
    row.state = _state_of(findings)
    row.reasons = _reasons(findings)
    return row


def certificate_row(
    inventory: Inventory,
    host: HostSpec,
    cert: Certificate,
    probe: Mapping[str, Any] | None,
    dns: Mapping[str, TlsaObservation],
    thresholds: Thresholds,
    now: dt.datetime,
    error: str | None = None,
) -> tuple[CertRow, list[Due]]:
    """One certificate's row, and what only a run does for it (with when)."""
    row = CertRow(
        host=host.fqdn,
        name=cert.name,
        issuer=cert.issuer,
        acme=cert.is_acme,
        names=list(cert.names),
        key_type=None,
        state=State.UNKNOWN,
    )
    mapping = services.mapping(inventory, host)["services"]
    used_by = [s for s in mapping if s["certificate"] == cert.name]
    pubs = [p for p in host.tlsa if p.certificate == cert.name]
    if probe is None:
        row.reasons = [f"unknown: host not read: {error or 'no probe'}"]
        row.services = [_service_row(s, None, None, None, now) for s in used_by]
        return row, []
    entry = probe.get("certificates", {}).get(cert.name, {})
    held = entry.get("cert") or {"present": False}
    key = entry.get("key") or {"present": False}
    findings: list[Finding] = []
    dues: list[Due] = []
    where = services.certificate_files(cert)["cert"]
    spki = held.get("spki_sha256")
    if not held.get("present"):
        findings.append(Finding(State.CRITICAL, f"no certificate at {where}"))
    elif "error" in held:
        findings.append(Finding(State.CRITICAL, f"{where}: {held['error']}"))
    else:
        row.names = list(held.get("names") or cert.names)
        row.key_type = held.get("key_type")
        row.not_after = _when(held.get("not_after"))
        assert row.not_after is not None
        left = row.not_after - now
        row.seconds_left = left.total_seconds()
        if left <= dt.timedelta(0):
            findings.append(Finding(State.CRITICAL, f"expired {_days(-left)} ago"))
        elif left <= dt.timedelta(days=thresholds.crit_days):
            findings.append(Finding(State.CRITICAL, f"expires in {_days(left)}"))
        elif left <= dt.timedelta(days=thresholds.warn_days):
            findings.append(Finding(State.WARNING, f"expires in {_days(left)}"))
        if sorted(held.get("names") or []) != sorted(cert.names):
            findings.append(
                Finding(
                    State.WARNING,
                    f"names on the host ({', '.join(sorted(held.get('names') or []))}) are not "
                    f"the inventory's ({', '.join(sorted(cert.names))})",
                )
            )
        if cert.key_type != row.key_type and not cert.rollover:
            findings.append(
                Finding(State.WARNING, f"key type {row.key_type}, the inventory: {cert.key_type}")
            )
        row.next_renewal = next_renewal(cert, held, entry.get("renewal"))
        if row.next_renewal is not None:
            late = now - row.next_renewal
            if late > GRACE:
                who = "certbot's timer" if cert.is_acme else "a pyinfra run"
                findings.append(
                    Finding(
                        State.WARNING,
                        f"renewal overdue by {_days(late)} ({who} renews it)",
                    )
                )
            if not cert.is_acme:
                dues.append(Due(row.next_renewal, host.fqdn, f"renew {cert.name}"))
    if key.get("present") is False:
        findings.append(Finding(State.CRITICAL, "no private key"))
    elif "error" in key:
        findings.append(Finding(State.CRITICAL, f"private key: {key['error']}"))
    elif spki and key.get("spki_sha256") != spki:
        findings.append(Finding(State.CRITICAL, "the private key does not match the certificate"))
    row.rollover, step_due = rollover_due(inventory, host, cert, entry.get("rollover"), now)
    if step_due is not None:
        dues.append(Due(step_due, host.fqdn, f"key rollover of {cert.name}: {row.rollover}"))

    probe_services = probe.get("services") or {}
    row.services = [
        _service_row(s, probe_services.get(s["name"]), spki, held.get("sha256"), now)
        for s in used_by
    ]
    keys = sorted({spki} if spki else set())
    in_service = _in_service_keys(probe_services, [s["name"] for s in used_by])
    keys += sorted(in_service - set(keys))
    for pub in pubs:
        owner = tlsa_owner(pub.port, pub.proto, host.tlsa_name(pub))
        row.tlsa.append(_tlsa_row(inventory, owner, pub.port, pub.proto, keys, dns.get(owner)))
    row.state = worst(
        [_state_of(findings)] + [s.state for s in row.services] + [t.state for t in row.tlsa]
    )
    row.reasons = _reasons(findings)
    parts: list[ServiceRow | TlsaRow] = [*row.services, *row.tlsa]
    for part in parts:
        row.reasons += [r for r in part.reasons if not r.startswith("DNS not checked")]
    return row, dues


def crl_row(
    ca: str,
    where: str,
    info: Mapping[str, Any] | None,
    crl_days: int,
    now: dt.datetime,
    *,
    controller: Mapping[str, Any] | None = None,
) -> CrlRow:
    """One CRL (the controller's, or a host's copy compared with the controller's)."""
    row = CrlRow(ca, where, State.OK)
    findings: list[Finding] = []
    if not info or not info.get("present"):
        findings.append(Finding(State.WARNING, "no CRL yet (the next run issues and delivers it)"))
    elif "error" in info:
        findings.append(Finding(State.CRITICAL, str(info["error"])))
    else:
        row.next_update = _when(info.get("next_update"))
        row.this_update = _when(info.get("this_update"))
        row.number = info.get("number")
        if row.next_update is None:
            findings.append(Finding(State.WARNING, "the CRL has no next update"))
        else:
            left = row.next_update - now
            if left <= dt.timedelta(0):
                findings.append(
                    Finding(
                        State.CRITICAL,
                        f"expired {_days(-left)} ago: clients of services that check it are "
                        "refused",
                    )
                )
            elif left <= dt.timedelta(days=crl_days / 4):
                findings.append(Finding(State.CRITICAL, f"expires in {_days(left)}"))
            elif left <= dt.timedelta(days=issue.crl_window(crl_days)):
                findings.append(
                    Finding(State.WARNING, "past half its life: the next run issues it again")
                )
        theirs = dict(controller or {})
        fresh = theirs.get("present") and "error" not in theirs
        if fresh and theirs.get("number") != info.get("number"):
            findings.append(
                Finding(
                    State.WARNING,
                    f"number {info.get('number')}, the controller has "
                    f"{theirs.get('number')} (the next run delivers it)",
                )
            )
    row.state = _state_of(findings)
    row.reasons = _reasons(findings)
    return row


def next_run(dues: Sequence[Due], now: dt.datetime) -> NextRun:
    ordered = sorted(dues, key=lambda d: (d.at, d.host, d.what))
    if not ordered:
        return NextRun(None, State.OK, reasons=["nothing only a run does is due"])
    due = ordered[0].at
    run = NextRun(due, State.OK, because=ordered)
    if now - due > RUN_GRACE:
        run.state = State.WARNING
        run.reasons = [
            f"warning: the next pyinfra run was due {_days(now - due)} ago "
            f"({ordered[0].host}: {ordered[0].what})"
        ]
    return run


def _expire_before_run(run: NextRun, rows: Iterable[CrlRow | CertRow]) -> None:
    """CRITICAL: a host's CRL or CA-issued certificate lapses before the next due run."""
    if run.due is None:
        return
    for row in rows:
        when = row.next_update if isinstance(row, CrlRow) else row.not_after
        if isinstance(row, CertRow) and row.acme:
            continue
        if when is not None and when < run.due:
            what = "the CRL" if isinstance(row, CrlRow) else "the certificate"
            row.reasons.insert(
                0,
                f"critical: {what} expires {_date(when)}, before the next run is due "
                f"({_date(run.due)})",
            )
            row.state = State.CRITICAL


def evaluate(
    inventory: Inventory,
    probes: Mapping[str, Mapping[str, Any] | str],
    controller_crls: Mapping[str, Mapping[str, Any] | None],
    dns: Mapping[str, TlsaObservation],
    *,
    thresholds: Thresholds | None = None,
    now: dt.datetime | None = None,
    hosts: Sequence[str] | None = None,
) -> Report:
    """The report. ``probes``: host FQDN -> the probe's JSON, or why it could not be read;
    ``controller_crls``: CA -> the CA store's current CRL (probe's ``crl_info`` shape)."""
    thresholds = thresholds or Thresholds()
    now = now or dt.datetime.now(dt.UTC)
    selected = list(hosts) if hosts is not None else list(inventory.hosts)
    host_rows: list[HostRow] = []
    dues: list[Due] = []
    host_crls: list[CrlRow] = []
    for fqdn in selected:
        host = inventory.hosts[fqdn]
        if not probed(host, inventory):
            continue
        found = probes.get(fqdn)
        probe = found if isinstance(found, Mapping) and "error" not in found else None
        error = None
        if probe is None:
            error = found if isinstance(found, str) else (found or {}).get("error", "not read")
        hrow = HostRow(fqdn, host.pyinfra_name, State.OK, error=error)
        for cert in host.certificates:
            crow, cdues = certificate_row(
                inventory, host, cert, probe, dns, thresholds, now, error=error
            )
            hrow.certificates.append(crow)
            dues += cdues
        for ca in issue.host_plan(inventory, fqdn).crls:
            if probe is None:
                hrow.crls.append(CrlRow(ca, fqdn, State.UNKNOWN, reasons=["host not read"]))
                continue
            days = inventory.settings.cas[ca].crl_days
            info = (probe.get("crls") or {}).get(ca)
            hrow.crls.append(crl_row(ca, fqdn, info, days, now, controller=controller_crls.get(ca)))
        host_crls += hrow.crls
        host_rows.append(hrow)
    ctl_rows = []
    needed = {c.ca for c in host_crls}
    for ca, spec in inventory.settings.cas.items():
        info = controller_crls.get(ca)
        if info is None and ca not in needed:
            continue
        ctl_rows.append(crl_row(ca, "controller", info, spec.crl_days, now))
        expires = _when((info or {}).get("next_update"))
        if expires is not None:
            half = expires - dt.timedelta(days=issue.crl_window(spec.crl_days))
            dues.append(Due(half, "controller", f"issue the CRL of {ca} again"))
    run = next_run(dues, now)
    _expire_before_run(run, [*host_crls, *ctl_rows])
    _expire_before_run(run, [c for h in host_rows for c in h.certificates])
    for hrow in host_rows:
        states = [c.state for c in hrow.certificates] + [c.state for c in hrow.crls]
        hrow.state = State.UNKNOWN if hrow.error else worst(states)
        hrow.certificates.sort(key=lambda c: (-c.state.rank, c.name))
        hrow.crls.sort(key=lambda c: (-c.state.rank, c.ca))
    host_rows.sort(key=lambda h: (-h.state.rank, h.host))
    ctl_rows.sort(key=lambda c: (-c.state.rank, c.ca))
    return Report(now, thresholds, host_rows, ctl_rows, run)


# -- JSON ---------------------------------------------------------------------------------------


def _iso(when: dt.datetime | None) -> str | None:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ") if when else None


def _crl_json(row: CrlRow) -> dict[str, Any]:
    return {
        "ca": row.ca,
        "where": row.where,
        "state": row.state.label,
        "next_update": _iso(row.next_update),
        "this_update": _iso(row.this_update),
        "number": row.number,
        "reasons": row.reasons,
    }


def to_json(report: Report) -> dict[str, Any]:
    """The ``--json`` document (``schema`` 1, described in README.md)."""
    now = report.generated

    def cert(c: CertRow) -> dict[str, Any]:
        return {
            "host": c.host,
            "name": c.name,
            "issuer": c.issuer,
            "acme": c.acme,
            "names": c.names,
            "key_type": c.key_type,
            "state": c.state.label,
            "not_after": _iso(c.not_after),
            "seconds_left": None if c.seconds_left is None else int(c.seconds_left),
            "days_left": c.days_left,
            "next_renewal": _iso(c.next_renewal),
            "rollover": c.rollover,
            "services": [
                {
                    "name": s.name,
                    "state": s.state.label,
                    "summary": s.summary,
                    "files_match": s.files_match,
                    "pending": s.pending,
                    "held": s.held,
                    "reasons": s.reasons,
                }
                for s in c.services
            ],
            "tlsa": [
                {
                    "owner": t.owner,
                    "port": t.port,
                    "proto": t.proto,
                    "state": t.state.label,
                    "signed": t.signed,
                    "wanted": t.wanted,
                    "servers": {
                        k: (v if isinstance(v, list) else {"error": v})
                        for k, v in t.servers.items()
                    },
                    "matches_key": t.matches_key,
                    "ad": t.ad,
                    "dane": t.dane,
                    "dane_summary": t.dane_summary,
                    "reasons": t.reasons,
                }
                for t in c.tlsa
            ],
            "reasons": c.reasons,
        }

    run = report.next_run
    return {
        "schema": SCHEMA,
        "generated": _iso(now),
        "state": report.state.label,
        "exit_code": report.exit_code,
        "thresholds": {
            "warn_days": report.thresholds.warn_days,
            "crit_days": report.thresholds.crit_days,
        },
        "next_run": {
            "due": _iso(run.due),
            "seconds_left": None if run.due is None else int((run.due - now).total_seconds()),
            "state": run.state.label,
            "because": [{"at": _iso(d.at), "host": d.host, "what": d.what} for d in run.because],
            "reasons": run.reasons,
        },
        "hosts": [
            {
                "host": h.host,
                "pyinfra_name": h.pyinfra_name,
                "state": h.state.label,
                "error": h.error,
                "certificates": [cert(c) for c in h.certificates],
                "crls": [_crl_json(r) for r in h.crls],
            }
            for h in report.hosts
        ],
        "crls": [_crl_json(r) for r in report.crls],
    }


# -- Prometheus textfile ------------------------------------------------------------------------


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    """Exact sample values: ``:g`` would round a Unix time to six digits."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def to_prometheus(report: Report) -> str:
    """node_exporter's textfile format: HELP and TYPE once per metric, then its samples."""
    metrics: dict[str, tuple[str, list[str]]] = {}

    def sample(name: str, help_text: str, labels: dict[str, str], value: float) -> None:
        metrics.setdefault(name, (help_text, []))[1].append(
            f"{name}{_labels(**labels) if labels else ''} {_number(value)}"
        )

    now = report.generated
    sample(
        "pkinfra_status",
        "Overall state: 0 ok, 1 warning, 2 critical, 3 unknown.",
        {},
        int(report.state),
    )
    sample(
        "pkinfra_status_generated_timestamp_seconds",
        "When pkinfra status ran (Unix time).",
        {},
        int(now.timestamp()),
    )
    if report.next_run.due is not None:
        sample(
            "pkinfra_next_run_due_timestamp_seconds",
            "The latest time the next pyinfra run must start (Unix time).",
            {},
            int(report.next_run.due.timestamp()),
        )
    for h in report.hosts:
        sample(
            "pkinfra_host_probe_success",
            "1 when the host's probe answered.",
            {"host": h.host},
            0 if h.error else 1,
        )
        for c in h.certificates:
            base = {"host": c.host, "certificate": c.name, "issuer": c.issuer}
            sample(
                "pkinfra_certificate_state",
                "Certificate state: 0 ok, 1 warning, 2 critical, 3 unknown.",
                base,
                int(c.state),
            )
            if c.not_after is not None:
                sample(
                    "pkinfra_certificate_expiry_seconds",
                    "Seconds until the certificate on the host expires (negative: expired).",
                    base,
                    int((c.not_after - now).total_seconds()),
                )
            if c.next_renewal is not None:
                sample(
                    "pkinfra_certificate_renewal_timestamp_seconds",
                    "When the certificate is due for renewal (Unix time).",
                    base,
                    int(c.next_renewal.timestamp()),
                )
            pending = sum(1 for s in c.services if s.pending)
            held = sum(1 for s in c.services if s.held)
            who = {"host": c.host, "certificate": c.name}
            sample(
                "pkinfra_pending_notifications",
                "Services of the certificate with a notification pending.",
                who,
                pending,
            )
            sample(
                "pkinfra_delivery_held",
                "Services of the certificate whose new key the DANE gate holds back.",
                who,
                held,
            )
            for t in c.tlsa:
                if t.dane_valid is None:
                    continue
                sample(
                    "pkinfra_dane_valid",
                    "1 when the live DANE check of the publication is valid.",
                    {**who, "owner": t.owner},
                    1 if t.dane_valid else 0,
                )
        for r in h.crls:
            if r.next_update is not None:
                sample(
                    "pkinfra_crl_next_update_timestamp_seconds",
                    "The CRL's next update (Unix time), on the controller or a host.",
                    {"ca": r.ca, "host": r.where},
                    int(r.next_update.timestamp()),
                )
    for r in report.crls:
        if r.next_update is not None:
            sample(
                "pkinfra_crl_next_update_timestamp_seconds",
                "The CRL's next update (Unix time), on the controller or a host.",
                {"ca": r.ca, "host": r.where},
                int(r.next_update.timestamp()),
            )
    lines = []
    for name, (help_text, samples) in metrics.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", *samples]
    return "\n".join(lines) + "\n"


# -- terminal -----------------------------------------------------------------------------------

_COLOURS = {State.OK: "32", State.WARNING: "33", State.CRITICAL: "31", State.UNKNOWN: "35"}


def _paint(text: str, state: State, colour: bool) -> str:
    return f"\x1b[{_COLOURS[state]}m{text}\x1b[0m" if colour else text


def _left(c: CertRow) -> str:
    if c.seconds_left is None:
        return "-"
    return f"{c.days_left} d" if c.seconds_left >= 0 else f"expired ({c.days_left} d)"


def _services_cell(c: CertRow) -> str:
    return ", ".join(f"{s.name}: {s.summary}" for s in c.services) or "-"


def _tlsa_cell(c: CertRow) -> str:
    cells = []
    for t in c.tlsa:
        port = f"{t.port}/{t.proto}"
        if t.dane is not None:
            cells.append(f"{port} {t.dane}")
        elif t.matches_key is not None:
            cells.append(f"{port} {'served' if t.matches_key else 'not served'}")
        else:
            cells.append(f"{port} -")
    return ", ".join(cells) or "-"


def _crl_lines(crls: Sequence[CrlRow], colour: bool) -> list[str]:
    out = []
    for crl in crls:
        state = _paint(crl.state.name, crl.state, colour)
        out.append(f"  CRL {crl.ca}: next update {_date(crl.next_update)}  {state}")
        out += [f"      {x}" for x in crl.reasons]
    return out


def to_text(report: Report, *, colour: bool = False) -> str:
    """Grouped by host, worst first; each row's reasons below it."""
    now = report.generated
    run = report.next_run
    head = f"pkinfra status: {report.state.name} at {_date(now)}"
    out = [_paint(head, report.state, colour)]
    if run.due is not None:
        first = run.because[0]
        when = f"in {_days(run.due - now)}" if run.due >= now else f"{_days(now - run.due)} ago"
        out.append(f"next pyinfra run due by {_date(run.due)} ({when}: {first.host}: {first.what})")
    out += [f"  {r}" for r in run.reasons]
    header = ("STATE", "CERTIFICATE", "ISSUER", "KEY", "NOT AFTER", "LEFT", "RENEWAL", "SERVICES")
    for h in report.hosts:
        out.append("")
        title = f"{h.host}  {h.state.name}" + (f"  ({h.error})" if h.error else "")
        out.append(_paint(title, h.state, colour))
        rows = [header]
        for c in h.certificates:
            rows.append(
                (
                    c.state.name,
                    c.name,
                    c.issuer,
                    c.key_type or "-",
                    f"{c.not_after:%Y-%m-%d}" if c.not_after else "-",
                    _left(c),
                    f"{c.next_renewal:%Y-%m-%d}" if c.next_renewal else "-",
                    _services_cell(c),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        for i, r in enumerate(rows):
            line = "  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True))
            line = line.rstrip()
            if i == 0:
                out.append(line)
                continue
            c = h.certificates[i - 1]
            out.append(line.replace(c.state.name, _paint(c.state.name, c.state, colour), 1))
            if c.tlsa:
                out.append(f"      DANE: {_tlsa_cell(c)}")
            if c.rollover:
                out.append(f"      rollover: {c.rollover}")
            out += [f"      {r}" for r in c.reasons if not r.startswith("zone ")]
        out += _crl_lines(h.crls, colour)
    if report.crls:
        out.append("")
        out.append("controller CRLs")
        out += _crl_lines(report.crls, colour)
    return "\n".join(out) + "\n"


# -- HTML ---------------------------------------------------------------------------------------


def _timeline(report: Report, width: int = 1200) -> dict[str, Any]:
    """Positions for the expiry timeline (inline SVG): now at the left, the latest expiry or
    120 days at the right; one lane per certificate, CRLs and the next run as marks."""
    now = report.generated
    certs = [c for c in report.certificates() if c.not_after is not None]
    ends = [c.not_after - now for c in certs if c.not_after is not None]
    horizon = max([dt.timedelta(days=120), *ends])
    horizon = min(horizon, dt.timedelta(days=400))
    left, right = 230, width - 20
    span = right - left

    def x(when: dt.datetime) -> float:
        frac = (when - now) / horizon
        return round(left + span * min(max(frac, 0.0), 1.0), 1)

    lanes = []
    for i, c in enumerate(sorted(certs, key=lambda c: c.not_after or now)):
        assert c.not_after is not None
        lanes.append(
            {
                "y": 40 + i * 26,
                "label": f"{c.host.split('.')[0]}/{c.name}",
                "state": c.state.label,
                "x_end": x(c.not_after),
                "x_renew": x(c.next_renewal) if c.next_renewal else None,
                "end": f"{c.not_after:%Y-%m-%d}",
                "past": c.not_after < now,
            }
        )
    ticks = []
    step = 7 if horizon <= dt.timedelta(days=60) else 30
    for day in range(0, horizon.days + 1, step):
        when = now + dt.timedelta(days=day)
        ticks.append({"x": x(when), "label": "now" if day == 0 else f"{when:%m-%d}"})
    run_x = x(report.next_run.due) if report.next_run.due else None
    return {
        "width": width,
        "height": 60 + max(1, len(lanes)) * 26,
        "left": left,
        "right": right,
        "lanes": lanes,
        "ticks": ticks,
        "run_x": run_x,
    }


def to_html(report: Report) -> str:
    """One self-contained page: summary, timeline (SVG), a sortable and filterable table."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        autoescape=True,
    )
    counts = {s.label: 0 for s in State}
    for c in report.certificates():
        counts[c.state.label] += 1
    rows = []
    for h in report.hosts:
        for c in h.certificates:
            rows.append(
                {
                    "host": h.host,
                    "cert": c,
                    "left": _left(c),
                    "services": _services_cell(c),
                    "tlsa": _tlsa_cell(c),
                }
            )
    crls = [r for h in report.hosts for r in h.crls] + report.crls
    page = env.get_template("status.html.j2").render(
        report=report,
        counts=counts,
        rows=rows,
        crls=crls,
        timeline=_timeline(report),
        date=_date,
        days=_days,
    )
    return page
