"""TSIG key rotation on the controller, its rendering, and the acceptance check against BIND."""

from __future__ import annotations

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
