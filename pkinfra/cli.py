"""The ``pkinfra`` command: one sub-command group per domain (``ca``, ``dns``, ``dane`` ...).

Each group lives in its own module with ``register(subparsers)``; errors of the core become one
line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from pkinfra.agent.errors import PkinfraError

#: Modules that add a sub-command group; a group whose module is not there yet is left out.
GROUPS = ("pkinfra.cli_ca", "pkinfra.cli_dns", "pkinfra.cli_dane", "pkinfra.cli_status")


class CLIError(PkinfraError):
    """A problem to report to the user in one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pkinfra",
        description="Private CAs, Let's Encrypt, DNS and DANE for a pyinfra inventory.",
    )
    parser.add_argument(
        "-i",
        "--inventory",
        default="inventory.py",
        help="the pyinfra inventory that describes the site (default: inventory.py)",
    )
    sub = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    for name in GROUPS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except PkinfraError as exc:  # the core's own errors carry their context
        print(f"pkinfra: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
