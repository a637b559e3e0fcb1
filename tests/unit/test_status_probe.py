"""The status probe, run locally against a temporary host layout: what it reads, and that no
key material ever leaves it."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from pathlib import Path

import pytest

from pkinfra.agent import status_probe
from pkinfra.cli_status import StatusError, probe_command, run_probe
from pkinfra.keys import spki_sha256
from tests.unit.status_fixtures import NOW, HostFiles, copy_site, pem_key, probe, python3


@pytest.fixture
def db1(tmp_path: Path) -> HostFiles:
    _, inventory, _ = copy_site(tmp_path / "site")
    files = HostFiles(tmp_path / "root", inventory, "db1.example.test")
    files.everything()
    return files


def test_reads_certificates_keys_services_and_crls(db1: HostFiles) -> None:
    report = probe(db1)
    assert report["probe"] == status_probe.PROBE_VERSION
    pg = report["certificates"]["postgres"]
    key = db1.keys["postgres"]
    assert pg["cert"]["spki_sha256"] == spki_sha256(key.public_key())
    assert pg["key"] == {"present": True, "spki_sha256": spki_sha256(key.public_key())}
    assert pg["cert"]["names"] == ["db1.example.test"]
    assert pg["cert"]["key_type"] == "ec-p256"
    assert pg["cert"]["not_after"] == int((NOW + dt.timedelta(days=60)).timestamp())
    assert pg["next"] is None and pg["rollover"] is None
    svc = report["services"]["postgresql"]
    assert svc["pending"] is None
    assert {f["path"]: f["current"] for f in svc["files"]} == {
        "/etc/postgresql/tls/server.crt": True,
        "/etc/postgresql/tls/server.key": True,
        "/etc/postgresql/tls/clients.pem": True,
        "/etc/postgresql/tls/clients.crl": True,
    }
    crls = report["crls"]
    assert set(crls) == {"duckcorp-monitoring", "duckcorp"}
    assert crls["duckcorp"]["next_update"] == int((NOW + dt.timedelta(days=6)).timestamp())
    assert crls["duckcorp"]["number"] == 1


def test_pending_marks_stale_copies_and_missing_files(db1: HostFiles) -> None:
    db1.write("/var/lib/pkinfra/pending/postgresql", b"files changed: /etc/x\n")
    db1.certificate(db1.host.certificates[1], new_key=True)  # backup: its copy now stale
    db1.path("/etc/postgresql/tls/clients.pem").unlink()
    report = probe(db1)
    pg = report["services"]["postgresql"]
    assert pg["pending"] == "files changed: /etc/x"
    assert isinstance(pg["pending_since"], int)
    missing = [f for f in pg["files"] if not f["present"]]
    assert [f["path"] for f in missing] == ["/etc/postgresql/tls/clients.pem"]
    (combined,) = report["services"]["backup-agent"]["files"]
    assert combined["current"] is False
    # The copy's key (combined: key first) is the old one, not the certificate's new key.
    assert combined["spki_sha256"] != report["certificates"]["backup"]["cert"]["spki_sha256"]


def test_a_mismatched_or_unreadable_key_is_reported_without_its_bytes(db1: HostFiles) -> None:
    db1.write(
        "/etc/pkinfra/certs/postgres/key.pem",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    report = probe(db1)
    assert report["certificates"]["postgres"]["key"] == {
        "present": True,
        "error": "unreadable or encrypted key",
    }


def test_no_key_material_in_the_output(db1: HostFiles) -> None:
    out = json.dumps(probe(db1))
    assert "PRIVATE KEY" not in out
    for key in db1.keys.values():
        pem = pem_key(key).decode()
        body = "".join(pem.strip().splitlines()[1:-1])
        der = base64.b64decode(body)
        # No run of 12 base64 characters of the key, in PEM or in any other base64 alignment,
        # and no hex of its bytes.
        for start in range(0, len(body) - 12, 4):
            assert body[start : start + 12] not in out
        assert der[-16:].hex() not in out
        private = key.private_numbers().private_value
        assert format(private, "x") not in out and str(private) not in out


def test_rollover_state_keeps_only_public_fields(db1: HostFiles) -> None:
    state = {"step": "published", "label": "2026-11", "served_since": 1, "secret": "x" * 40}
    db1.write("/etc/pkinfra/rollover/postgres.json", json.dumps(state).encode())
    report = probe(db1)
    assert report["certificates"]["postgres"]["rollover"] == {
        "step": "published",
        "label": "2026-11",
        "served_since": 1,
    }


def test_acme_lineage_renewal_settings(tmp_path: Path) -> None:
    _, inventory, _ = copy_site(tmp_path / "site")
    mx1 = HostFiles(tmp_path / "root", inventory, "mx1.example.test")
    mx1.everything()
    report = probe(mx1)
    mail = report["certificates"]["mail"]
    assert mail["renewal"] == {
        "authenticator": "webroot",
        "server": "https://acme.example.test:14000/dir",
        "key_type": "ecdsa",
        "reuse_key": "True",
    }
    assert "0123abcd" not in json.dumps(report)  # the account id stays on the host


def test_one_program_on_stdin(db1: HostFiles) -> None:
    script = status_probe.script(db1.request())
    assert script.startswith('"""The status probe')
    assert re.search(r"^REQUEST = ", script, re.M)
    assert run_probe([python3(), "-"], db1.request())["probe"] == 1


def test_a_failing_command_is_one_line() -> None:
    with pytest.raises(StatusError, match=r"exit 255: .*refused"):
        run_probe(["sh", "-c", "cat >/dev/null; echo 'ssh: connect: refused' >&2; exit 255"], {})


def test_probe_commands_follow_the_inventory(tmp_path: Path) -> None:
    _, inventory, reach = copy_site(tmp_path)
    db1 = inventory.hosts["db1.example.test"]
    command = probe_command(db1.pyinfra_name, reach[db1.pyinfra_name])
    assert command[0] == "ssh" and command[-2:] == ["--", "sudo -n python3 -"]
    assert "-l" in command and command[command.index("-l") + 1] == "ops"
    assert "172.29.53.30" in command
    assert f"UserKnownHostsFile={tmp_path}/.lab/ssh/known_hosts" in command
    assert "StrictHostKeyChecking=yes" in command and "BatchMode=yes" in command
    resolver = inventory.hosts["resolver.example.test"]
    assert probe_command(resolver.pyinfra_name, reach[resolver.pyinfra_name]) == [
        "docker",
        "exec",
        "-i",
        "pkinfra-resolver",
        "python3",
        "-",
    ]
    with pytest.raises(StatusError, match="not supported"):
        probe_command("@chroot/x", {})
