"""The small CLI changes of the status issue: ``dane check --resolver`` resolves the address
through that resolver, ``ca list --json``, ``status --limit`` and ``status --json`` wiring."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pkinfra import cli_status, dane
from pkinfra.cli import main
from tests.unit.status_fixtures import copy_site


def test_an_address_is_not_looked_up() -> None:
    assert dane.resolve_address("192.0.2.7", "198.51.100.1") == "192.0.2.7"
    assert dane.resolve_address("[2001:db8::1]", "198.51.100.1") == "2001:db8::1"


def test_check_connects_to_the_address_the_resolver_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: dict[str, Any] = {}

    def lookup(owner: str, resolver: str, timeout: float = 5.0) -> dane.Lookup:
        return dane.Lookup(owner, resolver, "secure", [])

    def resolve(host: str, resolver: str, timeout: float = 5.0) -> str:
        asked["resolve"] = (host, resolver)
        return "172.29.53.25"

    def chain(host: str, port: int, **kw: Any) -> list[Any]:
        asked["connect"] = (host, port, kw["name"])
        raise dane.DaneError("stop here")

    monkeypatch.setattr(dane, "lookup_tlsa", lookup)
    monkeypatch.setattr(dane, "resolve_address", resolve)
    monkeypatch.setattr(dane, "fetch_chain", chain)
    report = dane.check("mx1.example.test", 25, starttls="smtp", resolver="172.29.53.53")
    assert asked == {
        "resolve": ("mx1.example.test", "172.29.53.53"),
        "connect": ("172.29.53.25", 25, "mx1.example.test"),
    }
    assert report.verdict is dane.Verdict.FAILURE and report.summary == "stop here"


def test_a_resolver_that_does_not_answer_is_a_dane_error() -> None:
    with pytest.raises(dane.DaneError, match=r"address of mx1\.example\.test via 127\.0\.0\.1"):
        dane.resolve_address("mx1.example.test", "127.0.0.1", timeout=0.5, port=9)


def test_ca_list_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pkinfra.ca import CAStore, PassphraseSource

    inventory, _, _ = copy_site(tmp_path)
    source = PassphraseSource.from_file(tmp_path / ".lab" / "ca-passphrase")
    CAStore(tmp_path / "pki").create_root("duckcorp", key_type="ec-p256", passphrase=source)
    assert main(["-i", str(inventory), "ca", "list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == 1 and data["certificates"] == []
    (ca,) = data["cas"]
    assert ca["name"] == "duckcorp" and ca["parent"] is None and ca["crl"] is False
    assert ca["days_left"] >= 3649 and ca["not_after"].endswith("Z")


def test_limit_selects_by_fqdn_name_or_group(tmp_path: Path) -> None:
    _, inventory, _ = copy_site(tmp_path)
    assert cli_status.select(inventory, "db") == ["db1.example.test"]
    assert cli_status.select(inventory, "mx1.example.test,web") == [
        "web1.example.test",
        "mx1.example.test",
    ]
    assert cli_status.select(inventory, "@docker/*") == [
        "resolver.example.test",
        "acme.example.test",
    ]
    with pytest.raises(Exception, match="no host of the inventory matches"):
        cli_status.select(inventory, "nothing")


def test_status_json_for_an_unreachable_host_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    inventory, _, _ = copy_site(tmp_path)
    commands: list[list[str]] = []

    def refuse(command: list[str], request: dict[str, Any], timeout: float = 60) -> Any:
        commands.append(command)
        raise cli_status.StatusError("exit 255: ssh: connect to host 172.29.53.40: refused")

    monkeypatch.setattr(cli_status, "run_probe", refuse)
    code = main(["-i", str(inventory), "status", "--limit", "mon1*", "--json", "--no-dns"])
    data = json.loads(capsys.readouterr().out)
    assert code == 3 and data["state"] == "unknown" and data["exit_code"] == 3
    assert len(commands) == 1 and commands[0][0] == "ssh"
    (host,) = data["hosts"]
    assert host["error"].endswith("refused")
    assert [c["name"] for c in host["certificates"]] == ["monitoring"]
