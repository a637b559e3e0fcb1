"""Benchmark of deploys/pki.py: remote commands per host and wall time of a no-change run.

Prints the figures and writes them to bench/results/pki_remote.json. Run from the repository
root with the lab up:

    .venv/bin/python bench/bench_pki_remote.py [--hosts 10 50]
    (or: .venv/bin/python -m bench pki_remote)

Remote commands are counted as `docker exec` calls, through a `docker` wrapper first in PATH
that logs every call (pyinfra's @docker connector runs every remote command that way).

- lab: the lab inventory (db1 holds 2 CA-issued certificates; mon1 is reached over SSH and is
  not counted), a converging run, then a measured no-change run;
- bare hosts: N extra containers of the lab image (no network: `docker exec` needs none), a
  bench-only inventory in a temporary directory with its own CA store, 3 certificates per host;
  a first run issues them all, then no-change runs (best of --repeat, all kept). The containers
  are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYINFRA = Path(sys.executable).parent / "pyinfra"
RESULTS = ROOT / "bench" / "results" / "pki_remote.json"
BENCH_PREFIX = "pkinfra-bench-"

GROUP_DATA = """
pki_dir = "pki"
zones = [{"name": "bench.test"}]
shadow_zone = {"name": "shadow.bench.test"}
dns = {"primary": "h0.bench.test"}
cas = {
    "bench-root": {"key_type": "ec-p256", "path_length": 1, "passphrase": {"file": "pass"}},
    "bench-sub": {
        "parent": "bench-root",
        "key_type": "ec-p256",
        "validity_days": 1825,
        "path_length": 0,
        "permitted": ["bench.test"],
        "passphrase": {"file": "pass"},
    },
}
"""

INVENTORY = """
from pkinfra.model import load_or_exit

hosts = [
    (
        f"@docker/{PREFIX}{i}",
        {
            "fqdn": f"h{i}.bench.test",
            "certificates": [
                {"name": "web", "names": [f"h{i}.bench.test"], "issuer": "bench-sub"},
                {"name": "api", "names": [f"api.h{i}.bench.test"], "issuer": "bench-sub"},
                {"name": "peer", "names": [f"h{i}.bench.test"], "issuer": "bench-root",
                 "usages": ["client"]},
            ],
        },
    )
    for i in range(COUNT)
]
_inventory = load_or_exit(__file__, {"bench": hosts})
"""


def docker_wrapper(directory: Path, log: Path) -> dict[str, str]:
    real = shutil.which("docker")
    assert real is not None, "docker is not installed"
    wrapper = directory / "bin" / "docker"
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    return {**os.environ, "PATH": f"{wrapper.parent}:{os.environ['PATH']}"}


def run(inventory: Path, env: dict[str, str], log: Path) -> tuple[float, Counter[str], str]:
    """One `pyinfra -y` run of deploys/pki.py: wall time, docker exec calls per container."""
    log.write_text("")
    start = time.monotonic()
    done = subprocess.run(
        [str(PYINFRA), "-y", str(inventory), "deploys/pki.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    seconds = time.monotonic() - start
    out = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"pyinfra failed:\n{out[-3000:]}")
    calls: Counter[str] = Counter()
    for line in log.read_text().splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "exec":
            calls[words[2]] += 1
    return seconds, calls, out


def container_names() -> dict[str, str]:
    out = subprocess.run(
        ["docker", "ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Names}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def changed(out: str) -> str:
    for line in out.splitlines():
        if "Grand total" in line:
            return " ".join(line.split()[2:])
    return "?"


def lab_figures(env: dict[str, str], log: Path) -> dict[str, Any]:
    inventory = ROOT / "inventory.py"
    run(inventory, env, log)  # converge first
    seconds, calls, out = run(inventory, env, log)
    names = container_names()
    per_host = {names.get(cid, cid): n for cid, n in sorted(calls.items())}
    return {
        "no_change_seconds": round(seconds, 2),
        "docker_exec_per_container": per_host,
        "results_row": changed(out),
    }


def bare_figures(count: int, tmp: Path, env: dict[str, str], log: Path, repeat: int) -> Any:
    site = tmp / f"site{count}"
    (site / "group_data").mkdir(parents=True, exist_ok=True)
    (site / "group_data" / "all.py").write_text(GROUP_DATA)
    (site / "pass").write_text("bench-only passphrase\n")
    text = INVENTORY.replace("{PREFIX}", BENCH_PREFIX).replace("COUNT", str(count))
    (site / "inventory.py").write_text(text)
    shutil.copy(ROOT / "config.py", site / "config.py")
    first, _, _ = run(site / "inventory.py", env, log)
    times = []
    for _ in range(repeat):
        seconds, calls, out = run(site / "inventory.py", env, log)
        times.append(round(seconds, 2))
    per_host = sorted(calls.values())
    return {
        "hosts": count,
        "certificates": 3 * count,
        "first_run_seconds": round(first, 2),
        "no_change_seconds": min(times),
        "no_change_runs_seconds": times,
        "docker_exec_per_host_min_max": [per_host[0], per_host[-1]] if per_host else None,
        "results_row": changed(out),
    }


def lab_image() -> str:
    out = subprocess.run(
        ["docker", "inspect", "--format", "{{.Config.Image}}", "pkinfra-db1"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def main(argv: Sequence[str] = ()) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="*", default=[10, 50])
    parser.add_argument("--repeat", type=int, default=3, help="no-change runs (best is kept)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    image = lab_image()
    most = max(args.hosts, default=0)
    started: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pkinfra-bench-") as name:
        tmp = Path(name)
        log = tmp / "docker.log"
        env = docker_wrapper(tmp, log)
        results: dict[str, Any] = {"lab": lab_figures(env, log)}
        print(f"lab no-change run: {json.dumps(results['lab'])}", flush=True)
        try:
            for i in range(most):
                container = f"{BENCH_PREFIX}{i}"
                subprocess.run(["docker", "rm", "-f", container], capture_output=True)
                command = ["docker", "run", "-d", "--network", "none", "--name", container]
                subprocess.run(
                    [*command, image, "sleep", "infinity"],
                    capture_output=True,
                    check=True,
                )
                started.append(container)
            results["bare"] = []
            for count in sorted(args.hosts):
                figures = bare_figures(count, tmp, env, log, args.repeat)
                results["bare"].append(figures)
                print(f"{count} bare hosts x 3 certificates: {json.dumps(figures)}", flush=True)
        finally:
            for container in started:
                subprocess.run(["docker", "rm", "-f", container], capture_output=True)
    ten = next((b for b in results.get("bare", []) if b["hosts"] == 10), None)
    results["targets"] = {
        "one_docker_exec_per_host_in_a_no_change_run": all(
            b["docker_exec_per_host_min_max"] == [1, 1] for b in results.get("bare", [])
        )
        and set(results["lab"]["docker_exec_per_container"].values()) == {1},
        "no_change_10_hosts_under_5_s": ten is not None and ten["no_change_seconds"] < 5,
    }
    results["environment"] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
