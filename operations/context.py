"""The validated inventory as seen from inside a deploy: the whole model and the current host."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import DeployError

from pkinfra.model import HostSpec, Inventory, active


def inventory() -> Inventory:
    """The whole inventory (all hosts, also under ``--limit``)."""
    try:
        return active()
    except RuntimeError as exc:
        raise DeployError(str(exc)) from None


def this_host() -> HostSpec:
    """The pkinfra description of the host pyinfra is working on."""
    spec = inventory().by_pyinfra_name(host.name)
    if spec is None:
        raise DeployError(f"{host.name}: not described in the pkinfra inventory (no 'fqdn')")
    return spec
