"""The host's own system: Debian packages pkinfra needs, and pkinfra's host agents.

A site's hosts may have package lists that are missing (a fresh image, ``apt-get clean`` of
lists) or stale: installing then fails with "Unable to locate package". Updating the lists on
every run would cost each run a trip to the mirror, so they are updated only when a package is
actually missing.

The host agents (``pkinfra.install``: the ``pkinfra.agent`` package and what it imports) are
installed once per run by the first deploy that needs them (``agent_once``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import apt

from operations.context import announce
from operations.facts import AgentFiles
from operations.util import INLINE_MAX, inline_writes, install_staged, new_name, q, upload_atomic
from pkinfra import install
from pkinfra.agent import paths


@operation()
def packages(packages: Sequence[str]):
    """
    Ensure Debian packages are installed; the package lists are updated first only when one
    of them is missing.

    + packages: Debian package names

    **Example:**

    .. code:: python

        system.packages(name="BIND", packages=["bind9", "bind9-utils"])
    """
    installed = host.get_fact(DebPackages) or {}
    missing = [name for name in packages if name not in installed]
    if not missing:
        host.noop(f"packages installed: {', '.join(packages)}")
        return
    announce(f"packages missing: {', '.join(missing)}; updating the package lists first")
    yield from apt.update._inner()
    yield from apt.packages._inner(packages=missing, update=False)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def agent_changes() -> tuple[list[str], list[str]]:
    """The agent files to write and the stale ones to remove (paths under ``LIB_DIR``): what
    ``agent`` does on this host now (also for ``services.delivered``, which plans after it)."""
    have = host.get_fact(AgentFiles, directory=paths.LIB_DIR)
    wanted = install.agent_files()
    write = [path for path, data in wanted.items() if have.get(path) != _sha(data)]
    # Only inside pkinfra's package tree: a module left there from an older version is dropped.
    stale = [path for path in have if path not in wanted and path.startswith("pkinfra/")]
    return write, sorted(stale)


@operation()
def agent():
    """
    Ensure pkinfra's host agents are installed: the ``pkinfra.agent`` package and every pkinfra
    module it imports under ``/usr/local/lib/pkinfra``, and the delivery agent's entry point.

    **Example:**

    .. code:: python

        system.agent(name="pkinfra host agents")
    """
    write, stale = agent_changes()
    if not write and not stale:
        host.noop(f"host agents current in {paths.LIB_DIR}")
        return
    announce(f"host agents: {len(write)} file(s) to write, {len(stale)} to remove")
    files = install.agent_files()
    carried, uploads = carried_batches({path: files[path] for path in write})
    for batch in carried:
        # The files travel inside the command (a few commands instead of three per file), each
        # written beside its place and renamed over it once every file of the batch is written.
        targets = {path: f"{paths.LIB_DIR}/{path}" for path in batch}
        writes = inline_writes({new_name(targets[p]): data for p, data in batch.items()})
        assert writes is not None  # carried_batches checked each file and the batch's size
        dirs = " ".join(q(d) for d in sorted({t.rpartition("/")[0] for t in targets.values()}))
        installs = " && ".join(
            install_staged(new_name(target), target, _agent_mode(path), "root", "root")
            for path, target in targets.items()
        )
        yield f"mkdir -p {dirs} && {writes}{installs}"
    for path in uploads:
        target = f"{paths.LIB_DIR}/{path}"
        yield from upload_atomic(target, files[path], _agent_mode(path), "root", "root")
    if stale:
        yield "rm -f " + " ".join(q(f"{paths.LIB_DIR}/{path}") for path in stale)


def _agent_mode(path: str) -> str:
    """Entry points are programs; modules are only read."""
    return "0644" if path.startswith("pkinfra/") else "0755"


def carried_batches(
    files: dict[str, bytes],
) -> tuple[list[dict[str, bytes]], list[str]]:
    """``files`` (path -> content) in batches that each fit inside one command
    (``inline_writes``: plain text, ``INLINE_MAX`` bytes at most together), in their order, and
    the paths of the files that cannot travel so (to upload)."""
    batches: list[dict[str, bytes]] = []
    uploads: list[str] = []
    batch: dict[str, bytes] = {}
    for path, data in files.items():
        if inline_writes({path: data}) is None:
            uploads.append(path)
            continue
        if batch and sum(map(len, batch.values())) + len(data) > INLINE_MAX:
            batches.append(batch)
            batch = {}
        batch[path] = data
    if batch:
        batches.append(batch)
    return batches, uploads


_installed: set[tuple[int, str]] = set()


def agent_once() -> Any:
    """``agent`` for the current host, once per run: every deploy that needs the agents calls
    this, so a deploy run alone still installs them and a whole site does it once."""
    key = (id(host.state), host.name)
    if key in _installed:
        return None
    _installed.add(key)
    return agent(name="pkinfra host agents")
