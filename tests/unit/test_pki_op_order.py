"""deploys/pki.py prepared by pyinfra in this process over three @fake hosts, as ``pyinfra --dry``
prepares it: the operation order pyinfra will execute, and the remote commands each host's facts
cost.

``p0`` (first: it does the controller's CA and CRL work) has no certificate, as a DNS primary
may not; ``h1`` and ``h2`` hold the same certificate, ``h1``'s rolling over to a new key. Every
fact finds the certificate's key and nothing else.
"""

from __future__ import annotations

import runpy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyinfra
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.host import Host
from pyinfra.api.state import StateStage
from pyinfra.connectors.fake import FakeConnector
from pyinfra.context import ctx_config, ctx_host, ctx_inventory, ctx_state

from pkinfra import model
from pkinfra.agent.paths import CERTS_DIR
from pkinfra.keys import generate_private_key
from tests.helpers import fake_site

ROOT = Path(__file__).resolve().parents[2]

#: What the first host's controller work is called (``deploys/pki.py``).
CONTROLLER_OPS = ("CA ", "CRL ", "Certificates removed")
BARRIER = "CAs and CRLs ready"

#: Each State prepared here stays alive: ``context.first_to_reach`` keys its points by
#: ``id(state)``, which a freed State's successor could be given.
_PREPARED: list[State] = []


def _key_lines(directory: str) -> list[str]:
    """The ``PkiFiles`` fact's lines for a directory holding only a key (public half)."""
    public = generate_private_key("ec-p256").public_key()
    pem = public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    return [f"@dir|{directory}", "key|regular file|600|root|root"] + [
        f"kp|{line}" for line in pem.splitlines()
    ]


def _site(directory: Path) -> Path:
    hosts: list[tuple[str, dict[str, Any]]] = []
    for name, rollover in (("p0", None), ("h1", "k2"), ("h2", None)):
        fqdn = f"{name}.fake.test"
        data: dict[str, Any] = {"fqdn": fqdn, "fake_delay": 0, "fake_delay_jitter": 0}
        if name != "p0":
            cert: dict[str, Any] = {"name": "web", "names": [fqdn], "issuer": "fake-sub"}
            if rollover:
                cert["rollover"] = rollover
            data["certificates"] = [cert]
            # A service that checks the CA's CRL: the host gets a CRL upload operation.
            data["services"] = [
                {
                    "name": "web",
                    "certificate": "web",
                    "files": [{"path": "/etc/web/ca.crl", "content": "crl"}],
                }
            ]
            data["fake_responses"] = {"@dir|": _key_lines(f"{CERTS_DIR}/web")}
        hosts.append((f"@fake/{name}", data))
    inventory = fake_site(directory, hosts, primary="p0.fake.test")
    (directory / "pki").mkdir()
    return inventory


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[State]:
    inventory_file = _site(tmp_path_factory.mktemp("op-order"))
    deploy = str(ROOT / "deploys" / "pki.py")
    code = compile(Path(deploy).read_text(), deploy, "exec")
    # check_for_changes: operation bodies run now and read their facts, as under --dry.
    state = State(check_for_changes=True)
    state.cwd = str(ROOT)
    state.current_op_file_number = 0
    state.current_deploy_filename = deploy
    _PREPARED.append(state)
    # What the CLI does, without importing pyinfra_cli (it monkey-patches this whole process
    # for gevent). As under the CLI, operations are ordered (and named alike across hosts) by
    # their deploy lines.
    with pytest.MonkeyPatch.context() as patch, ctx_state.use(state):
        patch.setattr(pyinfra, "is_cli", True)
        patch.setattr(model, "_active", None)  # the inventory loaded here, until the end
        hosts = runpy.run_path(str(inventory_file))["hosts"]  # validated: load_or_exit
        inventory = Inventory((hosts, {}), fake=(hosts, {}))
        with ctx_inventory.use(inventory):
            state.init(inventory, Config())
            state.set_stage(StateStage.Connect)
            connect_all(state)
            state.set_stage(StateStage.Prepare)
            # The CLI starts the hosts' deploys in the order of a set, so any host may be the
            # first to reach the controller work; here it is p0, the one that shares no
            # operation with the others: only controller_ready can order its work before theirs.
            for host in inventory:
                with ctx_config.use(state.config.copy()), ctx_host.use(host):
                    exec(code, {"__file__": deploy})
            yield state


def _executed(host: Host) -> list[str]:
    """The remote commands run on ``host`` so far (prepared only: its facts)."""
    connector = host.connector
    assert isinstance(connector, FakeConnector)
    return list(connector.executed_commands)


def _names(state: State, op_hash: str) -> set[str]:
    return set(state.get_op_meta(op_hash).names)


def test_the_first_hosts_ca_and_crl_work_comes_before_any_other_hosts_certificates(
    prepared: State,
) -> None:
    state = prepared
    order = state.get_op_order()
    hosts = {host.name: host for host in state.inventory}
    first = hosts["@fake/p0"]
    controller = [
        i
        for i, op_hash in enumerate(order)
        if op_hash in state.ops[first]
        and any(n.startswith(CONTROLLER_OPS) for n in _names(state, op_hash))
    ]
    # Every CA, the removed certificates, every CRL: only the first host has them.
    assert len(controller) == 5, [sorted(_names(state, h)) for h in order]
    others = [
        i
        for i, op_hash in enumerate(order)
        for name in ("@fake/h1", "@fake/h2")
        if op_hash in state.ops[hosts[name]] and BARRIER not in _names(state, op_hash)
    ]
    assert {"Host certificates", "Key rollover", "Trusted CAs", "CRLs"} <= {
        n for i in others for n in _names(state, order[i])
    }
    assert max(controller) < min(others), [sorted(_names(state, h)) for h in order]


def test_a_rolling_certificate_costs_no_remote_command_of_its_own(prepared: State) -> None:
    # h1 and h2 differ only in h1's rollover: what its facts cost beyond h2's is the rollover's.
    hosts = {host.name: host for host in prepared.inventory}
    rolling, still = (hosts[f"@fake/{n}"] for n in ("h1", "h2"))
    assert any("Key rollover" in _names(prepared, h) for h in prepared.ops[rolling])
    commands = {h: _executed(h) for h in (rolling, still)}
    assert len(commands[rolling]) == len(commands[still]) == 1, commands
