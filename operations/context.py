"""The validated inventory as seen from inside a deploy: the whole model and the current host."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyinfra import host, logger
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


# Certificate operations of this run, per host, so that later operations (service delivery) can
# run when one of them changed something at execution time, which their facts could not show.
_certificate_ops: dict[str, list[Any]] = {}


def track_certificate_op(op: Any) -> Any:
    """Remember an operation that may change a certificate on the current host."""
    _certificate_ops.setdefault(host.name, []).append(op)
    return op


def certificate_changed() -> Callable[[], bool]:
    """For ``_if=``: true at execution time when a tracked operation of this host changed."""
    ops = list(_certificate_ops.get(host.name, []))
    return lambda: any(op.did_change() for op in ops)


def announce(message: str) -> None:
    """Say why an operation changes something (printed by runs and ``--dry`` alike)."""
    prefix = getattr(host, "print_prefix", f"[{host.name}] ")
    logger.info(f"{prefix}{message}")
