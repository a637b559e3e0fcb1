"""The twin lab's plumbing: the module split, the commands it runs, the copy of the work tree."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lab import twin
from tests.lab import shards


def test_every_lab_module_runs_in_exactly_one_lab() -> None:
    main, other = shards.shard("main"), shards.shard("twin")
    assert not set(main) & set(other)
    assert sorted(main + other) == [f"tests/lab/{m}" for m in shards.modules()]
    # A name in TWIN that is no module would leave nothing in the twin for it to run.
    assert {f"tests/lab/{m}" for m in shards.TWIN} == set(other)
    # The down/up round trip must come first in its lab: the main one.
    assert "tests/lab/test_lab.py" in main
    with pytest.raises(ValueError, match="main or twin"):
        shards.shard("third")


def test_the_split_prints_for_the_test_script() -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        ["python3", "-m", "tests.lab.shards", "twin"], cwd=root, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == shards.shard("twin")


def test_twin_commands_run_in_its_namespace_on_its_engine() -> None:
    argv = twin.command(["pytest", "-q"])
    assert argv == [
        "nsenter",
        "--net=/run/netns/pkinfra-twin",
        "env",
        "DOCKER_HOST=unix:///run/pkinfra-twin/docker.sock",
        "pytest",
        "-q",
    ]


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_the_tree_copy_follows_the_work_tree_and_keeps_its_own_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, tree = tmp_path / "repo", tmp_path / "repo" / "build" / "twin"
    (repo / "pkg").mkdir(parents=True)
    (repo / ".lab").mkdir()
    (repo / ".lab" / "ca-passphrase").write_text("not a real one\n")
    (repo / ".gitignore").write_text("build/\n.lab/\n.venv/\n/pki/\nscratch.txt\n")
    (repo / "pkg" / "tracked.py").write_text("one\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    (repo / "pkg" / "new.py").write_text("not committed yet\n")  # untracked, not ignored
    (repo / "scratch.txt").write_text("ignored\n")
    monkeypatch.setattr(twin, "REPO_ROOT", repo)
    monkeypatch.setattr(twin, "TREE", tree)

    assert twin.sync_tree() == tree
    assert (tree / "pkg" / "tracked.py").read_text() == "one\n"
    assert (tree / "pkg" / "new.py").read_text() == "not committed yet\n"
    assert not (tree / "scratch.txt").exists()
    assert (tree / ".venv").resolve() == (repo / ".venv").resolve()
    assert (tree / ".lab" / "ca-passphrase").read_text() == "not a real one\n"

    # The twin's own state stays; a file gone from the work tree goes from the copy.
    (tree / "pki").mkdir()
    (tree / "pki" / "ca.pem").write_text("the twin's CA\n")
    (tree / ".lab" / "known_hosts").write_text("twin hosts\n")
    (repo / "pkg" / "new.py").unlink()
    (repo / "pkg" / "tracked.py").write_text("two\n")
    twin.sync_tree()
    assert not (tree / "pkg" / "new.py").exists()
    assert (tree / "pkg" / "tracked.py").read_text() == "two\n"
    assert (tree / "pki" / "ca.pem").read_text() == "the twin's CA\n"
    assert (tree / ".lab" / "known_hosts").read_text() == "twin hosts\n"
