"""The host agents as a host gets them: which files, where, and the entry points that run them.

The files are the package ``pkinfra.agent`` and every pkinfra module it imports, found by
reading their imports (not listed by hand): a module an agent starts to import is installed
with it, and ``third_party_imports`` shows what else the agents need from the host (the standard
library, Debian's python3-dnspython and python3-cryptography). They go under ``LIB_DIR`` with
their package paths (``LIB_DIR/pkinfra/agent/delivery.py``); each entry point puts ``LIB_DIR``
first on ``sys.path`` and runs one agent's ``main``.
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

from pkinfra.agent import paths

_SOURCE_ROOT = Path(__file__).resolve().parent.parent
_PACKAGE = "pkinfra.agent"


def entry_point(module: str, what: str, lib_dir: str = paths.LIB_DIR) -> str:
    """A program that runs ``pkinfra.agent.<module>``'s ``main`` with the host's python3 and
    pkinfra's files only (``-I``: no user site, no environment; ``lib_dir`` first)."""
    return (
        "#!/usr/bin/python3 -I\n"
        f"# Written by pkinfra: {what}.\n"
        "import sys\n\n"
        f'sys.path.insert(0, "{lib_dir}")\n'
        f"from {_PACKAGE}.{module} import main  # noqa: E402\n\n"
        "sys.exit(main())\n"
    )


def _module_file(module: str) -> Path | None:
    """The source file of a pkinfra module (None: not a pkinfra module, or not there)."""
    parts = module.split(".")
    if parts[0] != "pkinfra":
        return None
    base = _SOURCE_ROOT.joinpath(*parts)
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth of its code (a lazy import counts too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            # ``from pkinfra import tlsa`` imports a module, not a name.
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


@cache
def _closure() -> tuple[frozenset[Path], frozenset[str]]:
    """The pkinfra files the agents need, and the other top-level modules they import."""
    package = _SOURCE_ROOT / "pkinfra" / "agent"
    todo = [_SOURCE_ROOT / "pkinfra" / "__init__.py", *sorted(package.glob("*.py"))]
    files: set[Path] = set()
    others: set[str] = set()
    while todo:
        path = todo.pop()
        if path in files:
            continue
        files.add(path)
        for module in _imports(path):
            source = _module_file(module)
            if source is not None:
                todo.append(source)
                # A package's __init__ runs before any of its modules.
                if source.name != "__init__.py" and source.parent != package:
                    todo.append(source.parent / "__init__.py")
            elif module.split(".")[0] != "pkinfra":
                others.add(module.split(".")[0])
    return frozenset(files), frozenset(others)


def agent_files() -> dict[str, bytes]:
    """Every file of the agents, by its path under ``LIB_DIR``: the pkinfra modules with their
    package paths, and the delivery agent's entry point."""
    files, _ = _closure()
    found = {path.relative_to(_SOURCE_ROOT).as_posix(): path.read_bytes() for path in sorted(files)}
    found["delivery.py"] = entry_point("delivery", "certificate files into services").encode()
    return found


def third_party_imports() -> set[str]:
    """Top-level modules the agents import that are neither pkinfra nor the standard library."""
    _, others = _closure()
    return {m for m in others if m not in sys.stdlib_module_names}
