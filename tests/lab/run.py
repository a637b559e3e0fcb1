"""How the lab tests run things: pyinfra on the controller, commands in the lab's containers.

One place for the command lines, so a test module says only what differs: its deploy files,
``--limit`` names, inventory, timeout, and whether it checks the result.

pyinfra runs from the repository root with the virtualenv's ``pyinfra``; the command line is
``pyinfra [-y] OPTIONS INVENTORY ARGS``. A dry run must not say ``-y`` (pyinfra then skips the
change detection it would print), so ``yes`` is the caller's to set.

Container commands are ``docker exec [-i] [-w DIR] [-e NAME=value ...] CONTAINER ARGV``, output
captured as text; ``sh`` wraps one shell command line in ``sh -c``. Their timeout is long enough
for a certbot renewal or a rollover step; a module whose commands must answer sooner binds its
own (``sh = partial(lab_run.sh, timeout=60)``).

**Example:**

.. code:: python

    out = pyinfra_output("deploys/pki.py", *limits("db"), timeout=600)
    dry = pyinfra("deploys/dns.py", "--dry", yes=False)
    serial = sh("pkinfra-db1", "openssl x509 -in cert.pem -noout -serial").stdout
    pid = docker("pkinfra-ns1", "pidof named")  # checked: raises if the command fails
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).parent / "pyinfra"
INVENTORY = ROOT / "inventory.py"
#: certbot's environment as its timer (or cron) gives it: nothing of the caller's.
CLEAN_ENV = ("env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin")


# -- pyinfra -----------------------------------------------------------------------------------


def limits(*names: str) -> list[str]:
    """``--limit NAME`` for each group or host name."""
    return [arg for name in names for arg in ("--limit", name)]


def pyinfra_command(
    *args: str,
    inventory: Path | str = INVENTORY,
    options: Sequence[str] = (),
    yes: bool = True,
) -> list[str]:
    """The pyinfra command line: ``pyinfra [-y] options inventory args``.

    + args: deploy files, then ``--limit`` and other arguments, as given
    + inventory: the inventory file (a name relative to the repository root stays as given)
    + options: arguments before the inventory
    + yes: say ``-y``; ``False`` for a ``--dry`` run that must print its change detection
    """
    return [str(PYINFRA), *(["-y"] if yes else []), *options, str(inventory), *args]


def pyinfra(
    *args: str,
    inventory: Path | str = INVENTORY,
    options: Sequence[str] = (),
    yes: bool = True,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """One pyinfra run from the repository root (``pyinfra_command``), output captured; the
    caller reads the exit code."""
    return subprocess.run(
        pyinfra_command(*args, inventory=inventory, options=options, yes=yes),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def pyinfra_output(
    *args: str,
    inventory: Path | str = INVENTORY,
    options: Sequence[str] = (),
    yes: bool = True,
    timeout: float = 300,
    ok: bool = True,
    tail: int | None = None,
    matched: bool = False,
) -> str:
    """A pyinfra run (as ``pyinfra``) that must succeed, or with ``ok=False`` must fail: its
    stdout and stderr together.

    + tail: the assertion message is the output's last ``tail`` characters (all of it: None)
    + matched: also assert every ``--limit`` matched a host (pyinfra says "No host matches")
    """
    run = pyinfra(*args, inventory=inventory, options=options, yes=yes, timeout=timeout)
    out = run.stdout + run.stderr
    assert (run.returncode == 0) == ok, out if tail is None else out[-tail:]
    if matched:
        assert "No host matches" not in out, out[-3000:]
    return out


def limited_run(inventory: Path, deploys: str, groups: Sequence[str], *options: str) -> str:
    """pyinfra with the (space-separated) ``deploys`` limited to ``groups``, as the rollover and
    HA tests run it: it must succeed and every group match a host; its output."""
    return pyinfra_output(
        *deploys.split(),
        *limits(*groups),
        inventory=inventory,
        options=options,
        timeout=600,
        tail=6000,
        matched=True,
    )


def site_run(inventory: Path, *options: str) -> str:
    """``lab/site.py`` on the DNS servers and db1, as the CA-issued key rollover tests repeat
    it: a ``limited_run`` that must reach db1."""
    out = limited_run(inventory, "lab/site.py", ("dns", "db"), *options)
    assert "[db1.example.test]" in out, out[-3000:]
    return out


# -- lab containers ----------------------------------------------------------------------------


def docker_command(
    container: str,
    *argv: str,
    env: Sequence[str] = (),
    interactive: bool = False,
    workdir: str | None = None,
) -> list[str]:
    """``docker exec [-i] [-w workdir] [-e NAME=value ...] container argv``."""
    flags = [
        *(["-i"] if interactive else []),
        *(["-w", workdir] if workdir else []),
        *[arg for pair in env for arg in ("-e", pair)],
    ]
    return ["docker", "exec", *flags, container, *argv]


def docker_exec(
    container: str,
    *argv: str,
    stdin: str | None = None,
    env: Sequence[str] = (),
    interactive: bool = False,
    workdir: str | None = None,
    timeout: float = 300,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``argv`` run in ``container`` as root, output captured as text.

    + stdin: text for the command's standard input (implies ``-i``)
    + env: ``NAME=value`` pairs for the command's environment
    + interactive: ``-i`` even without ``stdin``
    + workdir: the command's working directory
    + check: raise ``CalledProcessError`` when the command fails
    """
    return subprocess.run(
        docker_command(
            container,
            *argv,
            env=env,
            interactive=interactive or stdin is not None,
            workdir=workdir,
        ),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def sh(
    container: str,
    command: str,
    *,
    stdin: str | None = None,
    env: Sequence[str] = (),
    interactive: bool = False,
    timeout: float = 300,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """The shell command line ``command`` (``sh -c``) in ``container``; arguments as for
    ``docker_exec``."""
    return docker_exec(
        container,
        "sh",
        "-c",
        command,
        stdin=stdin,
        env=env,
        interactive=interactive,
        timeout=timeout,
        check=check,
    )


def docker(container: str, command: str, *, timeout: float = 30) -> str:
    """The standard output of ``sh(container, command)``, which must succeed
    (``CalledProcessError`` otherwise)."""
    return sh(container, command, timeout=timeout, check=True).stdout


def certbot_renew(container: str, lineage: str, *env: str) -> subprocess.CompletedProcess[str]:
    """``certbot renew --force-renewal`` of ``lineage`` alone in a clean environment, as its
    timer runs it (``env``: NAME=value pairs added to it); the caller reads the result."""
    return docker_exec(
        container,
        *CLEAN_ENV,
        *env,
        "certbot",
        "renew",
        "--force-renewal",
        "--cert-name",
        lineage,
        timeout=300,
    )
