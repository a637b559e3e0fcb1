"""Certificate files into services, and the services told: the one mapping, run on the host.

The controller renders a mapping (JSON, no secrets: paths, owners, modes, how to notify) from the
inventory. Both paths use it: a pyinfra run (``--plan`` as a fact, then a delivery) and certbot's
deploy hook on a renewal (``--lineage NAME``). This module runs on managed hosts: the standard
library and Debian's python3-cryptography (through ``pkinfra.keys``).

A service either has copies of its files, or reads its certificate in place (no ``files``, an
``in_place`` entry naming the certificate and key it reads).

Copies: read the sources, check that keys and certificates belong together, write every file
that differs beside its target (final owner and mode, fsynced), mark the service pending
(durably), rename the files into place, check them again, notify the service once, and only
then clear the mark. In place: the SHA-256 fingerprint of the certificate the service was last
told about is recorded in ``served/<service>.json``; a different fingerprint (a renewal, a
reissue, a key rollover's switch) marks the service pending, records the new one and notifies.
The very first sighting notifies too: the agent cannot see what a running service loaded, and a
missed notification leaves an old (possibly revoked, TLSA-retired) certificate in service.

A notification that fails stays pending (``pending/<service>``) and is retried by the next
delivery; a delivery interrupted anywhere (even ``kill -9``) leaves the mark, so the next one
finishes it. What a crash may leave: every file is whole (old or new content, never partial or
with a wider mode); a key and a certificate in two files can disagree only between the renames
of one delivery (all data is written and fsynced before, so that window is a few renames), and
then the mark is on disk and the service has not been told; a service is only told when every
key it reads matches every certificate. A crash after the notification and before the mark is
cleared notifies once more on the next delivery.

A key change can be held back by the service's ``gate`` command (DANE: the new TLSA record must
be served first): a held copy keeps its old files, a held in-place service is not told.
"""

from __future__ import annotations

import argparse
import base64
import errno
import fcntl
import grp
import hashlib
import json
import os
import pwd
import re
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pkinfra.agent import paths
from pkinfra.agent.errors import PkinfraError
from pkinfra.agent.files import drop_staged, fsync_dir, stage, write_atomic
from pkinfra.keys import KeyTypeError, pem_public_key

#: The agent's state: ``pending/<service>`` (a notification is owed) and ``served/<service>.json``
#: (what an in-place service was last told about).
STATE_DIR = Path(paths.STATE_DIR)
KEY_CONTENTS = frozenset({"key", "combined"})
CERT_CONTENTS = frozenset({"cert", "fullchain", "combined"})
SIGNALS = {
    "HUP": signal.SIGHUP,
    "USR1": signal.SIGUSR1,
    "USR2": signal.SIGUSR2,
    "TERM": signal.SIGTERM,
}
#: Only this much of a pidfile is read; the pid is its first line.
PIDFILE_MAX = 64
#: Test-only fault injection: with ``PKINFRA_DELIVERY_CRASH_AT=test-only:<step>`` in its
#: environment the agent SIGKILLs itself when it reaches ``<step>`` (``staged``, ``marked``,
#: ``renamed-<n>``, ``checked``, ``recorded``, ``notified``, ``cleared``). Any other value does
#: nothing. tests/unit/test_delivery_faults.py proves with it that a crash anywhere is recovered.
CRASH_VARIABLE = "PKINFRA_DELIVERY_CRASH_AT"


class DeliveryError(PkinfraError):
    """One service could not be delivered or notified; the message says which and why."""


@dataclass
class ServiceResult:
    name: str
    changed: list[str] = field(default_factory=list)
    #: In place: why the service must be told ("certificate changed (fingerprint A -> B)").
    change: str | None = None
    notified: str | None = None
    pending: bool = False
    held: str | None = None
    error: str | None = None


def _step(name: str) -> None:
    if os.environ.get(CRASH_VARIABLE) == f"test-only:{name}":
        os.kill(os.getpid(), signal.SIGKILL)


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


def _public_key(pem: bytes) -> bytes:
    """The public key (DER SubjectPublicKeyInfo) of one PEM certificate or private key."""
    try:
        return pem_public_key(pem)
    except KeyTypeError as exc:
        raise DeliveryError(str(exc)) from None


_CERT_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
_KEY_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]*PRIVATE KEY)-----.+?-----END \1-----", re.S)


def _first_cert(data: bytes) -> bytes:
    found = _CERT_BLOCK.search(data)
    return found.group(0) + b"\n" if found else b""


def _key_part(data: bytes) -> bytes:
    """The private key block of a key or combined file (for the match check only)."""
    found = _KEY_BLOCK.search(data)
    return found.group(0) + b"\n" if found else b""


def _pem_body(pem: bytes) -> bytes:
    """The DER inside one PEM block."""
    lines = pem.strip().splitlines()[1:-1]
    return base64.b64decode(b"".join(lines))


def check_pair(files: dict[str, tuple[str, bytes]]) -> None:
    """Raise unless every key and every (first) certificate of the files, by content kind,
    have one public key: the service can load any pair of them."""
    keys = {_key_part(d) for k, d in files.values() if k in KEY_CONTENTS and _key_part(d)}
    certs = {_first_cert(d) for k, d in files.values() if k in CERT_CONTENTS and _first_cert(d)}
    if not keys or not certs:
        return
    public = {_public_key(pem) for pem in keys | certs}
    if len(public) != 1:
        raise DeliveryError("the key does not match the certificate")


def _current(path: Path) -> tuple[bytes, int, int, int] | None:
    try:
        st = path.stat()
        return path.read_bytes(), st.st_uid, st.st_gid, st.st_mode & 0o7777
    except FileNotFoundError:
        return None


def _stage(path: Path, data: bytes, uid: int, gid: int, mode: int) -> Path:
    """``data`` in a new file beside ``path`` with its final owner and mode, on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    drop_staged(path)  # an interrupted delivery's (deliveries take a lock: none is running)
    return stage(path, data, mode, (uid, gid))


def _mark_pending(path: Path, why: str) -> None:
    """On disk before anything the service reads changes: a crash leaves the service owed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = f"{why}; notification pending\n".encode()
    write_atomic(path, data, 0o644, (os.geteuid(), os.getegid()))


def _record_held(path: Path, why: str | None) -> None:
    """Write down (or clear) why the service's key change is held back by its gate, for
    ``pkinfra status``; a hold that goes on keeps its first time (the file is not rewritten)."""
    if why is None:
        _clear_pending(path)
        return
    data = f"{why}\n".encode()
    with suppress(OSError):
        if path.read_bytes() == data:
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, 0o644, (os.geteuid(), os.getegid()))


def _clear_pending(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_dir(path.parent)


@contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """One delivery at a time on a host (a pyinfra run and certbot's hook may meet)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / "delivery.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- notification -------------------------------------------------------------------------------


def _running(process: str) -> list[int]:
    """PIDs of processes whose name is ``process`` (the kernel keeps 15 characters)."""
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().rstrip("\n") == process[:15]:
                found.append(int(comm.parent.name))
        except OSError:
            continue
    return sorted(found)


_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a directory",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link",
}


def _not_regular(path: Path, mode: int) -> DeliveryError:
    kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
    return DeliveryError(f"pidfile {path} is {kind}, not a regular file; no signal sent")


def read_pidfile(path: Path) -> tuple[int, int] | None:
    """(pid, owner uid) of a pidfile; None when there is none.

    Never blocks and never follows the last path component: a symbolic link, FIFO, device or
    directory is refused before it is opened, and the opened file (``O_NOFOLLOW|O_NONBLOCK``)
    is checked again. Only the first ``PIDFILE_MAX`` bytes are read; the first line must be one
    decimal pid (blanks around it are allowed: Postfix pads it). A pidfile anyone may write is
    refused.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DeliveryError(f"pidfile {path}: {exc.strerror}; no signal sent") from None
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _not_regular(path, stat.S_IFLNK) from None
        raise DeliveryError(f"pidfile {path}: {exc.strerror}; no signal sent") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(path, st.st_mode)
        data = os.read(fd, PIDFILE_MAX + 1)
    finally:
        os.close(fd)
    if st.st_mode & stat.S_IWOTH:
        raise DeliveryError(f"pidfile {path} is writable by anyone; no signal sent")
    first, newline, _ = data.partition(b"\n")
    if len(first) > PIDFILE_MAX or (not newline and len(data) > PIDFILE_MAX):
        raise DeliveryError(
            f"pidfile {path}: no pid in its first {PIDFILE_MAX} bytes; no signal sent"
        )
    text = first.strip(b" \t\r")
    if not re.fullmatch(rb"[0-9]{1,7}", text) or not 0 < int(text) <= 4194304:
        raise DeliveryError(f"pidfile {path} does not hold one decimal pid; no signal sent")
    return int(text), st.st_uid


def _process_uids(pid: int) -> set[int]:
    """Real and effective uid of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return {int(u) for u in line.split()[1:3]}
    raise OSError(errno.ESRCH, "no Uid line")


def _check_identity(pid: int, expected: str, pidfile: Path, owner: int) -> None:
    """Raise unless ``pid`` is ``expected`` (its exact name) and a user-space process, and the
    pidfile belongs to root or to the process's user (nobody else can point the agent at a
    process). ``ProcessLookupError`` or ``FileNotFoundError`` when the process is gone."""
    comm = Path(f"/proc/{pid}/comm").read_text().rstrip("\n")
    if comm != expected[:15]:
        raise DeliveryError(
            f"pidfile {pidfile} names pid {pid} ({comm}), not '{expected}'; no signal sent"
        )
    try:
        os.readlink(f"/proc/{pid}/exe")
    except FileNotFoundError:
        raise DeliveryError(
            f"pid {pid} ({comm}) of pidfile {pidfile} has no executable (exiting?); no signal sent"
        ) from None
    except PermissionError:
        # Without CAP_SYS_PTRACE (a container, a hardened unit) even root may not read another
        # user's exe link (measured in the lab): the name and owner checks then stand alone.
        pass
    uids = _process_uids(pid)
    if owner != 0 and owner not in uids:
        raise DeliveryError(
            f"pidfile {pidfile} belongs to uid {owner}, neither root nor the uid of pid {pid} "
            f"({', '.join(map(str, sorted(uids)))}); no signal sent"
        )


def signal_pidfile(how: dict[str, Any], expected: str) -> str:
    """Send the signal to the process the pidfile names, if it is the expected one.

    The pidfile must be a regular file owned by root or by the process's user and not writable
    by others; the process must have exactly the expected name. The signal goes through a pidfd
    opened before the checks: if the pid is reused in between, the signal fails instead of
    reaching another process.
    """
    pidfile = Path(how["pidfile"])
    found = read_pidfile(pidfile)
    if found is None:
        running = _running(expected)
        if not running:
            # Not started yet: it reads the new files when it starts.
            return f"{expected} is not running; nothing to signal"
        raise DeliveryError(
            f"pidfile {pidfile} is missing but {expected} runs (pid "
            f"{', '.join(map(str, running))}): wrong pidfile? no signal sent"
        )
    pid, owner = found
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        pidfd = None
    except OSError as exc:
        raise DeliveryError(f"cannot open pid {pid} ({pidfile}): {exc.strerror}") from None
    try:
        if pidfd is not None:
            try:
                _check_identity(pid, expected, pidfile, owner)
                signal.pidfd_send_signal(pidfd, SIGNALS[how["signal"]])
                return f"SIG{how['signal']} to {expected} (pid {pid})"
            except (ProcessLookupError, FileNotFoundError):
                pass  # gone since the pidfile was read
        running = _running(expected)
        if not running:
            # Left over from before a reboot or a crash: it reads the files when it starts.
            return f"{expected} is not running (stale pidfile {pidfile}); nothing to signal"
        raise DeliveryError(
            f"pidfile {pidfile} names pid {pid}, which is not running, but {expected} runs "
            f"(pid {', '.join(map(str, running))}): stale pidfile; no signal sent"
        )
    finally:
        if pidfd is not None:
            os.close(pidfd)


def notify(service: dict[str, Any]) -> str:
    """Tell the service; returns what was done. Raises with the command's output on failure."""
    how = service.get("notify") or {}
    if how.get("signal"):
        return signal_pidfile(how, how.get("process") or service["name"])
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


# -- in place -----------------------------------------------------------------------------------


def fingerprint(cert_pem: bytes) -> dict[str, str]:
    """SHA-256 of a certificate's DER and of its public key (SubjectPublicKeyInfo: TLSA 3 1 1)."""
    cert = _first_cert(cert_pem)
    if not cert:
        raise DeliveryError("no certificate in it")
    spki = _public_key(cert)
    return {
        "sha256": hashlib.sha256(_pem_body(cert)).hexdigest(),
        "spki_sha256": hashlib.sha256(spki).hexdigest(),
    }


def _short(digest: str) -> str:
    return digest[:16]


def served_change(recorded: dict[str, Any] | None, now: dict[str, str]) -> tuple[str | None, bool]:
    """Why an in-place service must be told (None: it has been), and whether its key changed.

    The first sighting counts as a change whose key is new: what the running service loaded is
    unknown, and a key it has not served before must pass the gate.
    """
    if recorded is None:
        return f"first sighting of certificate {_short(now['sha256'])}", True
    if recorded.get("sha256") == now["sha256"]:
        return None, False
    old = _short(str(recorded.get("sha256")))
    return (
        f"certificate changed (fingerprint {old} -> {_short(now['sha256'])})",
        recorded.get("spki_sha256") != now["spki_sha256"],
    )


def _read_record(path: Path) -> dict[str, Any] | None:
    """What was recorded; an unreadable record counts as none (notifies once more)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "sha256" in record else None


# -- one service --------------------------------------------------------------------------------


def _held(service: dict[str, Any], *, plan: bool) -> str | None:
    """Why a key change must wait (the service's gate said no); None: it may go ahead."""
    gate = service.get("gate")
    if not gate:
        return None
    if plan:
        # The gate may wait (a TTL); a plan only says that the delivery will ask it.
        return "a new key: delivered once its TLSA record has been served long enough"
    run = subprocess.run(
        ["sh", "-c", gate],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if run.returncode == 0:
        return None
    lines = (run.stdout + run.stderr).strip().splitlines()
    return lines[-1] if lines else f"gate '{gate}' said no"


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DeliveryError(f"{path}: {exc.strerror}") from None


def _copies(
    service: dict[str, Any], result: ServiceResult, pending_file: Path, *, plan: bool
) -> dict[str, str]:
    """Bring the copies up to date (marked pending before the first rename); returns the live
    files to check before the notification (path -> content kind)."""
    wanted: dict[str, tuple[str, bytes]] = {}
    for f in service["files"]:
        wanted[f["path"]] = (f["content"], b"".join(_read(src) for src in f["sources"]))
    check_pair(wanted)

    todo = []
    key_changed = False
    for f in service["files"]:
        uid, gid = _ids(f["owner"], f["group"])
        mode = int(f["mode"], 8)
        kind, data = wanted[f["path"]]
        have = _current(Path(f["path"]))
        if have != (data, uid, gid, mode):
            todo.append((Path(f["path"]), data, uid, gid, mode))
            if kind in KEY_CONTENTS and (have is None or _key_part(have[0]) != _key_part(data)):
                key_changed = True
    result.changed = [str(t[0]) for t in todo]
    kinds = {path: kind for path, (kind, _) in wanted.items()}
    if todo and key_changed:
        result.held = _held(service, plan=plan)
    if plan or result.held or not todo:
        return kinds

    staged: list[tuple[Path, Path]] = []
    try:
        for path, data, uid, gid, mode in todo:
            staged.append((_stage(path, data, uid, gid, mode), path))
        _step("staged")
        _mark_pending(pending_file, f"files changed: {', '.join(result.changed)}")
        result.pending = True
        _step("marked")
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    # Back to back, nothing to wait for in between: the window in which a key and a
    # certificate in two files disagree is as short as it can be.
    for n, (tmp, path) in enumerate(staged, 1):
        os.replace(tmp, path)
        _step(f"renamed-{n}")
    for directory in sorted({path.parent for _, path in staged}):
        fsync_dir(directory)
    return kinds


def _in_place(
    service: dict[str, Any],
    result: ServiceResult,
    pending_file: Path,
    served_file: Path,
    *,
    plan: bool,
) -> dict[str, str]:
    """Record the certificate an in-place service reads; a new one makes the service owed a
    notification (marked pending before it is recorded). Returns the files to check."""
    reads = service["in_place"]
    kinds = {reads["cert"]: "cert", reads["key"]: "key"}
    cert = _read(reads["cert"])
    check_pair({reads["cert"]: ("cert", cert), reads["key"]: ("key", _read(reads["key"]))})
    try:
        now = fingerprint(cert)
    except DeliveryError as exc:
        raise DeliveryError(f"{reads['cert']}: {exc}") from None
    change, key_changed = served_change(_read_record(served_file), now)
    result.change = change
    if change and key_changed:
        result.held = _held(service, plan=plan)
    if plan or result.held or not change:
        return kinds
    _mark_pending(pending_file, change)
    result.pending = True
    _step("marked")
    record = {"certificate": reads["cert"], **now}
    data = (json.dumps(record, sort_keys=True) + "\n").encode()
    served_file.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(served_file, data, 0o644, (os.geteuid(), os.getegid()))
    _step("recorded")
    return kinds


def deliver_service(service: dict[str, Any], *, plan: bool, state_dir: Path) -> ServiceResult:
    result = ServiceResult(service["name"])
    pending_file = state_dir / "pending" / service["name"]
    result.pending = pending_file.exists()
    try:
        if service.get("in_place") and not service.get("files"):
            served_file = state_dir / "served" / f"{service['name']}.json"
            kinds = _in_place(service, result, pending_file, served_file, plan=plan)
        else:
            kinds = _copies(service, result, pending_file, plan=plan)
        if not plan:
            _record_held(state_dir / "held" / service["name"], result.held)
        if plan or result.held or not result.pending:
            return result
        # Whatever left the notification owed (this delivery, or one that failed or crashed):
        # the service is only told about files that belong together.
        check_pair({path: (kind, _read(path)) for path, kind in kinds.items()})
        _step("checked")
        if service.get("notify"):
            result.notified = notify(service)
        _step("notified")
        _clear_pending(pending_file)
        result.pending = False
        _step("cleared")
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
    if plan or not services:
        return [deliver_service(s, plan=plan, state_dir=state_dir) for s in services]
    with _locked(state_dir):
        return [deliver_service(s, plan=plan, state_dir=state_dir) for s in services]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pkinfra-deliver", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mapping",
        default=paths.SERVICES_MAPPING,
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
