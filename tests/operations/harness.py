"""Operation fixture tests in pyinfra's style: facts in, commands out, no host.

A case is ``tests/operations/<module>.<operation>/<case>.json`` with ``args``/``kwargs`` for the
operation, ``facts`` keyed ``"<module>.<Fact>"`` (then by ``"arg=value,..."`` for facts with
arguments), and either the expected ``commands`` (plus ``noop_description`` when the run
notes one, and ``announced``: the lines that say why it changes something, printed by runs and
``--dry`` alike) or ``exception`` (class name and message) for an operation that must refuse.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyinfra.api.command import FunctionCommand, StringCommand
from pyinfra.context import ctx_host, ctx_state

from pkinfra import install

FIXTURES = Path(__file__).parent


@dataclass
class FakeData:
    values: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def __getattr__(self, key: str) -> Any:
        try:
            return self.values[key]
        except KeyError:
            raise AttributeError(key) from None


class FakeState:
    """Just enough of pyinfra's State for an operation body to run."""

    print_noop_info = False
    config = None


class FakeHost:
    """A host whose facts come from a fixture, recording ``noop`` descriptions."""

    def __init__(self, facts: dict[str, Any], data: dict[str, Any], name: str = "fakehost"):
        self.facts = facts
        self.data = FakeData(data)
        self.name = name
        self.print_prefix = f"[{name}] "
        self.noop_description: str | None = None
        #: What the operation said through ``operations.context.announce`` (prefix removed).
        self.announced: list[str] = []

    def get_fact(self, cls: type, *args: Any, **kwargs: Any) -> Any:
        key = f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"
        if key not in self.facts:
            raise AssertionError(f"fixture lacks fact {key} (args={args}, kwargs={kwargs})")
        value = self.facts[key]
        if not args and not kwargs:
            return value
        arg_key = ",".join([*map(str, args), *(f"{k}={v}" for k, v in sorted(kwargs.items()))])
        if arg_key not in value:
            raise AssertionError(f"fixture lacks fact {key} for {arg_key!r}")
        return value[arg_key]

    def noop(self, description: str) -> None:
        self.noop_description = description


def command_text(command: Any) -> str | dict[str, Any]:
    """How a yielded command appears in a fixture (secrets masked)."""
    if isinstance(command, str):
        return command
    if isinstance(command, StringCommand):
        return command.get_masked_value()
    if isinstance(command, FunctionCommand):
        text: dict[str, Any] = {"function": command.function.__name__}
        # Remote commands an execution-time function runs before (a key made in the command
        # that prints its CSR) or after its own are part of what a case shows.
        for key in ("prepare", "then"):
            if command.kwargs.get(key):
                text[key] = command.kwargs[key]
        if command.function.__name__ == "_issue_all":
            text["certificates"] = [
                {k: c[k] for k in ("cert_name", "prepare") if c.get(k)} for c in command.args[0]
            ]
        return text
    return {type(command).__name__: repr(command)}


@contextlib.contextmanager
def _pinned_run_id(value: str) -> Iterator[None]:
    from operations import util

    saved, util.RUN_ID = util.RUN_ID, value
    try:
        yield
    finally:
        util.RUN_ID = saved


class _Announcements(logging.Handler):
    """Collects what ``announce`` logs for ``host`` (pyinfra's logger, the host's prefix)."""

    def __init__(self, host: FakeHost) -> None:
        super().__init__(logging.INFO)
        self.host = host

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(self.host.print_prefix):
            self.host.announced.append(message.removeprefix(self.host.print_prefix))


def run_operation(module: str, op_name: str, case: dict[str, Any]) -> tuple[list[Any], FakeHost]:
    # ``lab.<op>`` fixtures are the lab's own operations (lab/operations.py).
    path = "lab.operations" if module == "lab" else f"operations.{module}"
    op = getattr(importlib.import_module(path), op_name)
    host = FakeHost(case.get("facts", {}), case.get("data", {}))
    pyinfra_logger = logging.getLogger("pyinfra")
    handler = _Announcements(host)
    saved_level = pyinfra_logger.level
    pyinfra_logger.addHandler(handler)
    pyinfra_logger.setLevel(logging.INFO)
    # A run's id is random; fixtures name it RUN.
    try:
        with ctx_state.use(FakeState()), ctx_host.use(host), _pinned_run_id("RUN"):
            commands = [
                command_text(c) for c in op._inner(*case.get("args", []), **case.get("kwargs", {}))
            ]
    finally:
        pyinfra_logger.removeHandler(handler)
        pyinfra_logger.setLevel(saved_level)
    return commands, host


@dataclass
class Case:
    module: str
    operation: str
    name: str
    data: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.module}.{self.operation}/{self.name}"


#: Placeholders a fixture may use for values that follow the code (a file it uploads).
PLACEHOLDERS = {
    # The agents as installed now: every file current.
    '"@AGENT_FILES@"': json.dumps(
        {path: hashlib.sha256(data).hexdigest() for path, data in install.agent_files().items()}
    ),
    # The switch program a CA-issued certificate's rollover feeds to the host's python3, as it
    # stands inside a JSON string.
    "@SWITCH_SOURCE@": json.dumps(install.program_body("pkinfra.switch"))[1:-1],
    # The trust store program (pkinfra.truststore) as the trust operations run it.
    '"@TRUSTSTORE_PROGRAM@"': json.dumps(install.truststore_command()),
    "@TRUSTSTORE_FRESH_PROGRAM@": json.dumps(install.truststore_command(fresh=True))[1:-1],
}


def _expand(text: str) -> str:
    for name, value in PLACEHOLDERS.items():
        text = text.replace(name, value)
    return text


def cases() -> Iterator[Case]:
    for folder in sorted(p for p in FIXTURES.iterdir() if p.is_dir() and "." in p.name):
        module, op_name = folder.name.split(".", 1)
        for path in sorted(folder.glob("*.json")):
            yield Case(module, op_name, path.stem, json.loads(_expand(path.read_text())))
