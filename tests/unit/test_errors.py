"""One error base for the core: every exception class pkinfra defines derives from PkinfraError."""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil

import pytest

import pkinfra
from pkinfra import cli
from pkinfra.agent.errors import PkinfraError
from pkinfra.ca import CAError
from pkinfra.dnsupdate import DNSUpdateError


def _modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(pkinfra.__path__, "pkinfra.")]


def test_every_error_class_of_the_core_derives_from_the_one_base() -> None:
    found = {}
    for name in _modules():
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == name:
                found[f"{name}.{cls_name}"] = issubclass(cls, PkinfraError)
    assert {"pkinfra.ca.CAError", "pkinfra.model.InventoryError"} <= set(found)
    assert [name for name, derived in found.items() if not derived] == []


def test_errors_carry_their_context_and_no_unknown_parts() -> None:
    err = CAError("no such file", ca="duckcorp", action="reading the CA")
    assert err.context == {"ca": "duckcorp", "action": "reading the CA"}
    assert str(err) == "reading the CA (CA duckcorp): no such file"
    update = DNSUpdateError("update", "refused", zone="example.test", rcode="REFUSED")
    assert update.context == {"action": "update", "zone": "example.test", "rcode": "REFUSED"}


@pytest.mark.parametrize("error", [CAError("broken", ca="x"), cli.CLIError("bad argument")])
def test_the_cli_turns_any_core_error_into_one_line(
    error: PkinfraError, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def handler(args: argparse.Namespace) -> int:
        raise error

    parser = argparse.ArgumentParser()
    parser.set_defaults(handler=handler)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert cli.main([]) == 1
    assert capsys.readouterr().err == f"pkinfra: {error}\n"


def test_the_cli_lets_a_bug_show_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(args: argparse.Namespace) -> int:
        raise KeyError("bug")

    parser = argparse.ArgumentParser()
    parser.set_defaults(handler=handler)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    with pytest.raises(KeyError):
        cli.main([])
