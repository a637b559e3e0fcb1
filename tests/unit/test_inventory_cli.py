"""`pyinfra inventory.py deploys/site.py` with a broken inventory: all problems, no host touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).parent / "pyinfra"

MISTAKES = [
    # (text in inventory.py, replacement, expected message)
    (
        '"issuer": "duckcorp"}',
        '"issuer": "duckcorp-bakup"}',
        "db1.example.test: certificates[0].issuer: unknown CA 'duckcorp-bakup' (known: acme, "
        "duckcorp, duckcorp-backup, duckcorp-monitoring)",
    ),
    (
        '"mode": "0600",',
        '"mode": "0644",',
        "db1.example.test: services[0].files[1].mode: key file mode 0644 is readable by others "
        "(use 0600 or 0640)",
    ),
    (
        '"webroot": "/var/www/acme",',
        "",
        "web1.example.test: certificates[0].webroot: http-01 needs a webroot (the directory nginx "
        "serves)",
    ),
    (
        '"tlsa": [{"port": 25, "certificate": "mail"}]',
        '"tlsa": [{"port": 25, "certificate": "mial"}]',
        "mx1.example.test: tlsa[0].certificate: host has no certificate 'mial' (known: mail)",
    ),
    (
        '"names": ["mon1.monitoring.example.test"]',
        '"names": ["mon1.example.test"]',
        "mon1.example.test: certificates[0].names[0]: 'mon1.example.test' is outside the permitted "
        "subtrees of CA 'duckcorp-monitoring' (monitoring.example.test)",
    ),
]


def test_five_mistakes_are_all_reported_and_no_host_is_contacted(tmp_path: Path) -> None:
    for name in ("inventory.py", "config.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    for name in ("group_data", "deploys", "operations"):
        shutil.copytree(ROOT / name, tmp_path / name)
    inventory = (tmp_path / "inventory.py").read_text()
    for old, new, _ in MISTAKES:
        assert inventory.count(old) == 1, old
        inventory = inventory.replace(old, new)
    (tmp_path / "inventory.py").write_text(inventory)

    # Every docker (and ssh) call would land in calls.log: the run must make none.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    for tool in ("docker", "ssh"):
        wrapper = bin_dir / tool
        wrapper.write_text(f'#!/bin/sh\necho {tool} "$@" >> {log}\nexit 1\n')
        wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}

    run = subprocess.run(
        [str(PYINFRA), "-y", "inventory.py", "deploys/site.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "the inventory has 5 problems; no host was contacted" in output
    for _, _, message in MISTAKES:
        assert output.count(message) == 1, f"{message!r} not printed exactly once:\n{output}"
    assert not log.exists(), log.read_text()
