"""The lab's fixed shape: network, addresses, names, labels and controller-side paths.

Everything else in `lab/` (and the lab tests) reads these constants; nothing else hard-codes an
address or a container name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

#: The repository root (the parent of the `lab/` package).
REPO_ROOT: Final = Path(__file__).resolve().parent.parent
#: Controller-side lab state (gitignored): SSH keypair, known_hosts, build logs, lock file.
LAB_DIR: Final = REPO_ROOT / ".lab"
SSH_DIR: Final = LAB_DIR / "ssh"
#: The controller's private key for SSH hosts in the lab (public key: `SSH_KEY` + ".pub").
SSH_KEY: Final = SSH_DIR / "id_ed25519"
SSH_PUBLIC_KEY: Final = SSH_DIR / "id_ed25519.pub"
#: Host keys of the lab's SSH hosts, rewritten by every `lab up`.
KNOWN_HOSTS: Final = SSH_DIR / "known_hosts"
LOCK_FILE: Final = LAB_DIR / "lock"

#: The one Docker network: internal (no route out), fixed subnet, static addresses.
NETWORK: Final = "pkinfra-lab"
SUBNET: Final = "172.29.53.0/24"
GATEWAY: Final = "172.29.53.1"

DOMAIN: Final = "example.test"
CONTAINER_PREFIX: Final = "pkinfra-"

#: role -> static IPv4 address on `NETWORK`. Container `pkinfra-<role>`, host `<role>.DOMAIN`.
HOSTS: Final[dict[str, str]] = {
    "ns1": "172.29.53.10",
    "ns2": "172.29.53.11",
    "resolver": "172.29.53.53",
    "acme": "172.29.53.14",
    "web1": "172.29.53.20",
    "mx1": "172.29.53.25",
    "db1": "172.29.53.30",
    "mon1": "172.29.53.40",
}
#: The address every container's /etc/resolv.conf names (with `options trust-ad`).
RESOLVER: Final = HOSTS["resolver"]
#: Managed hosts, as on a production site: systemd as PID 1, sshd, reached by pyinfra over SSH
#: as `SSH_USER` with passwordless sudo. The other roles are lab-only infrastructure (the
#: validating resolver, the ACME server): plain containers reached with `@docker/`.
SSH_ROLES: Final = ("ns1", "ns2", "web1", "mx1", "db1", "mon1")
#: The non-root login on every SSH host; `sudo` without a password, as a site's admin sets up.
SSH_USER: Final = "ops"
#: The Debian release of each host: most run Debian 13 (trixie, the current stable); db1 and
#: ns2 stay on Debian 12 (bookworm, oldstable, still supported), so CI proves both, a service
#: host and a BIND secondary of a 9.20 primary among them. Lab infrastructure stays on 12.
SUITES: Final[dict[str, str]] = {
    "ns1": "trixie",
    "ns2": "bookworm",
    "resolver": "bookworm",
    "acme": "bookworm",
    "web1": "trixie",
    "mx1": "trixie",
    "db1": "bookworm",
    "mon1": "trixie",
}
#: The daemons the site's admin runs on each managed host (enabled at `lab up`, as Debian's
#: packages would have them); the image has them all installed and disabled.
UNITS: Final[dict[str, tuple[str, ...]]] = {
    "ns1": ("named",),
    "ns2": ("named",),
    "web1": ("nginx",),
    "mx1": ("postfix",),
    "db1": ("postgresql",),
    "mon1": (),
}

#: Labels on everything `lab up` makes; `lab down` removes what carries LABEL_LAB.
LABEL_LAB: Final = "pkinfra.lab"
LABEL_ROLE: Final = "pkinfra.lab.role"
LABEL_IMAGE: Final = "pkinfra.lab.image"
LABEL_SPEC: Final = "pkinfra.lab.spec"

#: Image repositories; the tag is a hash of each image's inputs.
BASE_REPOSITORY: Final = "pkinfra-base"
LAB_REPOSITORY: Final = "pkinfra-lab"


def container_name(role: str) -> str:
    """The Docker container name of a role, e.g. `pkinfra-ns1`."""
    return f"{CONTAINER_PREFIX}{role}"


def hostname(role: str) -> str:
    """The fully qualified host name of a role, e.g. `ns1.example.test`."""
    return f"{role}.{DOMAIN}"


def resolv_conf() -> str:
    """The exact /etc/resolv.conf of every lab container."""
    return f"nameserver {RESOLVER}\noptions trust-ad\n"


def pyinfra_name(role: str) -> str:
    """The host's name in the lab inventory: its FQDN for a managed (SSH) host, else
    `@docker/<container>`."""
    return hostname(role) if role in SSH_ROLES else f"@docker/{container_name(role)}"
