"""The validated inventory as seen from inside a deploy: the whole model and the current host."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any, TypeVar

from pyinfra import host, logger
from pyinfra.api import DeployError, StringCommand
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS
from pyinfra.context import ctx_state

from pkinfra.model import HostSpec, Inventory, active

T = TypeVar("T")


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


# Points of a deploy that one host of the run passes for all (controller-only operations), and
# values one host computes for all, by run (pyinfra's State) and name.
_reached: dict[tuple[int, str], Any] = {}


def first_to_reach(point: str) -> bool:
    """Whether the current host is the first of this run to reach ``point`` of a deploy.

    Controller-only operations are called there and on no other host: ``_run_once`` alone
    runs each on one host too, but pyinfra still prepares it on every host (a walk of the call
    stack, several milliseconds each), which a run over many hosts notices.

    pyinfra orders operations by each host's own sequence, so operations only the first host
    has are not ordered before another host's: follow the block with one operation every host
    calls (``pki.controller_ready``), which is.
    """
    key = (id(ctx_state.get()), point)
    if key in _reached:
        return False
    _reached[key] = True
    return True


def shared(point: str, compute: Callable[[], T]) -> T:
    """``compute()``'s value, computed by the first host of the run that asks, for all."""
    key = (id(ctx_state.get()), point)
    if key not in _reached:
        _reached[key] = compute()
    value: T = _reached[key]
    return value


def announce(message: str) -> None:
    """Say why an operation changes something (printed by runs and ``--dry`` alike)."""
    prefix = getattr(host, "print_prefix", f"[{host.name}] ")
    logger.info(f"{prefix}{message}")


# -- commands run at execution time ------------------------------------------------------------
# pyinfra hands a FunctionCommand's body no connector arguments, so a command it runs on the
# host would run without ``_sudo`` (or ``_su_user``...). These take them from the operation being
# executed, which is what every other command of that operation runs with.


def connector_arguments(target: Any) -> dict[str, Any]:
    """The connector arguments (``_sudo``, ``_sudo_user``, ``_su_user``, ...) in force for the
    operation ``target`` (a pyinfra Host) is executing; empty outside an operation."""
    arguments = getattr(target, "current_op_global_arguments", None) or {}
    return {k: v for k, v in arguments.items() if k in CONNECTOR_ARGUMENT_KEYS}


def run_on_host(state: Any, target: Any, command: str | StringCommand) -> tuple[bool, Any]:
    """Run ``command`` on ``target`` as the current operation's commands run (sudo included)."""
    if isinstance(command, str):
        command = StringCommand(command)
    return target.run_shell_command(
        command,
        print_output=state.print_output,
        print_input=state.print_input,
        **connector_arguments(target),
    )


def upload_to_host(state: Any, target: Any, data: Any, path: str, **extra: Any) -> bool:
    """Upload ``data`` (a file name or file object) to ``path`` on ``target`` as the current
    operation's commands run (sudo included)."""
    return bool(
        target.put_file(
            data,
            path,
            print_output=state.print_output,
            print_input=state.print_input,
            **{**connector_arguments(target), **extra},
        )
    )


#: Connector arguments that run a command as another user than the SSH login.
_ESCALATION = (
    "_sudo",
    "_sudo_user",
    "_use_sudo_login",
    "_sudo_password",
    "_preserve_sudo_env",
    "_su_user",
    "_use_su_login",
    "_preserve_su_env",
    "_su_shell",
    "_su_password",
    "_doas",
    "_doas_user",
    "_dzdo",
    "_dzdo_user",
)


def upload_private_to_host(state: Any, target: Any, src: Any, dest: str) -> bool:
    """Upload a secret to ``dest`` (an existing 0600 file, whose mode the copy keeps) such that
    no other user of the host can read it on the way.

    With sudo (or su, doas, dzdo), pyinfra's upload stages the file in ``/tmp`` under a
    predictable name with the SFTP server's default mode (0644 with the usual umask) before
    copying it into place. Here the stage is a directory the login user makes with mode 0700
    under a random name (``mkdir`` fails rather than reuse anything that exists), removed after.
    """
    arguments = connector_arguments(target)
    if not any(arguments.get(key) for key in _ESCALATION):
        return upload_to_host(state, target, src, dest)
    plain = {k: v for k, v in arguments.items() if k not in _ESCALATION}
    stage = f"/tmp/pkinfra-stage-{secrets.token_hex(12)}"

    def as_login(*words: str) -> bool:
        ok, _ = target.run_shell_command(
            StringCommand(*words),
            print_output=state.print_output,
            print_input=state.print_input,
            **plain,
        )
        return bool(ok)

    if not as_login("mkdir", "-m", "0700", stage):
        return False
    try:
        other = next(
            (
                arguments[k]
                for k in ("_su_user", "_sudo_user", "_doas_user", "_dzdo_user")
                if arguments.get(k)
            ),
            None,
        )
        # A non-root target user reads the staged file through the 0700 directory by ACL.
        if other and not as_login("setfacl", "-m", f"u:{other}:x", stage):
            return False
        return upload_to_host(state, target, src, dest, remote_temp_filename=f"{stage}/upload")
    finally:
        as_login("rm", "-rf", stage)
