"""``pkinfra.status``: states and reasons from probe JSON (made by the real probe on a temporary
layout), DNS observations and the controller's CRLs; ordering, days left, the next run, exit
codes; and the renderers (JSON, Prometheus textfile, HTML in headless Chromium, systemd units)."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pkinfra import status
from pkinfra.agent.files import write_atomic
from pkinfra.agent.status_probe import crl_info
from pkinfra.cli_status import render_cron, render_schedule
from pkinfra.status import State, TlsaObservation
from tests.unit.status_fixtures import NOW, HostFiles, copy_site, make_crl, probe

HOSTS = ("db1.example.test", "mx1.example.test", "web1.example.test", "mon1.example.test")
SERVERS = ("172.29.53.10", "172.29.53.11")


class Site:
    """The lab inventory, every host's files converged, and fresh controller CRLs."""

    def __init__(self, tmp: Path) -> None:
        _, self.inventory, _ = copy_site(tmp / "site")
        self.files = {h: HostFiles(tmp / h, self.inventory, h) for h in HOSTS}
        for files in self.files.values():
            files.everything()
        crl = crl_info(make_crl(NOW + dt.timedelta(days=6), NOW - dt.timedelta(days=1)))
        self.crls: dict[str, Any] = dict.fromkeys(self.inventory.settings.cas, crl)
        self.dns: dict[str, TlsaObservation] = {}
        self.probes: dict[str, Any] = {}

    def read(self) -> None:
        self.probes = {h: probe(f) for h, f in self.files.items()}
        self.dns = {}
        for fqdn in HOSTS:
            host = self.inventory.hosts[fqdn]
            for pub in host.tlsa:
                spki = self.probes[fqdn]["certificates"][pub.certificate]["cert"]["spki_sha256"]
                owner = status.tlsa_owner(pub.port, pub.proto, host.tlsa_name(pub))
                self.dns[owner] = TlsaObservation(
                    owner,
                    servers={s: [f"3 1 1 {spki}"] for s in SERVERS},
                    resolver="172.29.53.53",
                    ad_status="secure",
                    dane="valid",
                    dane_summary="1 of 1 usable record(s) match",
                )

    def report(self, **kw: Any) -> status.Report:
        return status.evaluate(self.inventory, self.probes, self.crls, self.dns, now=NOW, **kw)


@pytest.fixture(scope="module")
def converged(tmp_path_factory: pytest.TempPathFactory) -> Site:
    site = Site(tmp_path_factory.mktemp("status"))
    site.read()
    return site


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


def cert_row(report: status.Report, host: str, name: str) -> status.CertRow:
    return next(c for c in report.certificates() if c.host == host and c.name == name)


def test_a_converged_site_is_ok(converged: Site) -> None:
    report = converged.report()
    assert report.state is State.OK and report.exit_code == 0, status.to_text(report)
    rows = report.certificates()
    assert {(c.host, c.name) for c in rows} == {
        ("db1.example.test", "postgres"),
        ("db1.example.test", "backup"),
        ("mx1.example.test", "mail"),
        ("web1.example.test", "web"),
        ("mon1.example.test", "monitoring"),
    }
    pg = cert_row(report, "db1.example.test", "postgres")
    assert pg.days_left == 60 and pg.key_type == "ec-p256"
    # The same key at two owners: example.test, and unsigned.test that the admin keeps.
    assert [t.owner for t in pg.tlsa] == [
        "_5432._tcp.db1.example.test",
        "_5432._tcp.db1.unsigned.test",
    ]
    assert all(t.matches_key is True for t in pg.tlsa)
    assert [s.summary for s in pg.services] == ["ok"]
    assert all(c.state is State.OK for c in report.crls)


@pytest.mark.parametrize(
    ("days_left", "state", "days", "reason"),
    [
        (40, State.OK, 40, None),
        (20.5, State.WARNING, 20, "warning: expires in 20 days"),
        (6.9, State.CRITICAL, 6, "critical: expires in 6 days"),
        (0.25, State.CRITICAL, 0, "critical: expires in 6 h"),
        (-1.5, State.CRITICAL, -2, "critical: expired 1 day ago"),
    ],
)
def test_days_left_and_thresholds(
    site: Site, days_left: float, state: State, days: int, reason: str | None
) -> None:
    mon1 = site.files["mon1.example.test"]
    mon1.certificate(mon1.host.certificates[0], days_left=days_left, lifetime=365)
    site.read()
    row = cert_row(site.report(), "mon1.example.test", "monitoring")
    assert row.days_left == days
    assert row.state is state
    assert (row.reasons[0] if row.reasons else None) == reason


def test_a_broken_tlsa_rrset_is_critical_and_exit_2(converged: Site) -> None:
    owner = "_25._tcp.mx1.example.test"
    dns = dict(converged.dns)
    dns[owner] = TlsaObservation(
        owner,
        servers={s: ["3 1 1 " + "ab" * 32] for s in SERVERS},
        resolver="172.29.53.53",
        ad_status="secure",
        dane="mismatch",
        dane_summary="none of 1 usable record(s) matches",
    )
    report = status.evaluate(converged.inventory, converged.probes, converged.crls, dns, now=NOW)
    mail = cert_row(report, "mx1.example.test", "mail")
    assert mail.state is State.CRITICAL and report.exit_code == 2
    assert mail.tlsa[0].matches_key is False and mail.tlsa[0].dane_valid is False
    assert any("172.29.53.10 does not serve the record" in r for r in mail.reasons)
    assert any("DANE check: none of 1" in r for r in mail.reasons)
    # Worst first: mx1 leads; the healthy hosts follow in name order.
    assert report.hosts[0].host == "mx1.example.test"
    prom = parse_prometheus(status.to_prometheus(report))
    labels = (("certificate", "mail"), ("host", "mx1.example.test"), ("owner", owner))
    assert prom["pkinfra_dane_valid"][labels] == 0


def test_no_ad_bit_on_a_signed_zone_is_critical(converged: Site) -> None:
    dns = dict(converged.dns)
    owner = "_443._tcp.web1.example.test"
    dns[owner] = TlsaObservation(
        owner, servers=dns[owner].servers, resolver="192.0.2.1", ad_status="insecure"
    )
    report = status.evaluate(converged.inventory, converged.probes, converged.crls, dns, now=NOW)
    web = cert_row(report, "web1.example.test", "web")
    assert web.state is State.CRITICAL
    assert "critical: _443._tcp.web1.example.test: insecure via 192.0.2.1" in web.reasons


def test_pending_and_held_deliveries_are_warnings(site: Site) -> None:
    db1, mx1 = site.files["db1.example.test"], site.files["mx1.example.test"]
    db1.write("/var/lib/pkinfra/pending/postgresql", b"files changed: server.crt\n")
    site.read()
    old = site.probes["mx1.example.test"]["certificates"]["mail"]["cert"]["spki_sha256"]
    # mx1's certificate has a new key; postfix still has the old one and a DANE gate. The
    # publisher serves both records (the held service keeps its own).
    mx1.certificate(mx1.host.certificates[0], new_key=True)
    # ... and the delivery agent wrote down that the gate held the new key back.
    mx1.write("/var/lib/pkinfra/held/postfix", b"_25._tcp.mx1.example.test: served 12 s of 60\n")
    site.read()
    owner = "_25._tcp.mx1.example.test"
    for server in SERVERS:
        site.dns[owner].servers[server] = [*site.dns[owner].servers[server], f"3 1 1 {old}"]
    report = site.report()
    pg = cert_row(report, "db1.example.test", "postgres")
    assert pg.state is State.WARNING and pg.services[0].summary == "pending"
    assert any("postgresql: notification pending" in r for r in pg.reasons)
    mail = cert_row(report, "mx1.example.test", "mail")
    assert mail.services[0].summary == "held"
    assert mail.services[0].held == "_25._tcp.mx1.example.test: served 12 s of 60"
    assert any("postfix: delivery held" in r and "served 12 s of 60" in r for r in mail.reasons)
    assert mail.state is State.WARNING, mail.reasons
    assert report.exit_code == 1
    prom = parse_prometheus(status.to_prometheus(report))
    who = (("certificate", "postgres"), ("host", "db1.example.test"))
    assert prom["pkinfra_pending_notifications"][who] == 1
    assert (
        prom["pkinfra_delivery_held"][(("certificate", "mail"), ("host", "mx1.example.test"))] == 1
    )


def test_an_old_key_without_a_recorded_hold_is_stale_not_held(site: Site) -> None:
    """Nothing recorded a hold (no delivery since the new key): the service is behind, and
    status does not guess why."""
    mx1 = site.files["mx1.example.test"]
    site.read()
    mx1.certificate(mx1.host.certificates[0], new_key=True)
    site.read()
    mail = cert_row(site.report(), "mx1.example.test", "mail")
    assert mail.services[0].summary == "stale" and mail.services[0].held is None
    assert any("still has the previous key" in r for r in mail.reasons), mail.reasons


def test_the_held_service_keeps_its_record_wanted(site: Site) -> None:
    mx1 = site.files["mx1.example.test"]
    site.read()
    old = site.probes["mx1.example.test"]["certificates"]["mail"]["cert"]["spki_sha256"]
    mx1.certificate(mx1.host.certificates[0], new_key=True)
    fresh = probe(mx1)
    new = fresh["certificates"]["mail"]["cert"]["spki_sha256"]
    site.probes["mx1.example.test"] = fresh
    # Only the new key's record is served: postfix (held, old key) would fail DANE.
    owner = "_25._tcp.mx1.example.test"
    site.dns[owner].servers = {s: [f"3 1 1 {new}"] for s in SERVERS}
    mail = cert_row(site.report(), "mx1.example.test", "mail")
    assert mail.tlsa[0].wanted == [f"3 1 1 {new}", f"3 1 1 {old}"]
    assert mail.state is State.CRITICAL


def test_key_mismatch_and_missing_files_are_critical(site: Site) -> None:
    db1 = site.files["db1.example.test"]
    other = HostFiles(db1.root.parent / "other", site.inventory, "db1.example.test")
    other.certificate(db1.host.certificates[0])
    db1.write(
        "/etc/pkinfra/certs/postgres/key.pem",
        (other.root / "etc/pkinfra/certs/postgres/key.pem").read_bytes(),
    )
    db1.path("/etc/postgresql/tls/server.crt").unlink()
    site.read()
    pg = cert_row(site.report(), "db1.example.test", "postgres")
    assert pg.state is State.CRITICAL
    assert "critical: the private key does not match the certificate" in pg.reasons
    assert "critical: postgresql: /etc/postgresql/tls/server.crt is missing" in pg.reasons


def test_an_unreachable_host_is_unknown_but_keeps_its_rows(converged: Site) -> None:
    probes = dict(converged.probes)
    probes["web1.example.test"] = "exit 255: ssh: connect to host 172.29.53.20: refused"
    report = status.evaluate(converged.inventory, probes, converged.crls, converged.dns, now=NOW)
    web = cert_row(report, "web1.example.test", "web")
    assert web.state is State.UNKNOWN and "refused" in web.reasons[0]
    assert report.exit_code == 3
    assert report.hosts[0].host == "web1.example.test"
    # A known critical outranks an unknown host.
    probes["mon1.example.test"] = {**probes["mon1.example.test"], "certificates": {}}
    report = status.evaluate(converged.inventory, probes, converged.crls, converged.dns, now=NOW)
    assert report.exit_code == 2
    assert [h.host for h in report.hosts][:2] == ["mon1.example.test", "web1.example.test"]


def test_next_run_is_the_earliest_of_renewals_crls_and_rollover_steps(converged: Site) -> None:
    report = converged.report()
    run = report.next_run
    # Controller CRLs: next update NOW + 6 d, crl_days 7: issued again at NOW + 2.5 d; CA
    # certificates (90 days, renewal at 30 days left): NOW + 30 d.
    assert run.due == NOW + dt.timedelta(days=2.5)
    assert run.because[0].what.startswith("issue the CRL of")
    renewals = [d for d in run.because if d.what == "renew postgres"]
    assert renewals == [
        status.Due(NOW + dt.timedelta(days=30), "db1.example.test", "renew postgres")
    ]
    assert not any(d.what == "renew mail" for d in run.because)  # certbot renews ACME
    # A rollover step 2 comes first once due: published, and the longest TTL of its records
    # has passed (5 s, in example.test and in unsigned.test), counted from the end of the
    # second served_since names.
    probes = json.loads(json.dumps(converged.probes))
    since = int((NOW - dt.timedelta(hours=2)).timestamp())
    probes["db1.example.test"]["certificates"]["postgres"]["rollover"] = {
        "step": "published",
        "label": "2026-11",
        "served_since": since,
    }
    report = status.evaluate(converged.inventory, probes, converged.crls, converged.dns, now=NOW)
    first = report.next_run.because[0]
    assert first.at == dt.datetime.fromtimestamp(since + 1 + 5, dt.UTC)
    assert first.what == "key rollover of postgres: step published to '2026-11'"
    assert report.next_run.state is State.WARNING  # due two hours ago


def test_a_crl_that_expires_before_the_next_run_is_critical(converged: Site) -> None:
    probes = json.loads(json.dumps(converged.probes))
    soon = crl_info(make_crl(NOW + dt.timedelta(days=2), NOW - dt.timedelta(days=5)))
    probes["db1.example.test"]["crls"]["duckcorp-monitoring"] = soon
    report = status.evaluate(converged.inventory, probes, converged.crls, converged.dns, now=NOW)
    crl = next(c for c in report.hosts[0].crls if c.ca == "duckcorp-monitoring")
    assert report.hosts[0].host == "db1.example.test"
    assert crl.state is State.CRITICAL
    assert crl.reasons[0].startswith("critical: the CRL expires 2026-05-03 12:00 UTC, before")
    assert report.exit_code == 2


def test_runs_stopped_for_a_week(converged: Site) -> None:
    later = NOW + dt.timedelta(days=6, hours=1)
    report = status.evaluate(
        converged.inventory, converged.probes, converged.crls, converged.dns, now=later
    )
    assert report.next_run.state is State.WARNING
    assert report.next_run.reasons[0].startswith("warning: the next pyinfra run was due 3 days")
    assert all(c.state is State.CRITICAL for c in report.crls)
    assert any("expired" in r for c in report.crls for r in c.reasons)


def test_thresholds_are_checked() -> None:
    with pytest.raises(ValueError, match="--warn-days"):
        status.Thresholds(warn_days=3, crit_days=7)


def test_a_limited_report_has_only_those_hosts(converged: Site) -> None:
    report = converged.report(hosts=["mx1.example.test"])
    assert [h.host for h in report.hosts] == ["mx1.example.test"]


# -- renderers ----------------------------------------------------------------------------------


def parse_prometheus(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """A strict little parser of the textfile format: HELP and TYPE before the samples of
    each metric, label values quoted and escaped, one sample per series."""
    metrics: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    helped: set[str] = set()
    typed: set[str] = set()
    sample = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (-?[0-9.e+]+)$")
    label = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split()[2])
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind == "gauge" and name in helped
            typed.add(name)
            continue
        found = sample.match(line)
        assert found, line
        name, labels = found.group(1), found.group(3) or ""
        assert name in typed, f"{name} has samples before its TYPE"
        pairs = tuple(sorted(label.findall(labels)))
        assert "".join(f'{k}="{v}",' for k, v in label.findall(labels)).rstrip(",") == labels
        series = metrics.setdefault(name, {})
        assert pairs not in series, f"duplicate series {name}{labels}"
        series[pairs] = float(found.group(4))
    return metrics


def test_prometheus_textfile(converged: Site, tmp_path: Path) -> None:
    report = converged.report()
    text = status.to_prometheus(report)
    prom = parse_prometheus(text)
    pg = (("certificate", "postgres"), ("host", "db1.example.test"), ("issuer", "duckcorp"))
    assert prom["pkinfra_certificate_expiry_seconds"][pg] == 60 * 86400
    assert prom["pkinfra_status"][()] == 0
    crl = prom["pkinfra_crl_next_update_timestamp_seconds"]
    assert (
        crl[(("ca", "duckcorp"), ("host", "controller"))]
        == (NOW + dt.timedelta(days=6)).timestamp()
    )
    assert crl[(("ca", "duckcorp"), ("host", "db1.example.test"))] > 0
    assert (
        prom["pkinfra_next_run_due_timestamp_seconds"][()]
        == (NOW + dt.timedelta(days=2.5)).timestamp()
    )
    target = tmp_path / "pkinfra.prom"
    write_atomic(target, text.encode())  # how pkinfra status writes its files
    assert target.read_text() == text and oct(target.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == ["pkinfra.prom"]


def test_json_schema_1(converged: Site) -> None:
    data = json.loads(json.dumps(status.to_json(converged.report())))
    assert data["schema"] == 1 and data["state"] == "ok" and data["exit_code"] == 0
    assert set(data) == {
        "schema",
        "generated",
        "state",
        "exit_code",
        "thresholds",
        "next_run",
        "hosts",
        "crls",
    }
    db1 = next(h for h in data["hosts"] if h["host"] == "db1.example.test")
    pg = next(c for c in db1["certificates"] if c["name"] == "postgres")
    assert pg["days_left"] == 60 and pg["seconds_left"] == 60 * 86400
    assert pg["not_after"] == "2026-06-30T12:00:00Z"
    assert pg["tlsa"][0]["servers"]["172.29.53.10"] == pg["tlsa"][0]["wanted"]
    assert data["next_run"]["due"] == "2026-05-04T00:00:00Z"


def test_text_is_grouped_worst_first_without_colour_off_a_tty(converged: Site) -> None:
    probes = dict(converged.probes)
    probes["web1.example.test"] = "exit 255: no route"
    report = status.evaluate(converged.inventory, probes, converged.crls, converged.dns, now=NOW)
    text = status.to_text(report)
    assert "\x1b[" not in text
    assert text.index("web1.example.test  UNKNOWN") < text.index("db1.example.test  OK")
    assert "\x1b[35m" in status.to_text(report, colour=True)


# -- the HTML page, in a real browser ----------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def broken_report(site: Site) -> status.Report:
    """Something of each kind: a TLSA mismatch, a pending delivery, an expiring certificate."""
    dns = dict(site.dns)
    owner = "_25._tcp.mx1.example.test"
    dns[owner] = TlsaObservation(
        owner,
        servers={s: ["3 1 1 " + "ab" * 32] for s in SERVERS},
        resolver="172.29.53.53",
        ad_status="secure",
        dane="mismatch",
        dane_summary="none of 1 usable record(s) matches",
    )
    probes = json.loads(json.dumps(site.probes))
    probes["db1.example.test"]["services"]["backup-agent"]["pending"] = "restart failed"
    mon = probes["mon1.example.test"]["certificates"]["monitoring"]["cert"]
    mon["not_after"] = int((NOW + dt.timedelta(days=12)).timestamp())
    return status.evaluate(site.inventory, probes, site.crls, dns, now=NOW)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: chromium)")
def test_html_in_headless_chromium(converged: Site, tmp_path: Path) -> None:
    report = broken_report(converged)
    page = status.to_html(report)
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "<script src" not in page and "<link" not in page  # self-contained
    path = tmp_path / "status.html"
    path.write_text(page)
    dom = chromium("--dump-dom", path.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    rows = re.findall(
        r'<tr class="row-(\w+)" data-state="\w+" data-host="([^"]+)"\s+'
        r'data-certificate="([^"]+)"',
        dom.stdout,
    )
    assert {(h, c) for _, h, c in rows} == {(c.host, c.name) for c in report.certificates()}
    states = {(h, c): s for s, h, c in rows}
    assert states[("mx1.example.test", "mail")] == "critical"
    assert states[("mon1.example.test", "monitoring")] == "warning"
    assert states[("db1.example.test", "backup")] == "warning"
    assert rows[0][0] == "critical"  # worst first
    # The script ran: the filter line counts the rows it shows.
    assert f"{len(rows)} of {len(rows)} shown" in dom.stdout
    assert dom.stdout.count('class="lane"') == len(rows)
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = SHOTS / "status.png"
    done = chromium(f"--screenshot={shot}", "--window-size=1400,900", path.as_uri())
    assert done.returncode == 0 and shot.stat().st_size > 10_000, done.stderr[-2000:]


# -- the schedule -------------------------------------------------------------------------------

ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (Debian: systemd)")
def test_rendered_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    assert ANALYZE is not None
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("python", "pyinfra", "pkinfra"):
        (bin_dir / tool).write_text("#!/bin/sh\n")
        (bin_dir / tool).chmod(0o755)
    units = render_schedule(
        workdir=tmp_path,
        python_bin=bin_dir / "python",
        inventory="inventory.py",
        deploy="deploys/site.py",
        prometheus="/var/lib/prometheus/node-exporter/pkinfra.prom",
        on_calendar="*-*-* 00/6:17:00",
    )
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    run = subprocess.run(
        [ANALYZE, "verify", *(str(tmp_path / n) for n in units)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ExecStopPost=-" in units["pkinfra-site.service"]
    assert (
        "--prometheus /var/lib/prometheus/node-exporter/pkinfra.prom"
        in units["pkinfra-site.service"]
    )
    # A calendar systemd does not understand fails the same check.
    bad = units["pkinfra-site.timer"].replace("00/6:17:00", "every six hours")
    (tmp_path / "pkinfra-site.timer").write_text(bad)
    run = subprocess.run(
        [ANALYZE, "verify", str(tmp_path / "pkinfra-site.timer")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0


def test_cron_line(tmp_path: Path) -> None:
    line = render_cron(
        workdir=tmp_path / "my site",
        python_bin=Path("/opt/venv/bin/python"),
        inventory="inventory.py",
        deploy="deploys/site.py",
        prometheus="/tmp/p.prom",
    )
    assert line.startswith("17 */6 * * * cd ")
    assert f"'{tmp_path}/my site'" in line
    assert "/opt/venv/bin/pyinfra -y inventory.py deploys/site.py;" in line
