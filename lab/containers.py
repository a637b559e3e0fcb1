"""The lab network and containers: create, start, inspect, fix up and remove them.

Managed hosts (`SSH_ROLES`) run systemd as PID 1, as production hosts do; it works without
`--privileged` given tmpfs on /run and /run/lock and the host's cgroups read-only. The lab-only
infrastructure runs `sleep infinity` under Docker's init (so daemons started through `docker exec`
are reaped). Every container is attached only to the internal network with a static address.
What Docker resets when a container (re)starts, `/etc/resolv.conf` above all, is put right by
`prepare` on every `lab up`.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Final

from docker.errors import NotFound
from docker.types import IPAMConfig, IPAMPool

from lab.engine import LabError, docker_step
from lab.topology import (
    CONTAINER_PREFIX,
    GATEWAY,
    HOSTS,
    LABEL_IMAGE,
    LABEL_LAB,
    LABEL_ROLE,
    LABEL_SPEC,
    NETWORK,
    SSH_ROLES,
    SSH_USER,
    SUBNET,
    UNITS,
    container_name,
    hostname,
    resolv_conf,
)

#: The command of lab-only infrastructure containers (no systemd: daemons started by hand).
COMMAND: Final = ["sleep", "infinity"]
#: The command of managed hosts: systemd, stopped by SIGRTMIN+3 (its orderly shutdown).
SYSTEMD_COMMAND: Final = ["/sbin/init"]
SYSTEMD_STOP_SIGNAL: Final = "SIGRTMIN+3"
SYSTEMD_TMPFS: Final = {"/run": "rw,exec,mode=755", "/run/lock": "rw,mode=1777"}
SYSTEMD_BINDS: Final = ["/sys/fs/cgroup:/sys/fs/cgroup:ro"]


def command_of(role: str) -> list[str]:
    """What a role's container runs as PID 1 (Docker's init in front of `sleep` otherwise)."""
    return SYSTEMD_COMMAND if role in SSH_ROLES else COMMAND


# One `docker exec` per container and `lab up`; it only changes what is not right already and
# prints one word per change. The snakeoil pair was deleted from the image: each container makes
# its own. $1 = resolv.conf content, $2 = authorized key ("" for hosts without sshd), $3 = the
# SSH user, $4 = the units the site's admin runs on this host (space-separated).
_PREPARE_SCRIPT: Final = """\
set -eu
if ! printf '%s' "$1" | cmp -s - /etc/resolv.conf; then
    printf '%s' "$1" >/etc/resolv.conf
    echo resolv.conf
fi
if [ -n "$2" ]; then
    # systemd is PID 1 here: wait (bounded: 2 minutes) until it has finished starting up. Its
    # boot empties /tmp (tmpfiles on Debian 12, a tmpfs on 13), so nothing may use /tmp before
    # that. Right after a start systemctl cannot even reach it (no state printed): wait then too.
    for _ in $(seq 1 600); do
        state=$(systemctl is-system-running 2>/dev/null || true)
        case "$state" in initializing|starting|"") sleep 0.2 ;; *) break ;; esac
    done
fi
if [ ! -s /etc/ssl/private/ssl-cert-snakeoil.key ]; then
    # make-ssl-cert talks through debconf: keep its chatter unless it fails. Its scratch files
    # go to a private directory, never to a /tmp that something else may clean.
    scratch=$(mktemp -d /root/.pkinfra-lab-XXXXXX)
    out=$(TMPDIR="$scratch" DEBIAN_FRONTEND=noninteractive make-ssl-cert \\
        generate-default-snakeoil --force-overwrite 2>&1) \\
        || { rm -rf "$scratch"; printf '%s\\n' "$out" >&2; exit 1; }
    rm -rf "$scratch"
    echo snakeoil
fi
[ -n "$2" ] || exit 0
if [ ! -s /etc/ssh/ssh_host_ed25519_key ]; then
    ssh-keygen -A >/dev/null
    echo host-keys
fi
home=$(getent passwd "$3" | cut -d: -f6)
umask 077
mkdir -p "$home/.ssh"
if ! printf '%s\\n' "$2" | cmp -s - "$home/.ssh/authorized_keys" 2>/dev/null; then
    printf '%s\\n' "$2" >"$home/.ssh/authorized_keys"
    echo authorized_keys
fi
chown -R "$3:$3" "$home/.ssh"
chmod 0700 "$home/.ssh"
chmod 0600 "$home/.ssh/authorized_keys"
for unit in ssh $4; do
    if ! systemctl is-enabled --quiet "$unit" 2>/dev/null; then
        systemctl enable --quiet "$unit" || { echo "cannot enable $unit" >&2; exit 1; }
        echo "enable-$unit"
    fi
    if ! systemctl is-active --quiet "$unit"; then
        systemctl reset-failed "$unit" 2>/dev/null || true
        systemctl start "$unit" || { systemctl status --no-pager "$unit" >&2 || true; exit 1; }
        echo "start-$unit"
    fi
done
printf 'host-key %s\\n' "$(cat /etc/ssh/ssh_host_ed25519_key.pub)"
"""


@dataclass(frozen=True)
class Prepared:
    """What `prepare` changed in one container, and its SSH host key if it runs sshd."""

    changes: tuple[str, ...]
    host_key: str | None


def container_spec(role: str, image_tag: str) -> str:
    """A hash of everything a role's container is created with; a change means recreate."""
    spec = {
        "image": image_tag,
        "command": command_of(role),
        "hostname": hostname(role),
        "network": NETWORK,
        "address": HOSTS[role],
        "init": role not in SSH_ROLES,
        "systemd": role in SSH_ROLES,
    }
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


# --- network ---------------------------------------------------------------------------------


def get_network(client: Any) -> Any | None:
    """The lab network, or None if it does not exist."""
    with docker_step(f"looking up network {NETWORK}"):
        try:
            return client.networks.get(NETWORK)
        except NotFound:
            return None


def network_problem(network: Any) -> str | None:
    """Why an existing network named `NETWORK` is not the lab's, or None if it is."""
    attrs = network.attrs
    if (attrs.get("Labels") or {}).get(LABEL_LAB) != "1":
        return f"network {NETWORK} exists but was not made by the lab (no {LABEL_LAB} label)"
    if not attrs.get("Internal"):
        return f"network {NETWORK} is not internal"
    configs = (attrs.get("IPAM") or {}).get("Config") or []
    if not any(c.get("Subnet") == SUBNET and c.get("Gateway") == GATEWAY for c in configs):
        return f"network {NETWORK} does not have subnet {SUBNET} with gateway {GATEWAY}"
    return None


def ensure_network(client: Any) -> tuple[Any, bool]:
    """The lab network, created if missing; the flag says whether it was created."""
    network = get_network(client)
    if network is not None:
        problem = network_problem(network)
        if problem:
            raise LabError(f"{problem}; remove it (`python -m lab down` or `docker network rm`)")
        return network, False
    with docker_step(f"creating network {NETWORK} ({SUBNET})"):
        ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=SUBNET, gateway=GATEWAY)])
        network = client.networks.create(
            NETWORK,
            driver="bridge",
            internal=True,
            ipam=ipam,
            labels={LABEL_LAB: "1"},
            check_duplicate=True,
        )
    return network, True


def remove_network(client: Any) -> bool:
    """Remove the lab network if it exists and is the lab's; return whether it was removed."""
    network = get_network(client)
    if network is None:
        return False
    if (network.attrs.get("Labels") or {}).get(LABEL_LAB) != "1":
        raise LabError(f"network {NETWORK} was not made by the lab; not removing it")
    with docker_step(f"removing network {NETWORK}"):
        network.remove()
    return True


# --- containers ------------------------------------------------------------------------------


def lab_containers(client: Any) -> dict[str, Any]:
    """All containers (any state) carrying the lab label, by name."""
    with docker_step("listing lab containers"):
        found = client.containers.list(all=True, filters={"label": f"{LABEL_LAB}=1"})
    return {c.name: c for c in found}


def get_container(client: Any, name: str) -> Any | None:
    """A container by name (labelled or not), or None."""
    with docker_step(f"looking up container {name}"):
        try:
            return client.containers.get(name)
        except NotFound:
            return None


def networks_of(container: Any) -> dict[str, str]:
    """network name -> IPv4 address of a container (from its last inspect)."""
    networks = (container.attrs.get("NetworkSettings") or {}).get("Networks") or {}
    result: dict[str, str] = {}
    for name, endpoint in networks.items():
        endpoint = endpoint or {}
        configured = (endpoint.get("IPAMConfig") or {}).get("IPv4Address")
        result[name] = endpoint.get("IPAddress") or configured or ""
    return result


def stale_reason(container: Any, role: str, image_tag: str, image_digest: str) -> str | None:
    """Why an existing container must be recreated, or None if it can be kept."""
    labels = container.labels or {}
    if labels.get(LABEL_LAB) != "1":
        return "not made by the lab"
    if labels.get(LABEL_IMAGE) != image_digest:
        return f"image {labels.get(LABEL_IMAGE)} is not the current {image_digest}"
    if labels.get(LABEL_SPEC) != container_spec(role, image_tag):
        return "created with another configuration"
    networks = networks_of(container)
    if set(networks) != {NETWORK}:
        return f"attached to {sorted(networks)}, not only {NETWORK}"
    # A stopped container has no IPAddress yet; the configured one is what it will get.
    if networks[NETWORK] not in ("", HOSTS[role]):
        return f"address {networks[NETWORK]} is not {HOSTS[role]}"
    return None


def create_container(client: Any, role: str, image_tag: str, image_digest: str) -> Any:
    """Create and start the container of `role`, attached only to the lab network."""
    name = container_name(role)
    api = client.api
    with docker_step(f"creating container {name}"):
        if role in SSH_ROLES:
            host_config = api.create_host_config(
                network_mode=NETWORK, tmpfs=SYSTEMD_TMPFS, binds=SYSTEMD_BINDS
            )
        else:
            host_config = api.create_host_config(init=True, network_mode=NETWORK)
        networking_config = api.create_networking_config(
            {NETWORK: api.create_endpoint_config(ipv4_address=HOSTS[role])}
        )
        created = api.create_container(
            image_tag,
            command=command_of(role),
            stop_signal=SYSTEMD_STOP_SIGNAL if role in SSH_ROLES else None,
            name=name,
            hostname=hostname(role),
            labels={
                LABEL_LAB: "1",
                LABEL_ROLE: role,
                LABEL_IMAGE: image_digest,
                LABEL_SPEC: container_spec(role, image_tag),
            },
            host_config=host_config,
            networking_config=networking_config,
            detach=True,
        )
        api.start(created["Id"])
        container = client.containers.get(created["Id"])
    if set(networks_of(container)) != {NETWORK}:
        raise LabError(f"container {name} is attached to {sorted(networks_of(container))}")
    return container


def start_container(container: Any) -> None:
    """Start (or unpause) a stopped container and refresh its attributes."""
    with docker_step(f"starting container {container.name}"):
        if container.status == "paused":
            container.unpause()
        else:
            container.start()
        container.reload()


def remove_container(container: Any) -> None:
    """Remove a container and its anonymous volumes, whatever its state."""
    with docker_step(f"removing container {container.name}"), suppress(NotFound):
        container.remove(force=True, v=True)


def exec_checked(container: Any, command: list[str], what: str) -> str:
    """Run a command in a running container; its output, or LabError if it failed."""
    with docker_step(f"{what} in {container.name}"):
        code, output = container.exec_run(command, user="root")
    text = (output or b"").decode("utf-8", errors="replace")
    if code != 0:
        detail = " ".join(text.split())[-400:]
        raise LabError(f"{what} in {container.name} failed (exit {code}): {detail}")
    return text


def prepare(container: Any, role: str, authorized_key: str | None) -> Prepared:
    """Put resolv.conf, the snakeoil pair and (for SSH hosts) the SSH user, sshd and the role's
    daemons right in a running container."""
    units = " ".join(UNITS.get(role, ()))
    output = exec_checked(
        container,
        ["sh", "-c", _PREPARE_SCRIPT, "sh", resolv_conf(), authorized_key or "", SSH_USER, units],
        "preparing the container",
    )
    changes: list[str] = []
    host_key: str | None = None
    for line in output.splitlines():
        if line.startswith("host-key "):
            host_key = line.removeprefix("host-key ").strip()
        elif line.strip():
            changes.append(line.strip())
    if authorized_key and not host_key:
        raise LabError(f"no SSH host key read from {container.name}")
    return Prepared(tuple(changes), host_key)


def is_lab_name(name: str) -> bool:
    """Whether a container name belongs to the lab's naming scheme."""
    return name.startswith(CONTAINER_PREFIX)
