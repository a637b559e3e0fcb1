"""The product is production-shaped: nothing lab-only in it, execution-time commands and secret
uploads honour the operation's sudo, and the lab runs the product's steps in the product's order."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from operations.context import connector_arguments, run_on_host, upload_private_to_host

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("deploys", "operations", "pkinfra")

#: What only the lab may name: its addresses, its containers, its groups, and switches on a
#: service's name (pkinfra treats every service alike; the daemons' settings are the admin's).
LAB_ONLY = {
    "lab address": re.compile(r"172\.29\.53\."),
    "lab container": re.compile(r"pkinfra-(ns1|ns2|resolver|acme|web1|mx1|db1|mon1)\b(?!-)"),
    "lab group": re.compile(r"[\"'](resolvers|acme_servers)[\"']\s+(not\s+)?in\s+[\w.]*groups"),
    "service-name switch": re.compile(
        r"[\"'](postfix|nginx|postgresql|backup-agent)[\"']\s+(not\s+)?in\s"
        r"|(==|!=)\s*[\"'](postfix|nginx|postgresql|backup-agent)[\"']"
    ),
}


def includes(path: Path) -> list[str]:
    """The files a deploy includes, in order (``local.include("...")`` calls)."""
    tree = ast.parse(path.read_text())
    return [
        str(node.args[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "include"
        and isinstance(node.args[0], ast.Constant)
    ]


def test_lab_site_runs_the_product_steps_in_the_product_order() -> None:
    product = includes(ROOT / "deploys" / "site.py")
    lab = includes(ROOT / "lab" / "site.py")
    assert product, "deploys/site.py includes nothing"
    assert [step for step in lab if step.startswith("deploys/")] == product
    assert all(step.startswith("lab/") for step in lab if not step.startswith("deploys/"))
    for step in lab:
        assert (ROOT / step).is_file(), step


def test_no_lab_name_or_service_switch_in_the_product() -> None:
    found = []
    for folder in PRODUCT:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if line.lstrip().startswith("#"):
                    continue
                for what, pattern in LAB_ONLY.items():
                    if pattern.search(line):
                        found.append(f"{path.relative_to(ROOT)}:{number}: {what}: {line.strip()}")
    assert found == []


def test_the_check_finds_what_it_looks_for() -> None:
    # The patterns above are the test: each must match the kind of line it is meant to refuse.
    samples = {
        "lab address": 'primary = "172.29.53.10"',
        "lab container": 'name = "@docker/pkinfra-mx1"',
        "lab group": 'if "resolvers" in spec.groups:',
        "service-name switch": 'if "postfix" in services:',
    }
    for what, line in samples.items():
        assert LAB_ONLY[what].search(line), what
    assert not LAB_ONLY["service-name switch"].search('ProcessId, "nginx")')
    assert not LAB_ONLY["lab container"].search('"/etc/nginx/sites-enabled/pkinfra-acme-challenge"')
    assert not LAB_ONLY["lab group"].search('for name in ("resolvers", "port"):')


class RecordingHost:
    """Just enough of a pyinfra Host to record what an execution-time body runs."""

    def __init__(self, arguments: dict[str, Any] | None) -> None:
        self.current_op_global_arguments = arguments
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []

    def run_shell_command(self, command: Any, **kwargs: Any) -> tuple[bool, Any]:
        self.calls.append(("run", command.get_raw_value(), kwargs))
        return True, SimpleNamespace(stdout_lines=[])

    def put_file(self, src: Any, dest: str, **kwargs: Any) -> bool:
        self.calls.append(("put", dest, kwargs))
        return True


STATE = SimpleNamespace(print_output=False, print_input=False)


def test_execution_time_commands_run_with_the_operations_sudo() -> None:
    host = RecordingHost({"_sudo": True, "_sudo_user": None, "_if": [], "name": "x"})
    assert connector_arguments(host) == {"_sudo": True, "_sudo_user": None}
    run_on_host(STATE, host, "openssl req -new -key /etc/pkinfra/certs/a/key.pem")
    [(_, command, kwargs)] = host.calls
    assert command == "openssl req -new -key /etc/pkinfra/certs/a/key.pem"
    assert kwargs["_sudo"] is True
    assert "_if" not in kwargs and "name" not in kwargs


def test_outside_an_operation_there_are_no_connector_arguments() -> None:
    assert connector_arguments(RecordingHost(None)) == {}


@pytest.mark.parametrize("escalation", [{"_sudo": True}, {"_su_user": "bind"}])
def test_a_secret_under_sudo_is_staged_in_a_private_directory(escalation: dict[str, Any]) -> None:
    host = RecordingHost({**escalation, "_timeout": 30})
    assert upload_private_to_host(STATE, host, "pki/secrets/x.key", "/etc/pkinfra/tsig.key.new")
    kinds = [call[0] for call in host.calls]
    mkdir = host.calls[0]
    assert mkdir[0] == "run"
    match = re.fullmatch(r"mkdir -m 0700 (/tmp/pkinfra-stage-[0-9a-f]{24})", mkdir[1])
    assert match, mkdir[1]
    stage = match.group(1)
    # The login user makes and removes the stage; only the copy into place is escalated.
    assert not any(key in mkdir[2] for key in escalation)
    put = next(call for call in host.calls if call[0] == "put")
    assert put[1] == "/etc/pkinfra/tsig.key.new"
    assert put[2]["remote_temp_filename"] == f"{stage}/upload"
    assert all(put[2][key] == value for key, value in escalation.items())
    cleanup = host.calls[-1]
    assert cleanup[:2] == ("run", f"rm -rf {stage}")
    assert not any(key in cleanup[2] for key in escalation)
    if "_su_user" in escalation:
        assert ("run", f"setfacl -m u:bind:x {stage}") in [c[:2] for c in host.calls]
    assert kinds.count("put") == 1


def test_two_uploads_never_share_a_stage() -> None:
    stages = set()
    for _ in range(2):
        host = RecordingHost({"_sudo": True})
        upload_private_to_host(STATE, host, "a", "/b")
        stages.add(host.calls[0][1])
    assert len(stages) == 2


def test_a_secret_without_escalation_goes_straight_to_its_0600_file() -> None:
    host = RecordingHost({"_timeout": 30})
    assert upload_private_to_host(STATE, host, "pki/secrets/x.key", "/etc/pkinfra/tsig.key.new")
    assert [(c[0], c[1]) for c in host.calls] == [("put", "/etc/pkinfra/tsig.key.new")]
    assert "remote_temp_filename" not in host.calls[0][2]
