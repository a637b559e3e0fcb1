"""Debian's system trust store brought up to date in one process, as ``update-ca-certificates``
would leave it.

Debian's ``update-ca-certificates`` (a shell script) starts three or four programs for each of
the ~150 certificates it lists, on every call: about a CPU-second a host. On a site's own
machines that is noise; on a controller that runs many hosts as containers on a few cores (CI,
the bench) it is most of a first run. This program does the same work with the host's python3
and one ``openssl rehash``:

1. with ``--fresh``, the links in ``/etc/ssl/certs`` into the certificate directories go, then
   every link whose target is gone;
2. each ``!name`` of ``/etc/ca-certificates.conf`` loses its link;
3. each other name of that file (whose file exists), then each ``*.crt`` below
   ``/usr/local/share/ca-certificates`` (sorted paths, links followed) gets its link
   ``<name>.pem`` (spaces and commas made ``_``, parentheses ``=``) and joins the bundle
   ``ca-certificates.crt`` (each file ending in a newline);
4. when a link came or went: links whose target is gone go, and ``openssl rehash`` remakes the
   hash links;
5. the bundle is replaced (mode 0644, by rename) when its content differs.

It is used only where that is exactly what the host's script does: the script's SHA-256 is one
of ``VERIFIED_SCRIPTS`` (tests/unit/test_truststore.py runs the controller's script and this
program on the same trees and compares every link and byte), there are no hooks in
``/etc/ca-certificates/update.d`` (a Java keystore's, say), no SELinux ``restorecon`` and a
configuration file that is not empty. Anywhere else it runs ``update-ca-certificates`` itself.

Standard library only: the controller feeds it, with the modules it imports, to a host's
``python3 -I -`` (``pkinfra.install.truststore_command``); a host without python3 runs
``update-ca-certificates``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pkinfra.agent.files import write_atomic

#: SHA-256 of the ``update-ca-certificates`` scripts this program reproduces: ca-certificates
#: 20230311 (Debian 12's first) and 20250419 (Debian 12's update and Debian 13's). Their
#: differences (``read -r``, quoting, ``--sysroot``) do not change the result for file names
#: without backslashes.
VERIFIED_SCRIPTS = frozenset(
    {
        "395364bffc7ce85ccbe2de71215f9c6c85c024af3bbd991c75a01c2d2aa3080a",
        "2cb06c85b5f01c4f6b72c3983d9f66d44aac0a7ac997ee55e7e429aedbc3934d",
    }
)
SCRIPT = "/usr/sbin/update-ca-certificates"
RESTORECON = "/sbin/restorecon"
BUNDLE = "ca-certificates.crt"


@dataclass(frozen=True)
class Layout:
    """Where the trust store's parts are (``update-ca-certificates``' options of the same
    names); the defaults are Debian's."""

    certsconf: Path = Path("/etc/ca-certificates.conf")
    certsdir: Path = Path("/usr/share/ca-certificates")
    localcertsdir: Path = Path("/usr/local/share/ca-certificates")
    etccertsdir: Path = Path("/etc/ssl/certs")
    hooksdir: Path = Path("/etc/ca-certificates/update.d")


@dataclass
class Result:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    bundle_changed: bool = False

    def summary(self) -> str:
        bundle = "bundle rewritten" if self.bundle_changed else "bundle unchanged"
        return f"{len(self.added)} added, {len(self.removed)} removed; {bundle}"


def why_not(layout: Layout, script: Path = Path(SCRIPT)) -> str:
    """'' when ``update`` does here exactly what the host's script would do, else why not."""
    try:
        digest = hashlib.sha256(script.read_bytes()).hexdigest()
    except OSError as exc:
        return f"cannot read {script}: {exc.strerror}"
    if digest not in VERIFIED_SCRIPTS:
        return f"{script} is a version this program was not checked against"
    try:
        if layout.certsconf.stat().st_size == 0:
            return f"{layout.certsconf} is empty (the script then rebuilds from scratch)"
    except OSError:
        return f"no {layout.certsconf}"
    if layout.hooksdir.is_dir() and any(layout.hooksdir.iterdir()):
        return f"{layout.hooksdir} has hooks"
    if os.path.exists(RESTORECON):
        return "SELinux labels (restorecon)"
    return ""


def _links(directory: Path) -> list[Path]:
    """Every symbolic link below ``directory`` (``find DIR -type l``)."""
    found = []
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = Path(root, name)
            if path.is_symlink():
                found.append(path)
    return found


def _remove_dangling(directory: Path) -> None:
    for link in _links(directory):
        if not link.exists():
            link.unlink()


def _basename(cert: str) -> str:
    """``basename CERT .crt``."""
    base = os.path.basename(cert)
    return base[: -len(".crt")] if base.endswith(".crt") and base != ".crt" else base


def _pem_name(cert: str) -> str:
    """The link's name in /etc/ssl/certs (the script's ``sed``)."""
    return (
        _basename(cert).replace(" ", "_").replace("(", "=").replace(")", "=").replace(",", "_")
        + ".pem"
    )


def _conf_lines(conf: Path) -> list[str]:
    """The configuration's non-empty lines (``sed -e '/^$/d'``)."""
    text = conf.read_bytes().decode(errors="surrogateescape")
    return [line for line in text.split("\n") if line]


def _local_certs(directory: Path) -> list[str]:
    """``find -L DIR -type f -name '*.crt' | sort``: paths as find prints them."""
    if not directory.is_dir():
        return []
    found = []
    for root, _dirs, files in os.walk(directory, followlinks=True):
        for name in files:
            path = os.path.join(root, name)
            if name.endswith(".crt") and os.path.isfile(path):
                found.append(path)
    return sorted(found, key=os.fsencode)


def update(layout: Layout = Layout(), fresh: bool = False) -> Result:
    """Bring the trust store up to date (the module's steps 1-5)."""
    etc, certsdir, local = layout.etccertsdir, str(layout.certsdir), str(layout.localcertsdir)
    result = Result()
    if fresh:
        for link in _links(etc):
            if os.readlink(link).startswith((certsdir, local)):
                link.unlink()
        _remove_dangling(etc)
    lines = _conf_lines(layout.certsconf)
    for line in lines:
        if line.startswith("!"):
            pem = etc / (_basename(line[1:].strip(" \t")) + ".pem")
            if pem.is_symlink():
                pem.unlink()
                result.removed.append(str(pem))
    # ``while read -r crt`` trims blanks; a name whose file is missing is skipped (a warning).
    names = [line.strip(" \t") for line in lines if not line.startswith(("#", "!"))]
    certs = [f"{certsdir}/{name}" for name in names if os.path.isfile(f"{certsdir}/{name}")]
    bundle = bytearray()
    for cert in [*certs, *_local_certs(layout.localcertsdir)]:
        pem = etc / _pem_name(cert)
        if not pem.exists() or not pem.is_symlink() or os.readlink(pem) != cert:
            if pem.is_symlink() or pem.exists():  # ``ln -sf``
                pem.unlink()
            pem.symlink_to(cert)
            result.added.append(str(pem))
        data = Path(cert).read_bytes()
        bundle += data if not data or data.endswith(b"\n") else data + b"\n"
    if result.added or result.removed:
        _remove_dangling(etc)
        subprocess.run(["openssl", "rehash", "."], cwd=etc, check=True, capture_output=True)
    target = etc / BUNDLE
    try:
        same = target.read_bytes() == bundle and (target.stat().st_mode & 0o7777) == 0o644
    except OSError:
        same = False
    if bundle and not same:
        write_atomic(target, bytes(bundle), 0o644)
        result.bundle_changed = True
    return result


# -- on a host ----------------------------------------------------------------------------------


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] != "update" or not set(argv[1:]) <= {"--fresh"}:
        print("usage: truststore.py update [--fresh]", file=sys.stderr)
        return 2
    fresh = "--fresh" in argv
    layout = Layout()
    if why_not(layout):
        command = [SCRIPT, *(["--fresh"] if fresh else [])]
        done = subprocess.run(command, stdout=subprocess.DEVNULL, check=False)
        return done.returncode
    try:
        result = update(layout, fresh=fresh)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"pkinfra trust store: {exc}", file=sys.stderr)
        return 1
    print(f"pkinfra trust store: {result.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
