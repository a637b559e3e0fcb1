"""TSIG key rotation on the controller, its rendering, and the acceptance check against BIND."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pkinfra import tsig, zones
from pkinfra.model import load_inventory_file
from tests.unit.named_fixture import NamedLab, named_binary, running_lab

ROOT = Path(__file__).resolve().parents[2]
FQDN = "mx1.example.test"


def test_rotation_start_install_finish(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    first = tsig.host_keys(secrets, FQDN)
    assert first.names == [FQDN] and first.next is None
    tsig.ensure_key(secrets, FQDN)
    with pytest.raises(tsig.TSIGError, match="no key rotation under way"):
        tsig.finish_rotation(secrets, FQDN)
    tsig.start_rotation(secrets, FQDN)
    with pytest.raises(tsig.TSIGError, match="not on the host yet"):
        tsig.finish_rotation(secrets, FQDN)

    keys = tsig.host_keys(secrets, FQDN)
    assert keys.names == [FQDN, f"k2.{FQDN}"]
    assert keys.installed == keys.next
    assert keys.next is not None and keys.next.path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(tsig.TSIGError, match="already under way"):
        tsig.start_rotation(secrets, FQDN)

    old_secret = (secrets / f"{FQDN}.key").read_text()
    next_text = keys.next.path.read_text()
    tsig.mark_installed(secrets, FQDN)
    done = tsig.finish_rotation(secrets, FQDN)
    assert done.name == f"k2.{FQDN}"
    assert (secrets / f"{FQDN}.key").read_text() == next_text != old_secret
    assert tsig.host_keys(secrets, FQDN).names == [f"k2.{FQDN}"]
    assert not tsig.installed_marker(secrets, FQDN).exists()

    assert tsig.start_rotation(secrets, FQDN).name == f"k3.{FQDN}"


def test_a_changed_next_key_needs_a_new_install(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    tsig.ensure_key(secrets, FQDN)
    nxt = tsig.start_rotation(secrets, FQDN)
    tsig.mark_installed(secrets, FQDN)
    nxt.path.unlink()
    tsig.ensure_key(secrets, nxt.name, path=nxt.path)  # another secret under the same name
    with pytest.raises(tsig.TSIGError, match="not on the host yet"):
        tsig.finish_rotation(secrets, FQDN)


def test_concurrent_key_creation_first_writer_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every writer has checked that no key exists before any of them finishes; each one's
    # write is slowed by a different amount, so they finish one after the other. The first
    # key to land must be the one every writer returns and the one left on disk.
    secrets = tmp_path / "secrets"
    writers = 6
    delays = {f"writer-{i}": 0.05 * i for i in range(writers)}
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        time.sleep(delays.get(threading.current_thread().name, 0))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    start = threading.Barrier(writers)
    seen: dict[str, str] = {}

    def write(name: str) -> None:
        start.wait()
        path = tsig.ensure_key(secrets, FQDN)
        seen[name] = path.read_text()  # what this run would install on the host and primary

    threads = [threading.Thread(target=write, args=(n,), name=n) for n in delays]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final = (secrets / f"{FQDN}.key").read_text()
    assert len(seen) == writers
    assert set(seen.values()) == {final}
    assert [p.name for p in secrets.iterdir()] == [f"{FQDN}.key"]  # no temporary file left
    assert (secrets / f"{FQDN}.key").stat().st_mode & 0o777 == 0o600


def test_two_processes_creating_one_key_agree(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    code = (
        "import sys, time; from pathlib import Path; from pkinfra import tsig\n"
        "until = float(sys.argv[2])\n"
        "while time.time() < until: pass\n"
        "print(tsig.ensure_key(Path(sys.argv[1]), 'mx1.example.test').read_text(), end='')\n"
    )
    until = str(time.time() + 1.5)
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(secrets), until],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=60)[0] for run in runs]
    assert all(run.returncode == 0 for run in runs)
    assert outputs[0] == outputs[1] == (secrets / f"{FQDN}.key").read_text()


@pytest.mark.parametrize(
    ("fqdn", "others", "clash"),
    [
        ("pkinfra-transfer", [], True),
        ("k2.mx1.example.test", ["mx1.example.test"], True),
        ("k2.mx1.example.test", [], False),
        ("mx1.example.test.next", ["mx1.example.test"], True),
        ("mx1.example.test", ["mx1.example.test"], False),
        ("k2x.mx1.example.test", ["mx1.example.test"], False),
    ],
)
def test_host_names_that_clash_with_key_names(fqdn: str, others: list[str], clash: bool) -> None:
    assert (tsig.name_clash(fqdn, others) is not None) is clash


def test_primary_grants_both_keys_during_a_rotation() -> None:
    inventory = load_inventory_file(ROOT / "inventory.py")
    site = zones.render_site(inventory, keys={FQDN: [FQDN, f"k2.{FQDN}"]})
    local = site.primary.config[zones.Layout().local_file]
    for name in (FQDN, f"k2.{FQDN}"):
        assert f'grant "{name}" name _acme-challenge.mx1.example.test.shadow.test. TXT;' in local
        assert name in site.primary.keys
    assert 'grant "web1.example.test"' in local
    assert f'grant "k2.{FQDN}" name _443' not in local  # mx1's new key: mx1's names only
    assert site.key_holders == [FQDN, "web1.example.test"]


@pytest.fixture(scope="module")
def named(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NamedLab]:
    if named_binary() is None:
        pytest.skip("named is not installed (apt-get install bind9); the project setup installs it")
    with running_lab(tmp_path_factory.mktemp("named")) as running:
        yield running


def test_accepted_by_tells_a_known_key_from_an_unknown_one(named: NamedLab, tmp_path: Path) -> None:
    server = named.primary
    assert (
        tsig.accepted_by(named.key_file("mx1-key"), "127.0.0.1", "example.test", port=server.port)
        == ""
    )
    stranger = tsig.ensure_key(tmp_path, "k9.mx1.example.test")
    why = tsig.accepted_by(stranger, "127.0.0.1", "example.test", port=server.port)
    assert why.startswith("127.0.0.1 refuses key k9.mx1.example.test")
    assert stranger.read_text().split('"')[3] not in why  # never the secret
