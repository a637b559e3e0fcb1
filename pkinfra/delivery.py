"""Certificate files into services, and the services told: the one mapping, run on the host.

The controller renders a mapping (JSON, no secrets: paths, owners, modes, how to notify) from the
inventory. Both paths use it: a pyinfra run (``--plan`` as a fact, then a delivery) and certbot's
deploy hook on a renewal (``--lineage NAME``). This module runs on managed hosts, so it uses only
the standard library and the ``openssl`` command.

For each service: read the sources, check that key and certificate belong together, write every
file that differs atomically (a temporary file in the same directory, created with its final
owner and mode, then renamed), check the written files again, then notify the service once. A
notification that fails stays pending on the host and is retried by the next delivery. A key
change can be held back by the service's ``gate`` command (DANE: the new TLSA record must be
served first); a held service keeps its old files.
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import pwd
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_DIR = Path("/var/lib/pkinfra/pending")
KEY_CONTENTS = frozenset({"key", "combined"})
CERT_CONTENTS = frozenset({"cert", "fullchain", "combined"})
SIGNALS = {
    "HUP": signal.SIGHUP,
    "USR1": signal.SIGUSR1,
    "USR2": signal.SIGUSR2,
    "TERM": signal.SIGTERM,
}


class DeliveryError(Exception):
    """One service could not be delivered or notified; the message says which and why."""


@dataclass
class ServiceResult:
    name: str
    changed: list[str] = field(default_factory=list)
    notified: str | None = None
    pending: bool = False
    held: str | None = None
    error: str | None = None


# -- small pieces -------------------------------------------------------------------------------


def _ids(owner: str, group: str) -> tuple[int, int]:
    try:
        uid = pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise DeliveryError(f"unknown user '{owner}'") from None
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise DeliveryError(f"unknown group '{group}'") from None
    return uid, gid


def _public_key(path_or_pem: bytes, *, cert: bool) -> bytes:
    """The public key (PEM) of a certificate or private key, via openssl; no secret leaves."""
    cmd = ["openssl", "x509", "-noout", "-pubkey"] if cert else ["openssl", "pkey", "-pubout"]
    run = subprocess.run(cmd, input=path_or_pem, capture_output=True, timeout=30, check=False)
    if run.returncode != 0 or b"PUBLIC KEY" not in run.stdout:
        raise DeliveryError(f"openssl cannot read the {'certificate' if cert else 'key'}")
    return run.stdout


_CERT_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
_KEY_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]*PRIVATE KEY)-----.+?-----END \1-----", re.S)


def _first_cert(data: bytes) -> bytes:
    found = _CERT_BLOCK.search(data)
    return found.group(0) + b"\n" if found else b""


def _key_part(data: bytes) -> bytes:
    """The private key block of a key or combined file (for the match check only)."""
    found = _KEY_BLOCK.search(data)
    return found.group(0) + b"\n" if found else b""


def check_pair(files: dict[str, tuple[str, bytes]]) -> None:
    """Raise when the service's key and certificate (by content kind) do not belong together."""
    key = next((data for kind, data in files.values() if kind in KEY_CONTENTS), None)
    cert = next(
        (_first_cert(d) for k, d in files.values() if k in CERT_CONTENTS and _first_cert(d)), None
    )
    if key is None or not cert:
        return
    if _public_key(_key_part(key), cert=False) != _public_key(cert, cert=True):
        raise DeliveryError("the key does not match the certificate")


def _current(path: Path) -> tuple[bytes, int, int, int] | None:
    try:
        st = path.stat()
        return path.read_bytes(), st.st_uid, st.st_gid, st.st_mode & 0o7777
    except FileNotFoundError:
        return None


def write_atomic(path: Path, data: bytes, uid: int, gid: int, mode: int) -> None:
    """Write beside then rename: the file never exists half-written or with a wider mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.pkinfra-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _pending_path(state_dir: Path, service: str) -> Path:
    return state_dir / service


def _running(process: str) -> list[int]:
    """PIDs of processes whose name is ``process`` (the kernel keeps 15 characters)."""
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == process[:15]:
                found.append(int(comm.parent.name))
        except OSError:
            continue
    return sorted(found)


def notify(service: dict[str, Any]) -> str:
    """Tell the service; returns what was done. Raises with the command's output on failure."""
    how = service.get("notify") or {}
    if how.get("signal"):
        pidfile = Path(how["pidfile"])
        expected = how.get("process") or service["name"]
        try:
            pid = int(pidfile.read_text().split()[0])
        except FileNotFoundError:
            running = _running(expected)
            if not running:
                # Not started yet: it reads the new files when it starts.
                return f"{expected} is not running; nothing to signal"
            raise DeliveryError(
                f"pidfile {pidfile} is missing but {expected} runs (pid "
                f"{', '.join(map(str, running))}): wrong pidfile? no signal sent"
            ) from None
        except (OSError, ValueError, IndexError):
            raise DeliveryError(f"pidfile {pidfile} is unreadable; no signal sent") from None
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            running = _running(expected)
            if not running:
                # Left over from before a reboot or a crash: it reads the files when it starts.
                return f"{expected} is not running (stale pidfile {pidfile}); nothing to signal"
            raise DeliveryError(
                f"pidfile {pidfile} names pid {pid}, which is not running, but {expected} runs "
                f"(pid {', '.join(map(str, running))}): stale pidfile; no signal sent"
            ) from None
        if not comm.startswith(expected[:15]):
            raise DeliveryError(
                f"pidfile {pidfile} names pid {pid} ({comm}), not '{expected}'; no signal sent"
            )
        os.kill(pid, SIGNALS[how["signal"]])
        return f"SIG{how['signal']} to {expected} (pid {pid})"
    command = how.get("command") or how.get("restart")
    if command:
        # Output goes to a file, not a pipe: a restarted daemon that inherits it must not keep
        # this call (and pyinfra's docker exec or SSH channel) waiting for end-of-file.
        with tempfile.TemporaryFile() as out:
            try:
                code = subprocess.run(
                    ["sh", "-c", command],
                    stdout=out,
                    stderr=out,
                    stdin=subprocess.DEVNULL,
                    timeout=120,
                    check=False,
                ).returncode
            except subprocess.TimeoutExpired:
                raise DeliveryError(f"'{command}' did not finish within 120 s") from None
            out.seek(0)
            output = out.read().decode(errors="replace").strip().splitlines()
        if code != 0:
            raise DeliveryError(
                f"'{command}' failed (exit {code}): {output[-1] if output else 'no output'}"
            )
        return f"ran '{command}'"
    return "nothing to notify"


# -- one service --------------------------------------------------------------------------------


def deliver_service(service: dict[str, Any], *, plan: bool, state_dir: Path) -> ServiceResult:
    result = ServiceResult(service["name"])
    pending_file = _pending_path(state_dir, service["name"])
    result.pending = pending_file.exists()
    try:
        wanted: dict[str, tuple[str, bytes]] = {}
        for f in service["files"]:
            parts = []
            for src in f["sources"]:
                try:
                    parts.append(Path(src).read_bytes())
                except OSError as exc:
                    raise DeliveryError(f"source {src}: {exc.strerror}") from None
            wanted[f["path"]] = (f["content"], b"".join(parts))
        check_pair(wanted)

        todo = []
        key_changed = False
        for f in service["files"]:
            uid, gid = _ids(f["owner"], f["group"])
            mode = int(f["mode"], 8)
            kind, data = wanted[f["path"]]
            have = _current(Path(f["path"]))
            if have != (data, uid, gid, mode):
                todo.append((f["path"], data, uid, gid, mode))
                if kind in KEY_CONTENTS and (have is None or _key_part(have[0]) != _key_part(data)):
                    key_changed = True
        result.changed = [t[0] for t in todo]

        gate = service.get("gate")
        if todo and key_changed and gate and plan:
            # The gate may wait (a TTL); a plan only says that the delivery will ask it.
            result.held = "a new key: delivered once its TLSA record has been served long enough"
            return result
        if todo and key_changed and gate:
            run = subprocess.run(
                ["sh", "-c", gate],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            if run.returncode != 0:
                lines = (run.stdout + run.stderr).strip().splitlines()
                result.held = lines[-1] if lines else f"gate '{gate}' said no"
                return result
        if plan:
            return result

        if todo:
            for path, data, uid, gid, mode in todo:
                write_atomic(Path(path), data, uid, gid, mode)
            check_pair({p: (k, Path(p).read_bytes()) for p, (k, _) in wanted.items()})
            state_dir.mkdir(parents=True, exist_ok=True)
            pending_file.write_text("files changed; notification pending\n")
            result.pending = True
        if result.pending and service.get("notify"):
            result.notified = notify(service)
            pending_file.unlink(missing_ok=True)
            result.pending = False
        elif result.pending:
            pending_file.unlink(missing_ok=True)
            result.pending = False
    except DeliveryError as exc:
        result.error = str(exc)
    except OSError as exc:
        result.error = f"{exc.filename or ''}: {exc.strerror}".strip(": ")
    return result


def deliver(
    mapping: dict[str, Any],
    *,
    lineage: str | None = None,
    plan: bool = False,
    state_dir: Path = STATE_DIR,
) -> list[ServiceResult]:
    """Deliver every service of the mapping (or those that use ``lineage``)."""
    services = mapping.get("services", [])
    if lineage is not None:
        services = [s for s in services if s.get("lineage") == lineage]
    return [deliver_service(s, plan=plan, state_dir=state_dir) for s in services]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pkinfra-deliver", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mapping",
        default="/etc/pkinfra/services.json",
        help="the mapping file, or - for standard input",
    )
    parser.add_argument(
        "--lineage",
        help="only the services of this certbot lineage "
        "(default: RENEWED_LINEAGE's name when certbot runs the hook)",
    )
    parser.add_argument("--plan", action="store_true", help="say what would change; change nothing")
    parser.add_argument("--state-dir", default=str(STATE_DIR), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    lineage = args.lineage
    if lineage is None and os.environ.get("RENEWED_LINEAGE"):
        lineage = Path(os.environ["RENEWED_LINEAGE"]).name
    try:
        text = sys.stdin.read() if args.mapping == "-" else Path(args.mapping).read_text()
        mapping = json.loads(text)
    except (OSError, ValueError) as exc:
        print(f"pkinfra-deliver: cannot read the mapping {args.mapping}: {exc}", file=sys.stderr)
        return 1
    results = deliver(mapping, lineage=lineage, plan=args.plan, state_dir=Path(args.state_dir))
    if lineage is not None and not results:
        print(f"pkinfra-deliver: no service uses lineage '{lineage}'; nothing to do")
        return 0
    print(json.dumps({"plan": args.plan, "services": [asdict(r) for r in results]}))
    for r in results:
        if r.error:
            print(f"pkinfra-deliver: {r.name}: {r.error}", file=sys.stderr)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
