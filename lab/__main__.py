"""`python -m lab up|down|status|images|twin`: the command line of the Docker lab."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from lab import images, twin
from lab.engine import LabError, connect
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
    twin_parser = commands.add_parser(
        "twin", help="the twin lab (lab/twin.py): a second lab in its own network namespace"
    )
    twin_parser.add_argument("action", choices=("up", "run", "down"))
    twin_parser.add_argument(
        "argv", nargs=argparse.REMAINDER, help="run: the command, in the twin's work tree"
    )
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
        if args.command == "twin":
            return _twin(args.action, args.argv)
        result = status()
        _print_status(result)
        return 0 if result.ok else 1
    except LabError as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lab: interrupted", file=sys.stderr)
        return 130


def _twin(action: str, argv: list[str]) -> int:
    if action == "down":
        twin.down()
        return 0
    # The first lab's lock (which its own `lab up` holds for a while) only to build images.
    tags = sorted({spec.tag for spec in images.lab_specs().values()})
    client = connect()
    if not all(images.image_exists(client, tag) for tag in tags):
        tags = build_images()
    tree = twin.up(tags)
    if action == "up":
        return 0
    argv = argv[1:] if argv[:1] == ["--"] else argv
    if not argv:
        print("lab: twin run needs a command", file=sys.stderr)
        return 2
    os.chdir(tree)
    full = twin.command(argv)
    os.execvp(full[0], full)


if __name__ == "__main__":
    sys.exit(main())
