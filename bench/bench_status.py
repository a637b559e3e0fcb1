"""Benchmark of ``pkinfra status``: wall time and remote commands per host.

Prints the figures and writes them to bench/results/status.json. Run from the repository root:

    .venv/bin/python bench/bench_status.py [--repeat 3] [--bare 50] [--no-lab]
    (or: .venv/bin/python -m bench status)

Remote commands are counted through ``ssh`` and ``docker`` wrappers first in PATH that log every
call (the status probe reaches managed hosts over SSH, lab infrastructure and bare hosts with
``docker exec``). Best of --repeat each.

- lab (skipped with --no-lab; needs the lab up and deployed, ``make demo``), three variants:
  hosts only (``--no-dns``), with DNS (every authoritative server and the validating
  resolver), and the full check with live DANE handshakes;
- bare hosts (bench/bare_hosts.py, skipped with --bare 0): N containers of the lab image with 3
  CA-issued certificates each, issued by a first ``deploys/pki.py`` run of a bench-only
  inventory, then ``pkinfra status`` over all of them (the full command: with no TLSA
  publication in that inventory it asks no DNS server). Targets: 1 remote command per host,
  50 hosts in under 10 s. The containers are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import bare_hosts

ROOT = bare_hosts.ROOT
PKINFRA = bare_hosts.BIN / "pkinfra"
RESULTS = ROOT / "bench" / "results" / "status.json"
RESOLVER = "172.29.53.53"
VARIANTS = {
    "hosts_only": ["--no-dns"],
    "with_dns": ["--no-live"],
    "full": [],
}


def run(
    inventory: Path, extra: Sequence[str], env: dict[str, str], log: Path
) -> tuple[float, Counter[str], dict[str, Any], int]:
    """One ``pkinfra status --json``: wall time, remote commands per host, report, exit code."""
    command = [str(PKINFRA), "-i", str(inventory), "status", "--json", *extra]
    seconds, done = bare_hosts.timed(command, env, log, timeout=600)
    try:
        report: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        tail = done.stdout[-2000:] + done.stderr[-2000:]
        raise RuntimeError(f"pkinfra status failed:\n{tail}") from None
    return seconds, bare_hosts.remote_commands(log), report, done.returncode


def best_of(
    repeat: int, inventory: Path, extra: Sequence[str], env: dict[str, str], log: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    times = []
    calls: Counter[str] = Counter()
    report: dict[str, Any] = {}
    code = 0
    for _ in range(max(1, repeat)):
        seconds, calls, report, code = run(inventory, extra, env, log)
        times.append(round(seconds, 3))
    figures = {
        "seconds_best": min(times),
        "seconds_all": times,
        "remote_commands_per_host": dict(sorted(calls.items())),
        "exit_code": code,
    }
    return figures, report


def lab_figures(repeat: int, env: dict[str, str], log: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for variant, extra in VARIANTS.items():
        figures, _ = best_of(
            repeat, ROOT / "inventory.py", ["--resolver", RESOLVER, *extra], env, log
        )
        results[variant] = figures
        print(f"lab {variant}: {json.dumps(figures)}", flush=True)
    return results


def bare_figures(count: int, repeat: int, tmp: Path, env: dict[str, str], log: Path) -> Any:
    inventory = bare_hosts.write_site(tmp / f"site{count}", count)
    with bare_hosts.containers(count):
        first, _, _ = bare_hosts.deploy(inventory, env, log)
        figures, report = best_of(repeat, inventory, [], env, log)
    per_host = figures.pop("remote_commands_per_host")
    certificates = [c for h in report.get("hosts", []) for c in h.get("certificates", [])]
    return {
        "hosts": count,
        "report_state": report.get("state"),
        "certificates": len(certificates),
        "certificates_ok": sum(1 for c in certificates if c.get("state") == "ok"),
        "deploy_first_run_seconds": round(first, 2),
        **figures,
        "remote_commands_per_host_min_max": [
            min(per_host.values(), default=0),
            max(per_host.values(), default=0),
        ],
        "hosts_probed": len(per_host),
    }


def main(argv: Sequence[str] = ()) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant (best is kept)")
    parser.add_argument("--bare", type=int, default=50, help="bare hosts (0: none)")
    parser.add_argument("--no-lab", action="store_true", help="bare hosts only (lab untouched)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"command": " ".join(["bench/bench_status.py", *argv])}
    with tempfile.TemporaryDirectory(prefix="pkinfra-bench-") as name:
        tmp = Path(name)
        log = tmp / "calls.log"
        env = bare_hosts.call_logging_env(tmp, log, ("ssh", "docker"))
        if not args.no_lab:
            results["lab"] = lab_figures(args.repeat, env, log)
        if args.bare:
            results["bare"] = bare_figures(args.bare, args.repeat, tmp, env, log)
            print(f"{args.bare} bare hosts: {json.dumps(results['bare'])}", flush=True)
    lab_counts = [
        set(v["remote_commands_per_host"].values()) for v in results.get("lab", {}).values()
    ]
    bare = results.get("bare")
    results["targets"] = {
        "one_remote_command_per_host": all(c <= {1} for c in lab_counts)
        and (bare is None or bare["remote_commands_per_host_min_max"] == [1, 1]),
        "bare_50_hosts_under_10_s": bare is not None
        and bare["hosts"] >= 50
        and bare["seconds_best"] < 10,
    }
    bare_hosts.save_results(results, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
