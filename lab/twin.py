"""The twin lab: a second, independent copy of the lab, so that lab test modules run side by side.

Every lab test module changes what the one DNS primary serves, and several stop it, so two
modules cannot share a lab. The twin is a whole second lab with the very same addresses, names
and containers, kept apart by Linux namespaces instead of by renaming anything:

- a network namespace (``NETNS``) of its own, in which a second Docker engine runs (its own
  socket, data and run directories); its lab network, 172.29.53.0/24 as the first lab's, exists
  only in that namespace;
- a copy of the work tree (``TREE``, under ``build/``), so that its controller-side state
  (``.lab``: SSH key, known_hosts, the ACME server's CA; ``pki/``: the CA store) is its own;
- the lab images, copied from the first engine (``docker save | docker load``), never built
  twice;
- commands run in the namespace with ``DOCKER_HOST`` set to the twin's engine (``command``):
  pytest, the pyinfra runs it starts, ``docker exec`` and the docker SDK all reach the twin.

``make test`` (scripts/test.sh) runs the modules of ``tests.lab.shards.TWIN`` in the twin while
the others run in the first lab. ``python -m lab twin up|run|down`` does the steps by hand. It
needs root (namespaces, a second dockerd) and ``ip`` and ``nsenter``.
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from lab.engine import LabError, say
from lab.topology import REPO_ROOT

NETNS: Final = "pkinfra-twin"
NETNS_PATH: Final = Path("/run/netns") / NETNS
RUN_DIR: Final = Path("/run/pkinfra-twin")
SOCKET: Final = RUN_DIR / "docker.sock"
DOCKER_HOST: Final = f"unix://{SOCKET}"
DATA_ROOT: Final = Path("/var/lib/pkinfra-twin/docker")
LOG: Final = Path("/var/log/pkinfra-twin-dockerd.log")
#: The twin's copy of the work tree.
TREE: Final = REPO_ROOT / "build" / "twin"
#: What the copy keeps between runs (its own state) and never takes from the work tree.
_OWN: Final = frozenset({".lab", "pki", ".venv", "build"})
ENGINE_WAIT: Final = 60.0


def _run(argv: Sequence[str], what: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        detail = " ".join((done.stderr or done.stdout).split())[-400:]
        raise LabError(f"{what}: exit {done.returncode}: {detail}")
    return done


def command(argv: Sequence[str]) -> list[str]:
    """``argv`` as it runs in the twin: in its network namespace, on its Docker engine."""
    return ["nsenter", f"--net={NETNS_PATH}", "env", f"DOCKER_HOST={DOCKER_HOST}", *argv]


def _engine_answers() -> bool:
    probe = ["docker", "-H", DOCKER_HOST, "info", "--format", "{{.ID}}"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def ensure_namespace() -> None:
    """The network namespace, with its loopback up."""
    if not NETNS_PATH.exists():
        _run(["ip", "netns", "add", NETNS], f"creating network namespace {NETNS}")
        say(f"created network namespace {NETNS}")
    _run(["ip", "netns", "exec", NETNS, "ip", "link", "set", "lo", "up"], "loopback up")


def ensure_engine() -> None:
    """The twin's Docker engine, started in the namespace if nothing answers on its socket.

    ``nsenter --net`` and not ``ip netns exec``: the latter also gives the program a mount
    namespace with a fresh /sys, without the cgroup file systems Docker needs."""
    if _engine_answers():
        return
    for tool in ("ip", "nsenter", "dockerd"):
        if shutil.which(tool) is None:
            raise LabError(f"the twin lab needs {tool}")
    ensure_namespace()
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    say(f"starting the twin's dockerd in {NETNS} (log: {LOG})")
    with open(LOG, "ab") as log:
        subprocess.Popen(
            [
                "nsenter",
                f"--net={NETNS_PATH}",
                "dockerd",
                "--host",
                DOCKER_HOST,
                "--data-root",
                str(DATA_ROOT),
                "--exec-root",
                str(RUN_DIR / "exec"),
                "--pidfile",
                str(RUN_DIR / "dockerd.pid"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + ENGINE_WAIT
    while not _engine_answers():
        if time.monotonic() > deadline:
            raise LabError(f"the twin's dockerd did not answer in {ENGINE_WAIT:.0f} s; see {LOG}")
        time.sleep(0.5)


def copy_images(tags: Sequence[str]) -> None:
    """The lab images the twin's engine lacks, copied from the first engine."""
    missing = [
        tag
        for tag in tags
        if subprocess.run(
            ["docker", "-H", DOCKER_HOST, "image", "inspect", tag],
            capture_output=True,
            check=False,
        ).returncode
        != 0
    ]
    if not missing:
        return
    say(f"copying {', '.join(missing)} to the twin's engine...")
    started = time.monotonic()
    save = subprocess.Popen(["docker", "save", *missing], stdout=subprocess.PIPE)
    try:
        _run(["docker", "-H", DOCKER_HOST, "load", "--quiet"], "docker load", stdin=save.stdout)
    finally:
        if save.stdout is not None:
            save.stdout.close()
        if save.wait() != 0:
            raise LabError(f"docker save {' '.join(missing)} failed (exit {save.returncode})")
    say(f"images copied in {time.monotonic() - started:.0f} s")


def _tree_files() -> list[str]:
    """The work tree's files as git sees them: tracked, and untracked but not ignored."""
    done = _run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        "listing the work tree",
        cwd=REPO_ROOT,
    )
    return sorted({name for name in done.stdout.split("\0") if name})


def sync_tree() -> Path:
    """``TREE`` made a copy of the work tree (its own state kept; the virtualenv shared)."""
    wanted = [name for name in _tree_files() if (REPO_ROOT / name).is_file()]
    keep = set(wanted)
    TREE.mkdir(parents=True, exist_ok=True)
    for top, dirs, files in os.walk(TREE):
        relative = Path(top).relative_to(TREE)
        if relative == Path("."):
            dirs[:] = [d for d in dirs if d not in _OWN]
        dirs[:] = [d for d in dirs if d not in ("__pycache__", ".pytest_cache", ".mypy_cache")]
        for name in files:
            path = (relative / name).as_posix()
            if path not in keep:
                (TREE / path).unlink()
    for name in wanted:
        source, target = REPO_ROOT / name, TREE / name
        if target.is_file() and filecmp.cmp(source, target, shallow=False):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    venv = TREE / ".venv"
    if not venv.is_symlink():
        venv.symlink_to(REPO_ROOT / ".venv")
    own_lab = TREE / ".lab"
    own_lab.mkdir(mode=0o700, exist_ok=True)
    passphrase = own_lab / "ca-passphrase"
    if not passphrase.exists():
        shutil.copy2(REPO_ROOT / ".lab" / "ca-passphrase", passphrase)
    return TREE


def up(tags: Sequence[str]) -> Path:
    """Namespace, engine, images and work tree ready; the twin's tree."""
    started = time.monotonic()
    ensure_engine()
    copy_images(tags)
    tree = sync_tree()
    say(f"twin ready ({time.monotonic() - started:.0f} s): {tree}")
    return tree


def down() -> None:
    """Stop the twin's engine (its containers with it) and remove the namespace; its images
    and work tree stay."""
    pidfile = RUN_DIR / "dockerd.pid"
    if _engine_answers():
        ids = _run(["docker", "-H", DOCKER_HOST, "ps", "-aq"], "listing the twin's containers")
        if ids.stdout.split():
            _run(["docker", "-H", DOCKER_HOST, "rm", "-f", *ids.stdout.split()], "removing")
    if pidfile.exists():
        pid = int(pidfile.read_text().strip() or 0)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.2)
    if NETNS_PATH.exists():
        _run(["ip", "netns", "delete", NETNS], f"removing network namespace {NETNS}")
    say("twin down")
