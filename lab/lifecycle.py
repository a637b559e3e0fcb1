"""`up`, `down` and `status`: bring the lab to its topology, remove it, or report on it.

`up` is idempotent and cheap on a lab that is already up: it creates what is missing, starts
what is stopped, recreates what was made from another image or configuration, and only then
fixes what Docker resets on each start (resolv.conf, sshd). `down` removes the labelled
containers and the network, never the images (they are the build cache).
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

from lab import containers, images, ssh
from lab.engine import LabError, connect, docker_step, say
from lab.topology import (
    HOSTS,
    KNOWN_HOSTS,
    LAB_DIR,
    LOCK_FILE,
    NETWORK,
    SSH_ROLES,
    container_name,
    hostname,
    resolv_conf,
)

# Read-only: prints one word per thing `lab up` would have to fix.
_CHECK_SCRIPT: Final = """\
printf '%s' "$1" | cmp -s - /etc/resolv.conf || echo resolv.conf
if [ "$2" = ssh ]; then pgrep -x sshd >/dev/null || echo sshd; fi
exit 0
"""


@dataclass(frozen=True)
class HostStatus:
    """One lab container as found: its state, address and what is wrong with it, if anything."""

    role: str
    name: str
    address: str
    state: str
    container_id: str | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        """Running, current and prepared."""
        return self.state == "running" and self.problem is None

    def line(self) -> str:
        """`name state address [problem]`, as `lab status` prints it."""
        text = f"{self.name:<17} {self.state:<8} {self.address}"
        return f"{text}  ({self.problem})" if self.problem else text


@dataclass(frozen=True)
class LabStatus:
    """The whole lab: the network's problem (None if fine) and every host."""

    network_problem: str | None
    hosts: tuple[HostStatus, ...]

    @property
    def ok(self) -> bool:
        """Whether the lab is fully up."""
        return self.network_problem is None and all(h.ok for h in self.hosts)

    def by_role(self) -> dict[str, HostStatus]:
        """role -> HostStatus."""
        return {h.role: h for h in self.hosts}


@contextmanager
def _locked() -> Iterator[None]:
    # Two `lab up` at once (two test sessions, a user and `make`) would race on the same names.
    LAB_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "w", encoding="ascii") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("waiting for another lab command to finish...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ensure_container(client: Any, role: str, found: Any | None, image: images.ImageSpec) -> Any:
    name = container_name(role)
    container = found if found is not None else containers.get_container(client, name)
    if container is not None:
        reason = containers.stale_reason(container, role, image.tag, image.digest)
        if reason == "not made by the lab":
            raise LabError(f"container {name} exists but was not made by the lab; remove it")
        if reason is None and container.status == "dead":
            reason = "dead"
        if reason is not None:
            say(f"recreating {name}: {reason}")
            containers.remove_container(container)
            container = None
    if container is None:
        say(f"creating {name} ({HOSTS[role]})")
        return containers.create_container(client, role, image.tag, image.digest)
    if container.status != "running":
        say(f"starting {name} (was {container.status})")
        containers.start_container(container)
        if container.status != "running":
            raise LabError(f"container {name} did not start (state {container.status})")
    return container


def _ensure_acme_server_ca() -> None:
    """The CA of the lab ACME server's TLS certificate (the inventory's ``acme.ca_bundle``):
    every host's deploy trusts it, so it exists before any deploy is planned."""
    from pkinfra.acme import AcmeError, ensure_server_ca

    bundle = LAB_DIR / "pebble-ca.pem"
    existed = bundle.exists()
    try:
        ensure_server_ca(bundle, [hostname("acme")])
    except (AcmeError, OSError, ValueError) as exc:
        raise LabError(f"the lab ACME server's CA {bundle}: {exc}") from None
    if not existed:
        say(f"made the lab ACME server's CA ({bundle})")


def build_images() -> list[str]:
    """Build the lab's images where missing (no container is made): their tags."""
    client = connect()
    with _locked():
        image_of = images.ensure_lab_images(client)
    return sorted({spec.tag for spec in image_of.values()})


def up() -> LabStatus:
    """Bring the lab up (building images if needed) and return its status; LabError if not."""
    started = time.monotonic()
    # The engine first: an unreachable one is one clear line, never a wait for another lab
    # command's lock.
    client = connect()
    with _locked():
        image_of = images.ensure_lab_images(client)
        public_key = ssh.ensure_keypair()
        _network, created = containers.ensure_network(client)
        if created:
            say(f"created network {NETWORK}")
        existing = containers.lab_containers(client)
        wanted = {container_name(role) for role in HOSTS}
        for name, stray in existing.items():
            if name not in wanted:
                say(f"removing {name} (not in the lab topology)")
                containers.remove_container(stray)
        host_keys: dict[str, str] = {}
        for role, address in HOSTS.items():
            container = _ensure_container(
                client, role, existing.get(container_name(role)), image_of[role]
            )
            prepared = containers.prepare(
                container, role, public_key if role in SSH_ROLES else None
            )
            if prepared.changes:
                say(f"{container.name}: set up {', '.join(prepared.changes)}")
            if prepared.host_key:
                host_keys[address] = prepared.host_key
        if ssh.write_known_hosts(host_keys):
            say(f"wrote {KNOWN_HOSTS}")
        for role in SSH_ROLES:
            ssh.wait_for_ssh(HOSTS[role])
        _ensure_acme_server_ca()
        result = _status(client, image_of)
    if not result.ok:
        broken = [h.line() for h in result.hosts if not h.ok]
        raise LabError(
            "the lab is not fully up after `up`: "
            + "; ".join(filter(None, [result.network_problem, *broken]))
        )
    say(f"up: {len(result.hosts)} containers running ({time.monotonic() - started:.1f} s)")
    return result


def down() -> None:
    """Remove the lab's containers and network (and its known_hosts); keep the images."""
    client = connect()
    with _locked():
        for name, container in sorted(containers.lab_containers(client).items()):
            say(f"removing {name}")
            containers.remove_container(container)
        if containers.remove_network(client):
            say(f"removed network {NETWORK}")
        KNOWN_HOSTS.unlink(missing_ok=True)


def status() -> LabStatus:
    """The lab as it is now (no changes made)."""
    client = connect()
    return _status(client, images.lab_specs())


def _unprepared(container: Any, role: str) -> str | None:
    with docker_step(f"checking {container.name}"):
        code, output = container.exec_run(
            ["sh", "-c", _CHECK_SCRIPT, "sh", resolv_conf(), "ssh" if role in SSH_ROLES else ""]
        )
    words = (output or b"").decode("utf-8", errors="replace").split()
    if code != 0:
        return f"check failed (exit {code})"
    return f"{', '.join(words)} not set up: run lab up" if words else None


def _status(client: Any, image_of: dict[str, images.ImageSpec]) -> LabStatus:
    network = containers.get_network(client)
    network_problem = (
        f"network {NETWORK} is missing" if network is None else containers.network_problem(network)
    )
    existing = containers.lab_containers(client)
    hosts: list[HostStatus] = []
    for role, address in HOSTS.items():
        name = container_name(role)
        container = existing.get(name)
        if container is None:
            hosts.append(HostStatus(role, name, address, "missing"))
            continue
        image = image_of[role]
        problem = containers.stale_reason(container, role, image.tag, image.digest)
        actual = containers.networks_of(container).get(NETWORK) or address
        if problem is None and container.status == "running":
            problem = _unprepared(container, role)
        hosts.append(HostStatus(role, name, actual, container.status, container.id, problem))
    return LabStatus(network_problem, tuple(hosts))
