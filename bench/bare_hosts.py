"""Bare hosts for the benchmarks that need many managed hosts (bench_pki_remote, bench_status).

N containers of the lab image with no network (``docker exec`` needs none), named
``pkinfra-bench-<i>``, reached by pyinfra's ``@docker`` connector; a bench-only site in a
temporary directory (its own inventory, group data and CA store), 3 CA-issued certificates per
host; remote commands counted through ``docker``/``ssh`` wrappers first in PATH that log every
call. The containers are always removed at the end. The lab's own containers are only read
(the image name of ``pkinfra-db1``), never touched.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BENCH_PREFIX = "pkinfra-bench-"
#: Certificates per host in the bench-only inventory.
CERTIFICATES = 3

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


def call_logging_env(directory: Path, log: Path, tools: tuple[str, ...] = ("docker",)) -> dict:
    """An environment whose PATH starts with wrappers of ``tools`` that log ``<tool> <args>``
    to ``log``, then run the real one. PYTHONPATH names this tree, so the venv's console
    scripts (``pkinfra``) import this checkout's code, not the one the venv was installed from."""
    bin_dir = directory / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in tools:
        real = shutil.which(tool)
        if real is None:
            continue
        wrapper = bin_dir / tool
        script = (
            "#!/bin/sh\n"
            "# one line per call: a remote command may span lines\n"
            f"printf '{tool} %s\\n' \"$(printf '%s' \"$*\" | tr '\\n' ' ')\" >> {log}\n"
            f'exec {real} "$@"\n'
        )
        wrapper.write_text(script)
        wrapper.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}


def host_of(line: str) -> str:
    """The host a logged call went to: the container of a ``docker exec``, the SSH
    destination, or ``docker`` for any other docker call."""
    words = line.split()
    if words[0] == "docker":
        return words[3] if len(words) > 3 and words[1] == "exec" else "docker"
    if "--" in words:
        return words[words.index("--") - 1]
    return words[-1]


def remote_commands(log: Path) -> Counter[str]:
    """Remote commands per host in ``log``: ``docker exec`` and ``ssh`` calls (``docker cp``,
    ``inspect`` and the like are not commands run on the host)."""
    calls: Counter[str] = Counter()
    for line in log.read_text().splitlines():
        if line.strip():
            host = host_of(line)
            if host != "docker":
                calls[host] += 1
    return calls


def docker_calls(log: Path) -> Counter[str]:
    """Every ``docker`` call in ``log`` by subcommand (``exec``, ``cp``, ``container``...)."""
    return Counter(
        words[1]
        for words in (line.split() for line in log.read_text().splitlines())
        if len(words) > 1 and words[0] == "docker"
    )


def lab_image() -> str:
    """The lab's image (read from ``pkinfra-db1``, which is not touched)."""
    out = subprocess.run(
        ["docker", "inspect", "--format", "{{.Config.Image}}", "pkinfra-db1"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


@contextmanager
def containers(count: int, image: str | None = None) -> Iterator[list[str]]:
    """``count`` bare containers (``pkinfra-bench-0``...), removed when the block ends."""
    image = image or lab_image()
    started: list[str] = []
    try:
        for i in range(count):
            name = f"{BENCH_PREFIX}{i}"
            subprocess.run(["docker", "rm", "-f", name], capture_output=True)
            run = ["docker", "run", "-d", "--network", "none", "--name", name]
            subprocess.run([*run, image, "sleep", "infinity"], capture_output=True, check=True)
            started.append(name)
        yield started
    finally:
        for name in started:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def write_site(directory: Path, count: int) -> Path:
    """A bench-only site of ``count`` hosts in ``directory``: its inventory file's path. Its CA
    store (``pki/``) is made by the first deploy."""
    (directory / "group_data").mkdir(parents=True, exist_ok=True)
    (directory / "group_data" / "all.py").write_text(GROUP_DATA)
    (directory / "pass").write_text("bench-only passphrase\n")
    (directory / "pass").chmod(0o600)
    text = INVENTORY.replace("{PREFIX}", BENCH_PREFIX).replace("COUNT", str(count))
    (directory / "inventory.py").write_text(text)
    shutil.copy(ROOT / "config.py", directory / "config.py")
    return directory / "inventory.py"


def timed(
    command: list[str], env: dict, log: Path, timeout: float = 900
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run ``command`` from the repository root with ``log`` emptied first: wall time, result."""
    log.write_text("")
    start = time.monotonic()
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    return time.monotonic() - start, done


def deploy(inventory: Path, env: dict, log: Path, *extra: str) -> tuple[float, Counter[str], str]:
    """One ``pyinfra -y`` run of deploys/pki.py: wall time, remote commands per host, output."""
    command = [str(BIN / "pyinfra"), "-y", *extra, str(inventory), "deploys/pki.py"]
    seconds, done = timed(command, env, log)
    out = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"pyinfra failed:\n{out[-3000:]}")
    return seconds, remote_commands(log), out


def changed(out: str) -> str:
    """The ``Grand total`` row of a pyinfra run's results."""
    for line in out.splitlines():
        if "Grand total" in line:
            return " ".join(line.split()[2:])
    return "?"


def save_results(results: dict[str, Any], out: Path) -> None:
    """``results`` with the machine they were measured on, written to ``out`` as JSON."""
    results["environment"] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")
