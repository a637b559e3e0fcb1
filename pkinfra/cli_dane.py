"""``pkinfra dane check HOST:PORT``: what a DANE client would decide about a service."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pkinfra import dane
from pkinfra.cli import CLIError


def register(sub: Any) -> None:
    group = sub.add_parser("dane", help="DANE checks")
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    chk = actions.add_parser(
        "check",
        help="check a service's TLSA records against the certificate it serves",
        description="Exit status: 0 valid, 1 no usable record matches, 2 no DANE "
        "(unsigned zone, no TLSA RRset, no usable record), 3 failure (connection, "
        "SERVFAIL or bogus DNSSEC, timeout).",
    )
    chk.add_argument("target", metavar="HOST:PORT")
    chk.add_argument("--starttls", choices=dane.STARTTLS)
    chk.add_argument("--name", help="the name the TLSA record is published under (default HOST)")
    chk.add_argument(
        "--resolver",
        help="a validating resolver, asked for the TLSA records and HOST's address "
        "(default: /etc/resolv.conf, and the system's lookup for the address)",
    )
    chk.add_argument("--proto", default="tcp", choices=("tcp", "udp", "sctp"))
    chk.add_argument(
        "--warn-days",
        type=int,
        default=14,
        help="warn when the certificate expires within this many days (14)",
    )
    chk.add_argument("--timeout", type=float, default=10.0, help="seconds per step (10)")
    chk.add_argument("--json", action="store_true", help="print the report as JSON")
    chk.set_defaults(handler=run_check)


def parse_target(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CLIError(f"target '{target}' is not HOST:PORT")
    return host.strip("[]"), int(port)


def run_check(args: argparse.Namespace) -> int:
    host, port = parse_target(args.target)
    report = dane.check(
        host,
        port,
        name=args.name,
        starttls=args.starttls,
        resolver=args.resolver,
        proto=args.proto,
        warn_days=args.warn_days,
        timeout=args.timeout,
    )
    print(json.dumps(report.to_json(), indent=2) if args.json else report.to_text())
    return int(report.verdict)
