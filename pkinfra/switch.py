"""The atomic switch of a live key and certificate: never a key beside another key's certificate.

A live directory, a CA-issued certificate's ``/etc/pkinfra/certs/<name>`` or a certbot lineage's
``live/<name>`` (symbolic links into ``archive/<name>``), is switched to a new key and its
certificate in one step: its complete new state is built in a sibling directory (same
filesystem; every entry with its owner, group and mode; contents on disk), checked (the key
matches every certificate), then exchanged with the live directory by Linux's
``renameat2(RENAME_EXCHANGE)`` (glibc 2.28 or later), one atomic operation. The old state, now
under the sibling's name, is removed last. At every instant, and after a ``kill -9`` anywhere,
the live directory holds the old pair or the new one; a rerun removes what a killed one left
beside it and switches again, or finds the switch done. A filesystem without the exchange
refuses it, and nothing changes.

A certbot lineage gets the next lineage's files as a new generation of its archive
(``privkeyN.pem`` ...; certbot's own renewals number theirs after it) and a ``live/`` directory
of links to that generation, made with certbot's lock held: certbot finds its current version
in those links, as after a renewal of its own.

This runs on managed hosts with the host's python3, the standard library and the ``openssl``
command: the agent imports it, and for a CA-issued certificate (whose host may have no agent)
the controller feeds it, with the modules it imports, to ``python3 -I -``
(``pkinfra.install.switch_command``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from pkinfra.agent.errors import PkinfraError
from pkinfra.agent.files import create, drop_staged, fsync_dir, write_atomic

#: A CA-issued certificate's files (``pkinfra.issue``), the key first.
CA_FILES = ("key.pem", "cert.pem", "chain.pem", "fullchain.pem", "bundle.pem")
#: A certbot lineage's four links, and how certbot names each generation in its archive.
LINEAGE_KINDS = ("cert", "privkey", "chain", "fullchain")
_VERSIONED = re.compile(r"^(cert|privkey|chain|fullchain)([0-9]+)\.pem$")
#: Test-only fault injection: with ``PKINFRA_SWITCH_CRASH_AT=test-only:<step>`` in its
#: environment the switch SIGKILLs itself on reaching ``<step>``: ``archived-<kind>`` (a
#: lineage's new generation, one file each), ``copied``, ``built``, ``checked``, ``exchanged``
#: (the directory switch), ``hooks-run`` (the agent, after certbot's deploy hooks). Any other
#: value does nothing. tests/unit/test_switch.py proves with it that a kill anywhere is made good.
CRASH_VARIABLE = "PKINFRA_SWITCH_CRASH_AT"
#: How long a lineage switch waits for a running certbot to finish.
CERTBOT_LOCK_WAIT = 300.0
_AT_FDCWD = -100
_RENAME_EXCHANGE = 1 << 1


class SwitchError(PkinfraError):
    """The switch did not happen (the live directory is as it was); the text says why."""


def crash_point(name: str) -> None:
    if os.environ.get(CRASH_VARIABLE) == f"test-only:{name}":
        os.kill(os.getpid(), signal.SIGKILL)


# -- pieces -------------------------------------------------------------------------------------


def exchange(a: Path, b: Path) -> None:
    """Swap what the names ``a`` and ``b`` (same filesystem) point to, in one atomic step."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        renameat2 = libc.renameat2
    except AttributeError:
        raise SwitchError("the C library has no renameat2 (glibc 2.28 or later)") from None
    renameat2.argtypes = (
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    )
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise SwitchError(f"cannot exchange {b} with {a}: {os.strerror(code)}")


def _install(path: Path, data: bytes, like: os.stat_result) -> None:
    """``data`` at ``path`` with ``like``'s owner, group and mode: written beside, renamed."""
    drop_staged(path)  # what a killed switch left (certbot's lock is held)
    write_atomic(path, data, stat.S_IMODE(like.st_mode), (like.st_uid, like.st_gid))


def _replicate(source: Path, target: Path, skip: Callable[[str], bool]) -> None:
    """``target`` made a copy of the directory ``source``: each entry with its owner, group
    and mode, links as links, contents on disk; ``target`` gets its own mode last."""
    st = os.lstat(source)
    os.mkdir(target, 0o700)
    for entry in os.scandir(source):
        if skip(entry.name):
            continue
        src, dst = Path(entry.path), target / entry.name
        est = os.lstat(src)
        if stat.S_ISLNK(est.st_mode):
            os.symlink(os.readlink(src), dst)
            os.lchown(dst, est.st_uid, est.st_gid)
        elif stat.S_ISDIR(est.st_mode):
            _replicate(src, dst, lambda _: False)
        elif stat.S_ISREG(est.st_mode):
            create(dst, src.read_bytes(), stat.S_IMODE(est.st_mode), (est.st_uid, est.st_gid))
        else:
            raise SwitchError(f"{src}: not a file, link or directory; not copying it")
    os.chown(target, st.st_uid, st.st_gid)
    os.chmod(target, stat.S_IMODE(st.st_mode))
    fsync_dir(target)


def public_key(path: Path, *, cert: bool) -> bytes:
    """The public key (PEM) of a certificate (the first of a file) or a private key."""
    args = ["x509", "-noout", "-pubkey"] if cert else ["pkey", "-pubout"]
    done = subprocess.run(
        ["openssl", *args, "-in", str(path)],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
        check=False,
    )
    if done.returncode != 0 or b"PUBLIC KEY" not in done.stdout:
        what = "certificate" if cert else "key"
        raise SwitchError(f"{path}: openssl cannot read it as a {what}")
    return done.stdout


def check_pair(key: Path, certificates: Sequence[Path]) -> None:
    """Raise unless every certificate is for ``key``."""
    public = public_key(key, cert=False)
    for cert in certificates:
        if public_key(cert, cert=True) != public:
            raise SwitchError(f"{cert} is not the certificate of the key {key}")


def staging(live: Path) -> Path:
    """Where the new state of ``live`` is built (and the old one left until it is removed)."""
    return live.with_name(f".{live.name}.pkinfra-switch")


def drop_leftover(live: Path) -> None:
    """What a killed switch of ``live`` left beside it (old or unfinished: never live)."""
    if staging(live).exists():
        shutil.rmtree(staging(live))


def swap_in(
    live: Path,
    build: Callable[[Path], None],
    check: Callable[[Path], None],
    skip: Callable[[str], bool] = lambda _: False,
) -> None:
    """Build the new state of ``live`` beside it (a copy, then ``build``), ``check`` it, and
    exchange the two in one step; then remove the old state."""
    new = staging(live)
    drop_leftover(live)
    try:
        _replicate(live, new, skip)
        crash_point("copied")
        build(new)
        fsync_dir(new)
        crash_point("built")
        check(new)
        crash_point("checked")
        exchange(new, live)
    except Exception:
        shutil.rmtree(new, ignore_errors=True)  # never live: the switch did not happen
        raise
    fsync_dir(live.parent)
    crash_point("exchanged")
    # ``new`` holds the old state now; a kill while it goes leaves it to the next switch.
    shutil.rmtree(new, ignore_errors=True)


# -- a CA-issued certificate's directory --------------------------------------------------------


def switch_directory(live: Path, source: Path, files: Sequence[str] = CA_FILES) -> str:
    """Switch ``live`` to the files of ``source`` (its next key's directory), keeping each live
    file's owner, group and mode; what it did, in a few words."""
    if all(_same(live / name, source / name) for name in files):
        drop_leftover(live)
        return "switched already"
    key, certs = files[0], [n for n in files if n in ("cert.pem", "fullchain.pem")]
    check_pair(source / key, [source / n for n in certs])
    data = {name: (source / name).read_bytes() for name in files}

    def build(new: Path) -> None:
        for name in files:
            like = os.stat(live / name) if (live / name).exists() else os.stat(source / name)
            (new / name).unlink(missing_ok=True)
            owner = (like.st_uid, like.st_gid)
            create(new / name, data[name], stat.S_IMODE(like.st_mode), owner)

    swap_in(live, build, lambda new: check_pair(new / key, [new / n for n in certs]))
    return "switched"


def _same(a: Path, b: Path) -> bool:
    try:
        return a.read_bytes() == b.read_bytes()
    except FileNotFoundError:
        return False


# -- a certbot lineage ---------------------------------------------------------------------------


@contextlib.contextmanager
def certbot_lock(config_dir: Path) -> Iterator[None]:
    """certbot's own lock on its configuration directory (``.certbot.lock``, taken and
    released as certbot does): no certbot run changes a lineage meanwhile."""
    path = config_dir / ".certbot.lock"
    deadline = time.monotonic() + CERTBOT_LOCK_WAIT
    while True:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise SwitchError(f"cannot lock {path}: {exc.strerror}") from None
            if time.monotonic() > deadline:
                raise SwitchError(f"certbot is running (it holds {path}); try again") from None
            time.sleep(0.5)
            continue
        if _is(fd, path):
            break
        os.close(fd)  # its holder removed the file meanwhile: lock the one there now
    try:
        yield
    finally:
        try:
            os.remove(path)
        finally:
            os.close(fd)


def _is(fd: int, path: Path) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


def switch_lineage(live: Path, source: Path) -> str:
    """Make lineage ``source``'s files (``live/<name>-next``) the newest generation of the
    lineage of ``live`` (``live/<name>``) and switch its links to them in one step."""
    want = {}
    for kind in LINEAGE_KINDS:
        try:
            want[kind] = (source / f"{kind}.pem").read_bytes()
        except OSError as exc:
            raise SwitchError(f"{source / f'{kind}.pem'}: {exc.strerror}") from None
    check_pair(source / "privkey.pem", [source / "cert.pem", source / "fullchain.pem"])
    with certbot_lock(live.parent.parent):
        if all(_same(live / f"{kind}.pem", source / f"{kind}.pem") for kind in LINEAGE_KINDS):
            drop_leftover(live)
            return "switched already"
        links = {}
        for kind in LINEAGE_KINDS:
            link = live / f"{kind}.pem"
            if not link.is_symlink():
                raise SwitchError(f"{link} is not a link into the lineage's archive")
            links[kind] = os.readlink(link)
        archive = (live / links["cert"]).parent
        version = _generation(archive, want)
        for kind in LINEAGE_KINDS:
            target = archive / f"{kind}{version}.pem"
            if not _same(target, source / f"{kind}.pem"):
                _install(target, want[kind], os.stat(live / f"{kind}.pem"))
            crash_point(f"archived-{kind}")

        def build(new: Path) -> None:
            for kind in LINEAGE_KINDS:
                link = new / f"{kind}.pem"
                owner = os.lstat(link)
                link.unlink()
                os.symlink(os.path.join(os.path.dirname(links[kind]), f"{kind}{version}.pem"), link)
                os.lchown(link, owner.st_uid, owner.st_gid)

        def check(new: Path) -> None:
            check_pair(new / "privkey.pem", [new / "cert.pem", new / "fullchain.pem"])

        # certbot's previous_*.pem links (an update of its own, interrupted) would bring the
        # old links back the next time certbot reads the lineage.
        swap_in(live, build, check, skip=lambda name: name.startswith("previous_"))
    return f"switched (archive generation {version})"


def _generation(archive: Path, want: dict[str, bytes]) -> int:
    """The archive generation the next files go to: the newest one when it holds nothing but
    them (a killed switch wrote it), else a new one after every file of every generation."""
    versions = [int(m.group(2)) for n in os.listdir(archive) if (m := _VERSIONED.match(n))]
    newest = max(versions, default=0)
    present = [k for k in LINEAGE_KINDS if (archive / f"{k}{newest}.pem").exists()]
    if present and all((archive / f"{k}{newest}.pem").read_bytes() == want[k] for k in present):
        return newest
    return newest + 1


# -- run alone (pkinfra.install.switch_command) ----------------------------------------------


def main(argv: Sequence[str]) -> int:
    if len(argv) != 3 or argv[0] != "directory":
        print("usage: switch.py directory LIVE SOURCE", file=sys.stderr)
        return 2
    os.umask(0o077)
    live, source = Path(argv[1]), Path(argv[2])
    try:
        done = switch_directory(live, source)
    except (SwitchError, OSError) as exc:
        print(f"pkinfra switch {live}: {exc}", file=sys.stderr)
        return 1
    print(f"pkinfra switch {live}: {done}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
