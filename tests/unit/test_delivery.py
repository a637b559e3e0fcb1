"""Delivery of certificate files into services, on real files, owners, openssl and processes."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pkinfra.agent import delivery
from tests.helpers import installed_agents, self_signed

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="changes file owners: needs root")


def make_pair(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    self_signed(key, cert, f"/CN={name}")
    return key, cert


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Any]:
    src = tmp_path / "src"
    src.mkdir()
    key, cert = make_pair(src, "one")
    out = tmp_path / "svc"
    marker = tmp_path / "notified"
    service = {
        "name": "svc",
        "certificate": "one",
        "lineage": "one",
        "files": [
            {
                "path": str(out / "cert.pem"),
                "content": "fullchain",
                "sources": [str(cert)],
                "owner": "nobody",
                "group": "nogroup",
                "mode": "0644",
            },
            {
                "path": str(out / "key.pem"),
                "content": "key",
                "sources": [str(key)],
                "owner": "nobody",
                "group": "nogroup",
                "mode": "0600",
            },
            {
                "path": str(out / "both.pem"),
                "content": "combined",
                "sources": [str(key), str(cert)],
                "owner": "root",
                "group": "nogroup",
                "mode": "0640",
            },
        ],
        "notify": {"command": f"echo x >> {marker}"},
    }
    return {
        "mapping": {"services": [service]},
        "service": service,
        "src": src,
        "out": out,
        "marker": marker,
        "key": key,
        "cert": cert,
        "state": tmp_path / "state",
    }


def run(site: dict[str, Any], **kw: Any) -> delivery.ServiceResult:
    [result] = delivery.deliver(site["mapping"], state_dir=site["state"], **kw)
    return result


def notifications(site: dict[str, Any]) -> int:
    marker: Path = site["marker"]
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def test_files_get_owner_group_mode_and_one_notification(site: dict[str, Any]) -> None:
    result = run(site)
    assert result.error is None and len(result.changed) == 3
    assert result.notified and notifications(site) == 1
    for f in site["service"]["files"]:
        st = Path(f["path"]).stat()
        assert oct(st.st_mode & 0o777) == oct(int(f["mode"], 8))
        assert (st.st_uid, st.st_gid) == delivery._ids(f["owner"], f["group"])
    both = (site["out"] / "both.pem").read_bytes()
    assert both == site["key"].read_bytes() + site["cert"].read_bytes()
    assert not list(site["out"].glob(".*pkinfra*"))

    again = run(site)
    assert again.changed == [] and again.notified is None and notifications(site) == 1


def test_plan_changes_nothing(site: dict[str, Any]) -> None:
    result = run(site, plan=True)
    assert len(result.changed) == 3
    assert not site["out"].exists() and notifications(site) == 0


def test_mismatched_key_and_certificate_are_refused(site: dict[str, Any]) -> None:
    other_key, _ = make_pair(site["src"], "two")
    site["service"]["files"][1]["sources"] = [str(other_key)]
    result = run(site)
    assert result.error == "the key does not match the certificate"
    assert not site["out"].exists() and notifications(site) == 0


def test_failed_notification_stays_pending_and_is_retried(site: dict[str, Any]) -> None:
    site["service"]["notify"] = {"command": "echo 'config broken' >&2; exit 3"}
    failed = run(site)
    assert failed.error == "'echo 'config broken' >&2; exit 3' failed (exit 3): config broken"
    assert (site["out"] / "key.pem").exists(), "the new, valid files stay"
    assert (site["state"] / "pending" / "svc").exists()

    site["service"]["notify"] = {"command": f"echo x >> {site['marker']}"}
    retried = run(site)
    assert retried.changed == [] and retried.notified and notifications(site) == 1
    assert not (site["state"] / "pending" / "svc").exists()


@pytest.fixture
def hup_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    got, ready = tmp_path / "got-hup", tmp_path / "trap-set"
    # A shell cannot trap a signal that was ignored when it started (as under nohup, which may
    # run the whole test session): give it the default SIGHUP disposition first.
    proc = subprocess.Popen(
        ["sh", "-c", f"trap 'echo hup >> {got}' HUP; : > {ready}; while :; do sleep 0.05; done"],
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )
    # A SIGHUP before the trap is set would end the shell: wait until it is set.
    assert wait_for(ready)
    pidfile = tmp_path / "svc.pid"
    pidfile.write_text(f"{proc.pid}\n")
    yield proc, pidfile, got
    proc.kill()
    proc.wait()


def wait_for(path: Path) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.05)
    return False


def test_signal_goes_to_the_pidfile_process(
    site: dict[str, Any], hup_process: tuple[subprocess.Popen[bytes], Path, Path]
) -> None:
    proc, pidfile, got = hup_process
    site["service"]["notify"] = {"signal": "HUP", "pidfile": str(pidfile), "process": "sh"}
    result = run(site)
    assert result.notified == f"SIGHUP to sh (pid {proc.pid})"
    assert wait_for(got)


def test_no_signal_to_a_process_it_does_not_own(
    site: dict[str, Any], hup_process: tuple[subprocess.Popen[bytes], Path, Path]
) -> None:
    proc, pidfile, got = hup_process
    site["service"]["notify"] = {"signal": "HUP", "pidfile": str(pidfile), "process": "nginx"}
    result = run(site)
    assert result.error is not None and f"names pid {proc.pid} (sh), not 'nginx'" in result.error
    assert proc.poll() is None and not got.exists()
    assert (site["state"] / "pending" / "svc").exists(), "still pending for the next run"


def test_stale_or_missing_pidfile(
    site: dict[str, Any], tmp_path: Path, hup_process: tuple[subprocess.Popen[bytes], Path, Path]
) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    pidfile = tmp_path / "stale.pid"
    pidfile.write_text(f"{dead.pid}\n")
    proc, _, got = hup_process
    # Stale while a process of that name runs: which one to signal is unknown; none is.
    site["service"]["notify"] = {"signal": "HUP", "pidfile": str(pidfile), "process": "sh"}
    result = run(site)
    assert "stale pidfile" in (result.error or "") and "no signal sent" in (result.error or "")
    assert proc.poll() is None and not got.exists()
    assert (site["state"] / "pending" / "svc").exists(), "still pending for the next run"
    # Missing while such a process runs: the pidfile path is wrong; nothing is signalled.
    pidfile.unlink()
    site["service"]["notify"] = {"signal": "HUP", "pidfile": str(pidfile), "process": "sh"}
    error = run(site).error or ""
    assert "is missing but sh runs" in error and "no signal sent" in error
    assert proc.poll() is None and not got.exists()
    pidfile.write_text(f"{dead.pid}\n")
    # Stale and no such process at all (a reboot): not running, it reads the files at start.
    site["service"]["notify"] = {
        "signal": "HUP",
        "pidfile": str(pidfile),
        "process": "pkinfra-gone",
    }
    result = run(site)
    assert result.error is None
    assert (
        result.notified
        == f"pkinfra-gone is not running (stale pidfile {pidfile}); nothing to signal"
    )


def test_service_not_started_yet_is_not_an_error(site: dict[str, Any], tmp_path: Path) -> None:
    name = "pkinfra-nosuch"
    site["service"]["notify"] = {
        "signal": "HUP",
        "pidfile": str(tmp_path / "x.pid"),
        "process": name,
    }
    result = run(site)
    assert result.error is None
    assert result.notified == f"{name} is not running; nothing to signal"
    assert not (site["state"] / "pending" / "svc").exists()


def test_key_change_waits_for_the_gate(site: dict[str, Any]) -> None:
    assert run(site).notified
    new_key, new_cert = make_pair(site["src"], "next")
    site["service"]["files"][0]["sources"] = [str(new_cert)]
    site["service"]["files"][1]["sources"] = [str(new_key)]
    site["service"]["files"][2]["sources"] = [str(new_key), str(new_cert)]
    asked = site["src"] / "gate-asked"
    site["service"]["gate"] = (
        f"touch {asked}; echo 'TLSA for the next key not yet served by ns2'; exit 1"
    )
    # A plan never runs the gate (it may wait a TTL): it says the delivery will ask it.
    planned = run(site, plan=True)
    assert planned.held is not None and "TLSA record" in planned.held and planned.changed
    assert not asked.exists()
    held = run(site)
    assert asked.exists()
    assert held.held == "TLSA for the next key not yet served by ns2"
    assert (site["out"] / "key.pem").read_bytes() == site["key"].read_bytes()
    site["service"]["gate"] = "true"
    assert run(site).notified and (site["out"] / "key.pem").read_bytes() == new_key.read_bytes()


def test_interrupted_write_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "key.pem"
    target.write_bytes(b"old")
    target.chmod(0o600)

    def boom(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", boom)
    with pytest.raises(OSError):
        delivery.write_atomic(target, b"new", 0o600, (0, 0))
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]


def test_hook_for_an_unknown_lineage_does_nothing(
    site: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mapping = tmp_path / "services.json"
    mapping.write_text(json.dumps(site["mapping"]))
    code = delivery.main(
        ["--mapping", str(mapping), "--lineage", "nope", "--state-dir", str(site["state"])]
    )
    assert code == 0
    assert "no service uses lineage 'nope'; nothing to do" in capsys.readouterr().out
    assert not site["out"].exists()
    code = delivery.main(
        ["--mapping", str(mapping), "--lineage", "one", "--state-dir", str(site["state"])]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["services"][0]["notified"]


def test_a_restart_that_leaves_a_daemon_behind_does_not_hang(site: dict[str, Any]) -> None:
    # The daemon inherits the command's output: with pipes, the call would wait for it to exit.
    site["service"]["notify"] = {"restart": "sleep 30 & echo restarted"}
    start = time.monotonic()
    result = run(site)
    assert result.notified == "ran 'sleep 30 & echo restarted'"
    assert time.monotonic() - start < 20


# -- pidfiles -----------------------------------------------------------------------------------


def run_agent(
    mapping: dict[str, Any],
    state: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 20,
) -> subprocess.CompletedProcess[str]:
    """The agent as the host runs it: its entry point, with the installed files only, in its
    own process."""
    path = state.parent / "services.json"
    path.write_text(json.dumps(mapping))
    return subprocess.run(
        [
            sys.executable,
            "-I",
            str(installed_agents(state.parent / "lib")),
            "--mapping",
            str(path),
            "--state-dir",
            str(state),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def pidfile_kinds(tmp_path: Path, pidfile: Path, kind: str) -> Path:
    if kind == "fifo":
        path = tmp_path / "fifo.pid"
        os.mkfifo(path)
        return path
    if kind == "symlink":
        path = tmp_path / "link.pid"
        path.symlink_to(pidfile)  # to the right pid: only the link itself is wrong
        return path
    return Path("/dev/zero")


@pytest.mark.parametrize(
    ("kind", "says"),
    [("fifo", "a FIFO"), ("symlink", "a symbolic link"), ("devzero", "a character device")],
)
def test_pidfile_that_is_not_a_regular_file_is_refused_at_once(
    site: dict[str, Any],
    tmp_path: Path,
    hup_process: tuple[subprocess.Popen[bytes], Path, Path],
    kind: str,
    says: str,
) -> None:
    proc, good, got = hup_process
    pidfile = pidfile_kinds(tmp_path, good, kind)
    site["service"]["notify"] = {"signal": "HUP", "pidfile": str(pidfile), "process": "sh"}
    start = time.monotonic()
    done = run_agent(site["mapping"], site["state"], timeout=20)
    assert time.monotonic() - start < 15
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"pkinfra-deliver: svc: pidfile {pidfile} is {says}, not a regular file; no signal sent"
    ]
    assert proc.poll() is None and not got.exists()
    assert (site["state"] / "pending" / "svc").exists(), "still owed: retried by the next run"


@pytest.mark.parametrize(
    ("text", "pid"),
    [
        (b"4242\n", 4242),
        (b"4242", 4242),
        (b"      4242\n", 4242),  # Postfix's master.pid
        (b"4242\n/var/lib/postgresql/15/main\n" + b"x" * 200, 4242),  # postmaster.pid
        (b"", None),
        (b"\n4242\n", None),
        (b"-1\n", None),
        (b"0\n", None),
        (b"42 43\n", None),
        (b"4242x\n", None),
        (b"99999999\n", None),
        (b" " * 70 + b"4242\n", None),
        (b"4" * 80, None),
    ],
)
def test_pidfile_holds_one_decimal_pid_on_its_first_line(
    tmp_path: Path, text: bytes, pid: int | None
) -> None:
    pidfile = tmp_path / "x.pid"
    pidfile.write_bytes(text)
    if pid is None:
        with pytest.raises(delivery.DeliveryError, match="pid"):
            delivery.read_pidfile(pidfile)
    else:
        assert delivery.read_pidfile(pidfile) == (pid, 0)
    assert delivery.read_pidfile(tmp_path / "none.pid") is None


def test_pidfile_owned_by_another_user_or_writable_by_anyone_is_refused(
    site: dict[str, Any], hup_process: tuple[subprocess.Popen[bytes], Path, Path]
) -> None:
    proc, pidfile, got = hup_process
    site["service"]["notify"] = {"signal": "HUP", "pidfile": str(pidfile), "process": "sh"}
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chown(pidfile, nobody, -1)  # the shell runs as root: nobody may not point at it
    error = run(site).error or ""
    assert f"belongs to uid {nobody}, neither root nor the uid of pid {proc.pid}" in error
    os.chown(pidfile, 0, -1)
    pidfile.chmod(0o646)
    assert run(site).error == f"pidfile {pidfile} is writable by anyone; no signal sent"
    assert proc.poll() is None and not got.exists()
    pidfile.chmod(0o644)
    assert run(site).notified == f"SIGHUP to sh (pid {proc.pid})"
    assert wait_for(got)


def test_pidfile_owned_by_the_process_user(site: dict[str, Any], tmp_path: Path) -> None:
    # A daemon that drops privileges writes its own pidfile (PostgreSQL's is postgres').
    proc = subprocess.Popen(
        ["sleep", "30"],
        user="nobody",
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )
    try:
        pidfile = tmp_path / "sleep.pid"
        pidfile.write_text(f"{proc.pid}\n")
        os.chown(pidfile, pwd.getpwnam("nobody").pw_uid, -1)
        site["service"]["notify"] = {"signal": "HUP", "pidfile": str(pidfile), "process": "sleep"}
        assert run(site).notified == f"SIGHUP to sleep (pid {proc.pid})"
        assert proc.wait(timeout=5) == -signal.SIGHUP
    finally:
        proc.kill()
        proc.wait()


def test_process_gone_between_check_and_signal_gets_no_signal(
    site: dict[str, Any],
    hup_process: tuple[subprocess.Popen[bytes], Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proc, pidfile, got = hup_process
    check, kill = delivery._check_identity, os.kill

    def then_gone(pid: int, *args: Any) -> None:
        check(pid, *args)
        kill(proc.pid, signal.SIGKILL)
        proc.wait()  # reaped: its pid may be anyone's now

    def no_kill(*args: Any) -> None:
        raise AssertionError("signals go through the pidfd, never by pid")

    monkeypatch.setattr(delivery, "_check_identity", then_gone)
    monkeypatch.setattr(os, "kill", no_kill)
    site["service"]["notify"] = {"signal": "HUP", "pidfile": str(pidfile), "process": "sh"}
    result = run(site)
    assert result.notified is None or "nothing to signal" in result.notified
    assert "stale" in (result.notified or result.error or "")
    assert not got.exists()
