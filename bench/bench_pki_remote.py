"""Benchmark of deploys/pki.py: remote commands per host and wall time of first and no-change runs.

Prints the figures and writes them to bench/results/pki_remote.json. Run from the repository
root with the lab image built:

    .venv/bin/python bench/bench_pki_remote.py [--hosts 10 50] [--no-lab]
    (or: .venv/bin/python -m bench pki_remote)

Remote commands are counted as `docker exec` calls, through a `docker` wrapper first in PATH
that logs every call (pyinfra's @docker connector runs every remote command that way; uploads
are `docker cp` calls, counted apart).

- lab (skipped with --no-lab: it deploys to the lab's containers): the lab inventory (db1 holds
  2 CA-issued certificates; mon1 is reached over SSH and is not counted), a converging run,
  then a measured no-change run;
- bare hosts (bench/bare_hosts.py): N containers of the lab image, a bench-only inventory in a
  temporary directory with its own CA store, 3 certificates per host; a first run issues them
  all, then no-change runs (best of --repeat, all kept). The containers are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import bare_hosts

ROOT = bare_hosts.ROOT
RESULTS = ROOT / "bench" / "results" / "pki_remote.json"


def container_names() -> dict[str, str]:
    out = subprocess.run(
        ["docker", "ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Names}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def lab_figures(env: dict[str, str], log: Path) -> dict[str, Any]:
    inventory = ROOT / "inventory.py"
    bare_hosts.deploy(inventory, env, log)  # converge first
    seconds, calls, out = bare_hosts.deploy(inventory, env, log)
    names = container_names()
    per_host = {names.get(cid, cid): n for cid, n in sorted(calls.items())}
    return {
        "no_change_seconds": round(seconds, 2),
        "docker_exec_per_container": per_host,
        "results_row": bare_hosts.changed(out),
    }


def _min_max(calls: dict[str, int], hosts: int) -> list[int]:
    per_host = sorted(calls.values()) or [0]
    if len(calls) < hosts:
        per_host = [0, *per_host]
    return [per_host[0], per_host[-1]]


def bare_figures(count: int, tmp: Path, env: dict[str, str], log: Path, repeat: int) -> Any:
    inventory = bare_hosts.write_site(tmp / f"site{count}", count)
    first, first_calls, out = bare_hosts.deploy(inventory, env, log)
    first_docker = bare_hosts.docker_calls(log)
    first_row = bare_hosts.changed(out)
    times = []
    calls: dict[str, int] = {}
    for _ in range(repeat):
        seconds, calls, out = bare_hosts.deploy(inventory, env, log)
        times.append(round(seconds, 2))
    return {
        "hosts": count,
        "certificates": bare_hosts.CERTIFICATES * count,
        "first_run_seconds": round(first, 2),
        "first_run_docker_exec_per_host_min_max": _min_max(first_calls, count),
        "first_run_docker_calls": dict(sorted(first_docker.items())),
        "first_run_results_row": first_row,
        "no_change_seconds": min(times),
        "no_change_runs_seconds": times,
        "docker_exec_per_host_min_max": _min_max(calls, count),
        "results_row": bare_hosts.changed(out),
    }


def main(argv: Sequence[str] = ()) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="*", default=[10, 50])
    parser.add_argument("--repeat", type=int, default=3, help="no-change runs (best is kept)")
    parser.add_argument("--no-lab", action="store_true", help="bare hosts only (lab untouched)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"command": " ".join(["bench/bench_pki_remote.py", *argv])}
    with tempfile.TemporaryDirectory(prefix="pkinfra-bench-") as name:
        tmp = Path(name)
        log = tmp / "docker.log"
        env = bare_hosts.call_logging_env(tmp, log)
        if not args.no_lab:
            results["lab"] = lab_figures(env, log)
            print(f"lab no-change run: {json.dumps(results['lab'])}", flush=True)
        results["bare"] = []
        with bare_hosts.containers(max(args.hosts, default=0)):
            for count in sorted(args.hosts):
                figures = bare_figures(count, tmp, env, log, args.repeat)
                results["bare"].append(figures)
                print(f"{count} bare hosts x 3 certificates: {json.dumps(figures)}", flush=True)
    bare = {b["hosts"]: b for b in results["bare"]}
    lab = results.get("lab", {"docker_exec_per_container": {"-": 1}})
    lab_calls = set(lab["docker_exec_per_container"].values())
    results["targets"] = {
        "one_docker_exec_per_host_in_a_no_change_run": lab_calls == {1}
        and all(b["docker_exec_per_host_min_max"] == [1, 1] for b in bare.values()),
        "no_change_10_hosts_under_5_s": 10 in bare and bare[10]["no_change_seconds"] < 5,
        "no_change_50_hosts_under_8_s": 50 in bare and bare[50]["no_change_seconds"] < 8,
        "first_run_10_hosts_under_10_s": 10 in bare and bare[10]["first_run_seconds"] < 10,
        "first_run_50_hosts_under_30_s": 50 in bare and bare[50]["first_run_seconds"] < 30,
    }
    bare_hosts.save_results(results, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
