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
import shlex
import sys
from functools import cache
from pathlib import Path

from pkinfra import truststore
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


def _packages(source: Path) -> list[Path]:
    """The ``__init__.py`` of every package that holds ``source``, outermost first (they run
    before it is imported)."""
    found = []
    for parent in source.parents:
        if parent == _SOURCE_ROOT:
            break
        if parent / "__init__.py" != source:
            found.append(parent / "__init__.py")
    return found[::-1]


def _walk(roots: list[Path]) -> tuple[list[Path], set[str]]:
    """The pkinfra files ``roots`` need (each after the ones it imports) and the other
    top-level modules they import."""
    order: list[Path] = []
    others: set[str] = set()
    seen: set[Path] = set()

    def visit(path: Path) -> None:
        if path in seen:
            return
        seen.add(path)
        for package in _packages(path):
            visit(package)
        for module in sorted(_imports(path)):
            source = _module_file(module)
            if source is not None:
                visit(source)
            elif module.split(".")[0] != "pkinfra":
                others.add(module.split(".")[0])
        order.append(path)

    for root in roots:
        visit(root)
    return order, others


@cache
def _closure() -> tuple[frozenset[Path], frozenset[str]]:
    """The pkinfra files the agents need, and the other top-level modules they import."""
    package = _SOURCE_ROOT / "pkinfra" / "agent"
    files, others = _walk([_SOURCE_ROOT / "pkinfra" / "__init__.py", *sorted(package.glob("*.py"))])
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


# -- a program for a host without the agent -----------------------------------------------------

#: Runs a host program's modules: each is registered under its own name before its code runs,
#: so that they import one another as in the installed package.
_LOADER = """\
import sys, types
def _load(name, source, package):
    module = types.ModuleType(name)
    module.__file__ = "<pkinfra " + name + ">"
    if package:
        module.__path__ = []
    sys.modules[name] = module
    parent, _, leaf = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], leaf, module)
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module
"""


def program_marker(module: str) -> str:
    """The line that ends a host program's here-document (``pkinfra.switch``:
    ``PKINFRA_SWITCH_PROGRAM``)."""
    return f"PKINFRA_{module.rpartition('.')[2].upper()}_PROGRAM"


def program_body(module: str) -> str:
    """The Python program that runs ``module``'s ``main(sys.argv[1:])``: ``module`` and every
    pkinfra module it imports, each source loaded by ``_LOADER`` after the ones it imports."""
    root = _module_file(module)
    if root is None:
        raise ValueError(f"{module}: not a pkinfra module")
    order, others = _walk([root])
    foreign = {name for name in others if name not in sys.stdlib_module_names}
    assert not foreign, f"{module} imports {sorted(foreign)}: a host program has the stdlib only"
    lines = [_LOADER]
    for path in order:
        relative = path.relative_to(_SOURCE_ROOT).with_suffix("")
        package = relative.name == "__init__"
        name = ".".join(relative.parent.parts if package else relative.parts)
        call = f"_load({name!r}, {path.read_text(encoding='utf-8')!r}, {package})"
        lines.append(f"sys.exit({call}.main(sys.argv[1:]))" if path == root else call)
    return "\n".join(lines) + "\n"


def host_program(module: str, *args: str) -> str:
    """The shell command that runs ``module``'s ``main(args)`` on a host without installing
    anything (``program_body``, fed to the host's ``python3 -I -`` as a here-document): for
    what must also run where no agent is, with the standard library only (``pkinfra.switch``,
    ``pkinfra.truststore``)."""
    marker, body = program_marker(module), program_body(module)
    assert marker not in body.splitlines(), "the here-document would end early"
    words = " ".join(shlex.quote(arg) for arg in args)
    return f"python3 -I - {words} <<'{marker}'\n{body}{marker}\n"


def switch_command(live: str, source: str) -> str:
    """The shell command that switches the CA-issued certificate directory ``live`` to the
    files of ``source`` on a host (``pkinfra.switch``)."""
    return host_program("pkinfra.switch", "directory", live, source)


def truststore_command(fresh: bool = False) -> str:
    """The shell command that brings a host's trust store up to date: ``pkinfra.truststore``
    with the host's python3, or ``update-ca-certificates`` where there is no python3."""
    flags = ["--fresh"] if fresh else []
    run = host_program("pkinfra.truststore", "update", *flags)
    fallback = " ".join([truststore.SCRIPT, *flags])
    return f"if command -v python3 >/dev/null 2>&1; then {run}else {fallback} >/dev/null; fi"
