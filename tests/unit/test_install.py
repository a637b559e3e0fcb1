"""The host agents' files come from the package and its imports, and run with nothing else."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from pkinfra import install
from tests.helpers import installed_agents
from tests.operations.harness import run_operation


def test_the_installed_set_is_the_agent_package_and_what_it_imports() -> None:
    files = install.agent_files()
    agent = sorted(p.name for p in (Path(install.__file__).parent / "agent").glob("*.py"))
    assert {f"pkinfra/agent/{name}" for name in agent} <= set(files)
    # Imported by the agents from outside the package, and the packages' own __init__.
    assert {"pkinfra/__init__.py", "pkinfra/tlsa.py", "pkinfra/dnsupdate.py"} <= set(files)
    assert "delivery.py" in files  # the delivery agent's entry point
    # Controller-only modules never travel.
    assert not {"pkinfra/ca.py", "pkinfra/model.py", "pkinfra/install.py"} & set(files)


def test_agents_need_only_debians_dnspython_and_cryptography() -> None:
    assert install.third_party_imports() <= {"dns", "cryptography"}


def test_every_agent_module_imports_from_the_installed_files_alone(tmp_path: Path) -> None:
    installed_agents(tmp_path)
    modules = [
        path[: -len(".py")].replace("/", ".").removesuffix(".__init__")
        for path in install.agent_files()
        if path.startswith("pkinfra/")
    ]
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n" + "".join(
        f"import {m}; assert {m}.__file__.startswith({str(tmp_path)!r}), {m}.__file__\n"
        for m in modules
    )
    run = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr


def test_entry_point_runs_its_agent(tmp_path: Path) -> None:
    entry = installed_agents(tmp_path)
    run = subprocess.run(
        [sys.executable, "-I", str(entry), "--help"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0 and "pkinfra-deliver" in run.stdout


def test_agent_operation_writes_what_differs_and_drops_stale_modules() -> None:
    files = install.agent_files()
    have = {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}
    have["pkinfra/agent/delivery.py"] = "0" * 64
    have["pkinfra/agent/old.py"] = "1" * 64
    have["keep-me.py"] = "2" * 64  # not in pkinfra's package tree: not ours to remove
    facts = {"facts.AgentFiles": {"directory=/usr/local/lib/pkinfra": have}}
    commands, host = run_operation("system", "agent", {"facts": facts})
    path = "/usr/local/lib/pkinfra/pkinfra/agent/delivery.py"
    staged = "/usr/local/lib/pkinfra/pkinfra/agent/.delivery.py.pkinfra-new-RUN"
    text = files["pkinfra/agent/delivery.py"].decode()
    assert commands == [
        # The file travels inside the command (plain text, small enough), written beside its
        # place and renamed over it.
        f"mkdir -p /usr/local/lib/pkinfra/pkinfra/agent && cat > {staged} <<'PKINFRA-EOF' &&\n"
        f"{text}PKINFRA-EOF\n"
        f"chown root:root {staged} && chmod 0644 {staged} && mv -f {staged} {path}",
        "rm -f /usr/local/lib/pkinfra/pkinfra/agent/old.py",
    ]
    assert host.noop_description is None


def test_agent_operation_on_a_new_host_writes_every_file_in_a_few_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from operations.util import INLINE_MAX
    from pkinfra.agent import paths

    lib = tmp_path / "lib"
    monkeypatch.setattr(paths, "LIB_DIR", str(lib))
    files = install.agent_files()
    facts: dict[str, object] = {"facts.AgentFiles": {f"directory={lib}": {}}}
    commands, host = run_operation("system", "agent", {"facts": facts})
    assert host.announced == [f"host agents: {len(files)} file(s) to write, 0 to remove"]
    # A few commands for the whole set, not three per file (mkdir, upload, install).
    total = sum(len(data) for data in files.values())
    assert all(isinstance(c, str) for c in commands), commands
    assert len(commands) <= 2 * (total // INLINE_MAX + 1) < len(files)
    # Run as a host's sh would (chown to root needs root here: a stand-in that checks its
    # arguments); every file lands with its content and mode, and nothing staged is left.
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "chown").write_text('#!/bin/sh\n[ "$1" = root:root ] && [ -f "$2" ]\n')
    (shim / "chown").chmod(0o755)
    env = {"PATH": f"{shim}:/usr/bin:/bin"}
    for command in commands:
        run = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    for relative, data in files.items():
        written = lib / relative
        assert written.read_bytes() == data, relative
        mode = 0o644 if relative.startswith("pkinfra/") else 0o755
        assert written.stat().st_mode & 0o777 == mode, relative
    assert not [p for p in lib.rglob("*") if "pkinfra-new" in p.name]


def test_a_host_without_the_agents_directory_has_no_agent_files() -> None:
    # pyinfra hands an empty output to default(), not to process(): both must say "none".
    from operations.facts import AgentFiles

    assert AgentFiles.default() == {} and AgentFiles().process([]) == {}


def test_files_that_cannot_travel_inside_a_command_are_uploaded() -> None:
    from operations.system import carried_batches
    from operations.util import INLINE_MAX

    big = b"x" * (INLINE_MAX - 5) + b"\n"
    files = {"a.py": b"print(1)\n", "bin.py": b"\xff\n", "big.py": big, "b.py": b"# b\n"}
    batches, uploads = carried_batches(files)
    assert uploads == ["bin.py"]  # not plain text
    # In order, a new batch when the next file would make one too big for a command.
    assert batches == [{"a.py": files["a.py"]}, {"big.py": big, "b.py": files["b.py"]}]
    assert carried_batches({"huge.py": b"x" * INLINE_MAX + b"\n"}) == ([], ["huge.py"])


# -- programs for hosts without the agent --------------------------------------------------------

HOST_PROGRAMS = {
    # module: (its main's usage line, the pkinfra modules it brings, in the order they load)
    "pkinfra.switch": (
        "usage: switch.py directory LIVE SOURCE",
        ["pkinfra", "pkinfra.agent", "pkinfra.agent.errors", "pkinfra.agent.files"],
    ),
    "pkinfra.truststore": (
        "usage: truststore.py update [--fresh]",
        ["pkinfra", "pkinfra.agent", "pkinfra.agent.files"],
    ),
}


@pytest.mark.parametrize("module", sorted(HOST_PROGRAMS))
def test_a_host_program_carries_its_imports_and_runs_with_no_pkinfra_installed(
    module: str, tmp_path: Path
) -> None:
    usage, brought = HOST_PROGRAMS[module]
    body = install.program_body(module)
    loaded = [line.split("'")[1] for line in body.splitlines() if "_load('" in line]
    assert loaded == [*brought, module]
    # Debian's python3 with neither site-packages nor the environment (-S: not even the
    # controller's own pkinfra could be found): every import is satisfied by the program.
    alone = subprocess.run(
        ["/usr/bin/python3", "-I", "-S", "-", "not-a-command"],
        input=body,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert (alone.returncode, alone.stderr) == (2, usage + "\n")


def test_a_host_program_is_one_here_document_sh_accepts() -> None:
    command = install.switch_command("/etc/pkinfra/certs/a b", "/etc/pkinfra/certs/a b/next")
    first, *_, last = command.splitlines()
    assert first == (
        "python3 -I - directory '/etc/pkinfra/certs/a b' '/etc/pkinfra/certs/a b/next' "
        "<<'PKINFRA_SWITCH_PROGRAM'"
    )
    assert last == "PKINFRA_SWITCH_PROGRAM"
    checked = subprocess.run(["sh", "-n", "-c", command], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
