"""``pkinfra status`` and ``pkinfra schedule``: gather, then let ``pkinfra.status`` decide.

Gathering: one remote command per host (the status probe, ``pkinfra.agent.status_probe``, on
the host's ``python3`` through SSH + sudo, or ``docker exec -i`` for ``@docker/`` hosts), all
hosts in parallel threads; the controller's own CRLs from the CA store; for every TLSA
publication the records each authoritative server serves (asked directly), the validating
resolver's answer (AD bit) and a live DANE check (``pkinfra.dane``). pyinfra's run machinery
is not used: the connection settings are read from the inventory's host data as pyinfra would
(``ssh_hostname``, ``ssh_user``, ``ssh_port``, ``ssh_key``, ``ssh_known_hosts_file``,
``ssh_strict_host_key_checking``, ``_sudo``, ``_sudo_user``), since ``HostSpec`` keeps only
pkinfra's fields.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fnmatch
import json
import runpy
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rdatatype

from pkinfra import dane, issue, status, tlsa
from pkinfra.agent import status_probe
from pkinfra.agent.errors import PkinfraError
from pkinfra.agent.files import write_atomic
from pkinfra.model import HostSpec, Inventory, read_group_data, tlsa_owner

#: Host data keys that say how pyinfra reaches a host.
CONNECTION_KEYS = (
    "ssh_hostname",
    "ssh_user",
    "ssh_port",
    "ssh_key",
    "ssh_known_hosts_file",
    "ssh_strict_host_key_checking",
    "_sudo",
    "_sudo_user",
)


class StatusError(PkinfraError):
    """A host could not be read; the text says which and why (never a secret)."""


# -- the inventory, with how to reach each host -------------------------------------------------


def load_site(path: str | Path) -> tuple[Inventory, dict[str, dict[str, Any]]]:
    """The validated inventory and each host's connection settings (by pyinfra name): the
    inventory file runs once; groups are its public lists, as pyinfra reads them."""
    from pkinfra import model

    namespace = runpy.run_path(str(path))
    inventory = next((v for v in namespace.values() if isinstance(v, Inventory)), None)
    if inventory is None:
        inventory = model.active()
    group_data = read_group_data(Path(path).resolve().parent / "group_data")
    base = {k: v for k, v in group_data.get("all", {}).items() if k in CONNECTION_KEYS}
    reach: dict[str, dict[str, Any]] = {}
    for group, members in namespace.items():
        if group.startswith("_"):
            continue
        hosts, gdata = (
            members if isinstance(members, tuple) and len(members) == 2 else (members, {})
        )
        if not isinstance(hosts, list) or not isinstance(gdata, dict):
            continue
        layer = {**group_data.get(group, {}), **gdata}
        for entry in hosts:
            name, data = entry if isinstance(entry, tuple) else (entry, {})
            if not isinstance(name, str) or not isinstance(data, dict):
                continue
            merged = reach.setdefault(name, dict(base))
            merged.update({k: v for k, v in layer.items() if k in CONNECTION_KEYS})
            merged.update({k: v for k, v in data.items() if k in CONNECTION_KEYS})
    return inventory, reach


def probe_command(pyinfra_name: str, data: Mapping[str, Any]) -> list[str]:
    """The one command that runs the probe on a host (its script comes on stdin)."""
    python = ["python3", "-"]
    if data.get("_sudo"):
        user = data.get("_sudo_user")
        python = ["sudo", "-n", *(["-u", str(user)] if user else []), *python]
    if pyinfra_name.startswith("@docker/"):
        return ["docker", "exec", "-i", pyinfra_name.removeprefix("@docker/"), *python]
    if pyinfra_name == "@local":
        return python
    if pyinfra_name.startswith("@"):
        raise StatusError(f"{pyinfra_name}: connector not supported by pkinfra status")
    ssh = ["ssh", "-T", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    if data.get("ssh_port"):
        ssh += ["-p", str(data["ssh_port"])]
    if data.get("ssh_key"):
        ssh += ["-i", str(data["ssh_key"]), "-o", "IdentitiesOnly=yes"]
    if data.get("ssh_known_hosts_file"):
        ssh += ["-o", f"UserKnownHostsFile={data['ssh_known_hosts_file']}"]
    if data.get("ssh_strict_host_key_checking"):
        ssh += ["-o", f"StrictHostKeyChecking={data['ssh_strict_host_key_checking']}"]
    if data.get("ssh_user"):
        ssh += ["-l", str(data["ssh_user"])]
    ssh += [str(data.get("ssh_hostname") or pyinfra_name), "--", shlex.join(python)]
    return ssh


def run_probe(
    command: Sequence[str], request: dict[str, Any], timeout: float = 60.0
) -> dict[str, Any]:
    """Run the probe through ``command`` and return its JSON."""
    try:
        done = subprocess.run(
            list(command),
            input=status_probe.script(request),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise StatusError(f"no answer within {timeout:g} s") from None
    except FileNotFoundError as exc:
        raise StatusError(f"{exc.filename} is not installed") from None
    try:
        report: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise StatusError(f"exit {done.returncode}: {last[:200]}") from None
    return report


# -- DNS ----------------------------------------------------------------------------------------


def served_records(owner: str, server: str, timeout: float = 3.0) -> list[str]:
    """The TLSA records ``server`` serves for ``owner``, asked without recursion; CNAMEs (into
    the shadow zone) are followed at the same server."""
    name = dns.name.from_text(owner)
    for _ in range(8):
        query = dns.message.make_query(name, dns.rdatatype.TLSA)
        query.flags &= ~dns.flags.RD
        answer = dns.query.udp(query, server, timeout=timeout)
        if answer.flags & dns.flags.TC:
            answer = dns.query.tcp(query, server, timeout=timeout)
        records, target = [], None
        for rrset in answer.answer:
            if rrset.name != name:
                continue
            if rrset.rdtype == dns.rdatatype.TLSA:
                records += [tlsa.TLSARecord.from_rdata(r).to_text() for r in rrset]
            elif rrset.rdtype == dns.rdatatype.CNAME:
                target = rrset[0].target
        if records or target is None:
            return sorted(records)
        name = target
    raise StatusError(f"{owner}: CNAME chain too long at {server}")


def authoritative_servers(inventory: Inventory) -> list[str]:
    """Addresses of the inventory's DNS primary and secondaries."""
    found = []
    for fqdn in [inventory.settings.dns.primary, *inventory.settings.dns.secondaries]:
        spec = inventory.hosts.get(fqdn)
        if spec is not None and spec.address is not None:
            found.append(str(spec.address))
    return found


@dataclass(frozen=True)
class Publication:
    host: HostSpec
    owner: str
    name: str
    port: int
    proto: str


def publications(inventory: Inventory, hosts: Sequence[str]) -> list[Publication]:
    found = []
    for fqdn in hosts:
        host = inventory.hosts[fqdn]
        for pub in host.tlsa:
            name = host.tlsa_name(pub)
            found.append(
                Publication(host, tlsa_owner(pub.port, pub.proto, name), name, pub.port, pub.proto)
            )
    return found


def observe(
    pub: Publication,
    servers: Sequence[str],
    resolver: str | None,
    *,
    live: bool,
    timeout: float,
) -> status.TlsaObservation:
    obs = status.TlsaObservation(pub.owner, resolver=resolver)
    for server in servers:
        try:
            obs.servers[server] = served_records(pub.owner, server, timeout=min(timeout, 3.0))
        except (OSError, dns.exception.DNSException, StatusError) as exc:
            obs.servers[server] = f"no answer ({exc.__class__.__name__})"
    if resolver is None:
        return obs
    try:
        lookup = dane.lookup_tlsa(pub.owner, resolver, timeout=min(timeout, 5.0))
        obs.ad_status, obs.ad_detail = lookup.status, lookup.detail
    except dane.DaneError as exc:
        obs.ad_status, obs.ad_detail = "bogus", str(exc)
    if live and pub.proto == "tcp":
        address = str(pub.host.address) if pub.host.address else pub.name
        report = dane.check(
            address,
            pub.port,
            name=pub.name,
            starttls=status.STARTTLS_PORTS.get(pub.port),
            resolver=resolver,
            timeout=timeout,
        )
        obs.dane = report.verdict.name.lower()
        obs.dane_summary = report.summary
    return obs


# -- the controller's CRLs ----------------------------------------------------------------------


def controller_crls(inventory: Inventory) -> dict[str, dict[str, Any] | None]:
    store = issue.store_for(inventory.pki_dir)
    known = set(store.names())
    found: dict[str, dict[str, Any] | None] = {}
    for ca in inventory.settings.cas:
        pem = store.current_crl(ca) if ca in known else None
        found[ca] = status_probe.crl_info(pem) if pem is not None else None
    return found


# -- gathering ----------------------------------------------------------------------------------


def select(inventory: Inventory, limit: str | None) -> list[str]:
    """Hosts matching ``--limit`` (comma-separated FQDNs, pyinfra names, groups; globs)."""
    if not limit:
        return list(inventory.hosts)
    patterns = [p.strip() for p in limit.split(",") if p.strip()]
    chosen = []
    for fqdn, host in inventory.hosts.items():
        keys = [fqdn, host.pyinfra_name, *host.groups]
        if any(fnmatch.fnmatchcase(k, p) for p in patterns for k in keys):
            chosen.append(fqdn)
    if not chosen:
        from pkinfra.cli import CLIError

        raise CLIError(f"--limit {limit}: no host of the inventory matches")
    return chosen


@dataclass
class Gathered:
    probes: dict[str, dict[str, Any] | str]
    dns: dict[str, status.TlsaObservation]
    crls: dict[str, dict[str, Any] | None]
    #: Remote commands run, by host (one each, or none).
    commands: dict[str, int]


def gather(
    inventory: Inventory,
    reach: Mapping[str, Mapping[str, Any]],
    hosts: Sequence[str],
    *,
    resolver: str | None,
    dns_checks: bool = True,
    live: bool = True,
    timeout: float = 10.0,
    workers: int = 16,
) -> Gathered:
    """Every probe and DNS observation, in parallel threads."""
    todo = [h for h in hosts if status.probed(inventory.hosts[h], inventory)]
    pubs = publications(inventory, hosts) if dns_checks else []
    servers = authoritative_servers(inventory)
    probes: dict[str, dict[str, Any] | str] = {}
    commands = dict.fromkeys(todo, 0)

    def one(fqdn: str) -> dict[str, Any] | str:
        host = inventory.hosts[fqdn]
        try:
            command = probe_command(host.pyinfra_name, reach.get(host.pyinfra_name, {}))
            commands[fqdn] += 1
            return run_probe(command, status.probe_request(inventory, host), timeout=timeout * 6)
        except StatusError as exc:
            return str(exc)

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(one, fqdn): fqdn for fqdn in todo}
        observed = {
            pool.submit(observe, p, servers, resolver, live=live, timeout=timeout): p.owner
            for p in pubs
        }
        for future, fqdn in futures.items():
            probes[fqdn] = future.result()
        found = {owner: future.result() for future, owner in observed.items()}
    return Gathered(probes, found, controller_crls(inventory), commands)


# -- the commands -------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status",
        help="every certificate, delivery, CRL and DANE publication of the site, at a glance",
        description="Exit status (monitoring-plugin convention): 0 OK, 1 WARNING, 2 CRITICAL, "
        "3 UNKNOWN (a host could not be read, or a check could not be made).",
    )
    parser.add_argument("--limit", help="hosts: FQDNs, pyinfra names or groups, comma-separated")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (schema 1)")
    parser.add_argument("--html", metavar="FILE", help="also write one self-contained HTML page")
    parser.add_argument(
        "--prometheus", metavar="FILE", help="also write node_exporter's textfile (atomically)"
    )
    parser.add_argument("--warn-days", type=int, default=21, help="warning below (default 21)")
    parser.add_argument("--crit-days", type=int, default=7, help="critical below (default 7)")
    parser.add_argument(
        "--resolver",
        help="a validating resolver for the AD bit and the live DANE checks "
        "(default: /etc/resolv.conf's first)",
    )
    parser.add_argument("--no-dns", action="store_true", help="skip every DNS and DANE check")
    parser.add_argument("--no-live", action="store_true", help="skip the live DANE handshakes")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per check (10)")
    parser.add_argument("--workers", type=int, default=16, help="hosts read at once (16)")
    parser.set_defaults(handler=status_command)

    sched = subparsers.add_parser(
        "schedule",
        help="the controller's systemd timer + service (or a cron line) for the site's runs",
    )
    sched.add_argument("--cron", action="store_true", help="print a cron line instead")
    sched.add_argument(
        "--on-calendar",
        default="*-*-* 00/6:17:00",
        help="systemd OnCalendar (default every 6 hours: CRLs last 7 days, certificates are "
        "renewed with a third of their life left)",
    )
    sched.add_argument(
        "--deploy", default="deploys/site.py", help="the deploy to run (deploys/site.py)"
    )
    sched.add_argument(
        "--prometheus",
        default="/var/lib/prometheus/node-exporter/pkinfra.prom",
        help="textfile for node_exporter",
    )
    sched.add_argument("--user", help="run as this user (default: the unit's, root)")
    sched.add_argument("--write", metavar="DIR", help="write the units into DIR instead")
    sched.set_defaults(handler=schedule_command)


def _resolver(args: argparse.Namespace) -> str | None:
    if args.resolver:
        return str(args.resolver)
    try:
        return dane.default_resolver()
    except dane.DaneError:
        return None


def status_command(args: argparse.Namespace) -> int:
    from pkinfra.cli import CLIError

    try:
        thresholds = status.Thresholds(args.warn_days, args.crit_days)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    inventory, reach = load_site(args.inventory)
    hosts = select(inventory, args.limit)
    gathered = gather(
        inventory,
        reach,
        hosts,
        resolver=None if args.no_dns else _resolver(args),
        dns_checks=not args.no_dns,
        live=not args.no_live,
        timeout=args.timeout,
        workers=args.workers,
    )
    report = status.evaluate(
        inventory,
        gathered.probes,
        gathered.crls,
        gathered.dns,
        thresholds=thresholds,
        hosts=hosts,
    )
    if args.html:
        write_atomic(Path(args.html), status.to_html(report).encode())
    if args.prometheus:
        write_atomic(Path(args.prometheus), status.to_prometheus(report).encode())
    if args.json:
        print(json.dumps(status.to_json(report), indent=2, sort_keys=False))
    else:
        sys.stdout.write(status.to_text(report, colour=sys.stdout.isatty()))
    return report.exit_code


# -- schedule -----------------------------------------------------------------------------------


def render_schedule(
    *,
    workdir: Path,
    python_bin: Path,
    inventory: str,
    deploy: str,
    prometheus: str,
    on_calendar: str,
    user: str | None = None,
) -> dict[str, str]:
    """``pkinfra-site.service`` and ``pkinfra-site.timer``: the deploy, then the status file.

    The status runs even when the deploy fails (``ExecStopPost``), so the alert says why."""
    pyinfra = python_bin.parent / "pyinfra"
    pkinfra = python_bin.parent / "pkinfra"
    q = shlex.quote
    service = "\n".join(
        [
            "[Unit]",
            "Description=pkinfra: run the site deploy (renewals, CRLs, rollovers)",
            "Wants=network-online.target",
            "After=network-online.target",
            "",
            "[Service]",
            "Type=oneshot",
            f"WorkingDirectory={workdir}",
            *([f"User={user}"] if user else []),
            f"ExecStart={q(str(pyinfra))} -y {q(inventory)} {q(deploy)}",
            f"ExecStopPost=-{q(str(pkinfra))} -i {q(inventory)} status --no-live "
            f"--prometheus {q(prometheus)}",
            "TimeoutStartSec=2h",
            "",
        ]
    )
    timer = "\n".join(
        [
            "[Unit]",
            "Description=pkinfra: the site deploy, on schedule",
            "",
            "[Timer]",
            f"OnCalendar={on_calendar}",
            "RandomizedDelaySec=10min",
            "Persistent=true",
            "Unit=pkinfra-site.service",
            "",
            "[Install]",
            "WantedBy=timers.target",
            "",
        ]
    )
    return {"pkinfra-site.service": service, "pkinfra-site.timer": timer}


def render_cron(
    *, workdir: Path, python_bin: Path, inventory: str, deploy: str, prometheus: str
) -> str:
    q = shlex.quote
    pyinfra, pkinfra = python_bin.parent / "pyinfra", python_bin.parent / "pkinfra"
    return (
        f"17 */6 * * * cd {q(str(workdir))} && {{ {q(str(pyinfra))} -y {q(inventory)} "
        f"{q(deploy)}; {q(str(pkinfra))} -i {q(inventory)} status --no-live --prometheus "
        f"{q(prometheus)} >/dev/null; }}\n"
    )


def schedule_command(args: argparse.Namespace) -> int:
    inventory_path = Path(args.inventory).resolve()
    common = {
        "workdir": inventory_path.parent,
        "python_bin": Path(sys.executable),
        "inventory": inventory_path.name,
        "deploy": args.deploy,
        "prometheus": args.prometheus,
    }
    if args.cron:
        sys.stdout.write(render_cron(**common))
        return 0
    units = render_schedule(**common, on_calendar=args.on_calendar, user=args.user)
    if args.write:
        for name, text in units.items():
            write_atomic(Path(args.write) / name, text.encode())
            print(f"wrote {Path(args.write) / name}")
        print("then: systemctl daemon-reload && systemctl enable --now pkinfra-site.timer")
        return 0
    for name, text in units.items():
        print(f"# {name}\n{text}")
    return 0
