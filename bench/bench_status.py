"""Benchmark of ``pkinfra status``: wall time and remote commands per host.

Prints the figures and writes them to bench/results/status.json. Run from the repository root
with the lab up and deployed (``make demo``):

    .venv/bin/python bench/bench_status.py [--repeat 3]
    (or: .venv/bin/python -m bench status)

Remote commands are counted through ``ssh`` and ``docker`` wrappers first in PATH that log every
call (the status probe reaches managed hosts over SSH, lab infrastructure with ``docker exec``).
Three variants, best of --repeat each: hosts only (``--no-dns``), with DNS (every authoritative
server and the validating resolver), and the full check with live DANE handshakes.
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
PKINFRA = Path(sys.executable).parent / "pkinfra"
RESULTS = ROOT / "bench" / "results" / "status.json"
RESOLVER = "172.29.53.53"
VARIANTS = {
    "hosts_only": ["--no-dns"],
    "with_dns": ["--no-live"],
    "full": [],
}


def wrappers(directory: Path, log: Path) -> dict[str, str]:
    """``ssh`` and ``docker`` that log ``<tool> <args>`` and run the real one."""
    bin_dir = directory / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in ("ssh", "docker"):
        real = shutil.which(tool)
        if real is None:
            continue
        wrapper = bin_dir / tool
        wrapper.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\nexec {real} "$@"\n')
        wrapper.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def host_of(line: str) -> str:
    """The host a logged call went to: the container, or the SSH destination."""
    words = line.split()
    if words[0] == "docker":
        return words[3] if len(words) > 3 and words[1] == "exec" else "docker"
    if "--" in words:
        return words[words.index("--") - 1]
    return words[-1]


def run(extra: Sequence[str], env: dict[str, str], log: Path) -> tuple[float, Counter[str], int]:
    log.write_text("")
    start = time.monotonic()
    done = subprocess.run(
        [str(PKINFRA), "-i", "inventory.py", "status", "--json", "--resolver", RESOLVER, *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.monotonic() - start
    try:
        json.loads(done.stdout)
    except ValueError:
        tail = done.stdout[-2000:] + done.stderr[-2000:]
        raise RuntimeError(f"pkinfra status failed:\n{tail}") from None
    calls = Counter(host_of(line) for line in log.read_text().splitlines() if line.strip())
    return seconds, calls, done.returncode


def main(argv: Sequence[str] = ()) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant (best is kept)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="pkinfra-bench-") as name:
        tmp = Path(name)
        log = tmp / "calls.log"
        env = wrappers(tmp, log)
        for variant, extra in VARIANTS.items():
            times = []
            calls: Counter[str] = Counter()
            code = 0
            for _ in range(max(1, args.repeat)):
                seconds, calls, code = run(extra, env, log)
                times.append(round(seconds, 3))
            results[variant] = {
                "seconds_best": min(times),
                "seconds_all": times,
                "remote_commands_per_host": dict(sorted(calls.items())),
                "exit_code": code,
            }
            print(f"{variant}: {json.dumps(results[variant])}", flush=True)
    per_host = [set(r["remote_commands_per_host"].values()) for r in results.values()]
    results["targets"] = {"one_remote_command_per_host": all(v <= {1} for v in per_host)}
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
