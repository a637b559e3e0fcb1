"""Benchmark of the RFC 2136 client: update sent -> visible on every authoritative server.

Prints the figures and writes them to bench/results/dnsupdate.json. Run from the repository
root:

    .venv/bin/python bench/bench_dnsupdate.py [--runs 20]
    .venv/bin/python bench/bench_dnsupdate.py --key-file K --name N [--resolver ADDR ...]

Without `--key-file` it starts the test suite's throw-away BIND pair (tests/unit/named_fixture.py,
primary + secondary on 127.0.0.1) twice: once with the rate limits the lab should use
(`notify-rate` / `serial-query-rate` 1000) and once with BIND's defaults, which release notifies
and refresh queries in 500 ms ticks. With `--key-file` and `--name` it measures a real
deployment (the lab's shadow zone, say) through the given resolvers.

Each run: one `add` of a fresh TXT value, then `wait_visible` on every NS address (RD=0); the
time from sending the update to the last server serving the value is the figure. The value is
deleted (and its removal awaited) between runs, untimed, so every run starts from the same state.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dns.version

from pkinfra.dnsupdate import RFC2136Client, TSIGKey
from tests.unit.named_fixture import (
    MX1_CHALLENGE,
    QUERY_RATE,
    named_binary,
    running_lab,
)

RESULTS = Path(__file__).resolve().parent / "results" / "dnsupdate.json"
TARGET_MEDIAN_S = 1.0


def measure(client: RFC2136Client, name: str, runs: int) -> dict[str, Any]:
    """`runs` add -> visible-everywhere times, in seconds, with the per-server split."""
    client.follow_cnames(name)  # discovery is cached: the runs time the update path only
    client.zone_of(name)
    totals: list[float] = []
    updates: list[float] = []
    per_server: dict[str, list[float]] = {}
    for _ in range(runs):
        value = uuid.uuid4().hex
        started = time.monotonic()
        client.add(name, "TXT", value, 5)
        updates.append(time.monotonic() - started)
        timings = client.wait_visible(name, "TXT", value, timeout=10)
        totals.append(time.monotonic() - started)
        for server, seconds in timings.items():
            per_server.setdefault(server, []).append(seconds)
        client.delete(name, "TXT", value)
        client.wait_visible(name, "TXT", value, present=False, timeout=10)
    return {
        "runs": runs,
        "median_s": statistics.median(totals),
        "min_s": min(totals),
        "max_s": max(totals),
        "p90_s": sorted(totals)[max(0, round(0.9 * len(totals)) - 1)],
        "update_rtt_median_s": statistics.median(updates),
        "per_server_median_s": {s: statistics.median(v) for s, v in per_server.items()},
        "servers": len(per_server),
    }


def local(runs: int, query_rate: int | None) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory() as directory,
        running_lab(Path(directory), query_rate) as lab,
    ):
        return measure(lab.client("mx1-key"), MX1_CHALLENGE, runs)


def named_version() -> str:
    binary = named_binary()
    if binary is None:
        return "not installed"
    result = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return result.stdout.strip()


def show(label: str, figures: dict[str, Any]) -> None:
    servers = ", ".join(f"{s} {t * 1000:.1f}" for s, t in figures["per_server_median_s"].items())
    print(
        f"{label}: median {figures['median_s'] * 1000:.1f} ms, p90 {figures['p90_s'] * 1000:.1f},"
        f" min {figures['min_s'] * 1000:.1f}, max {figures['max_s'] * 1000:.1f}"
        f" over {figures['runs']} runs on {figures['servers']} servers"
        f" (update RTT {figures['update_rtt_median_s'] * 1000:.1f} ms; per server: {servers} ms)"
    )


def main(argv: Sequence[str] = ()) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--key-file", type=Path, help="TSIG key of a real deployment")
    parser.add_argument("--name", help="a name that key may change TXT at (CNAMEs followed)")
    parser.add_argument("--resolver", action="append", help="address[#port]; default resolv.conf")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(list(argv))

    results: dict[str, Any] = {}
    if args.key_file:
        if not args.name:
            parser.error("--key-file needs --name")
        client = RFC2136Client(TSIGKey.from_file(args.key_file), resolvers=args.resolver)
        final, _ = client.follow_cnames(args.name)
        results["deployment"] = measure(client, final.to_text(), args.runs)
        show(f"deployment ({final})", results["deployment"])
        median = results["deployment"]["median_s"]
    else:
        results["local_tuned"] = local(args.runs, QUERY_RATE)
        show(f"local BIND pair, rates {QUERY_RATE}/s", results["local_tuned"])
        results["local_bind_defaults"] = local(args.runs, None)
        show("local BIND pair, BIND default rates", results["local_bind_defaults"])
        median = results["local_tuned"]["median_s"]
    results["targets"] = {"median_s_max": TARGET_MEDIAN_S, "met": median < TARGET_MEDIAN_S}
    results["environment"] = {
        "python": platform.python_version(),
        "dnspython": dns.version.version,
        "named": named_version(),
        "machine": platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"target median < {TARGET_MEDIAN_S:g} s: {'met' if results['targets']['met'] else 'MISSED'}"
    )
    print(f"written {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
