"""`python -m lab up|down|status|images`: the command line of the Docker lab."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lab.engine import LabError
from lab.lifecycle import LabStatus, build_images, down, status, up


def _print_status(result: LabStatus) -> None:
    if result.network_problem:
        print(f"lab: {result.network_problem}", file=sys.stderr)
    for host in result.hosts:
        print(host.line())


def main(argv: Sequence[str] | None = None) -> int:
    """Run one lab command; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m lab", description="The pkinfra Docker lab (test hosts)."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("up", help="build images if needed, create/start containers")
    commands.add_parser("down", help="remove the lab's containers and network (keep images)")
    commands.add_parser("status", help="one line per container; non-zero unless fully up")
    commands.add_parser("images", help="build the images if needed; make no container")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            _print_status(up())
            return 0
        if args.command == "down":
            down()
            return 0
        if args.command == "images":
            print("lab: images ready: " + ", ".join(build_images()))
            return 0
        result = status()
        _print_status(result)
        return 0 if result.ok else 1
    except LabError as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
