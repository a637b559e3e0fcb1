"""An mkcert-style CA taken over on a real host: mon1 (over SSH) trusts the imported root, which
verifies both a certificate the CA issued before the import and the one pkinfra issues after.

The run uses a copy of the lab inventory with the CA's ``import_from`` added to
``group_data/all.py`` and one extra certificate for mon1, and a copy of the CA store: the lab's
real CAs and their records are never touched (the test checks it). Afterwards a run of the real
inventory takes the root out of mon1's system store, with no link to it left behind, the rest of
the extra files are removed by hand, and a second real run finds nothing to do on mon1.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pkinfra import issue
from pkinfra.ca import CAStore, PassphraseSource
from tests.helpers import make_mkcert_ca
from tests.lab import run as lab_run
from tests.lab.run import pyinfra_output

ROOT = Path(__file__).resolve().parents[2]
PKI = ROOT / "pki"
PASSPHRASE_FILE = ROOT / ".lab" / "ca-passphrase"

CONTAINER = "pkinfra-mon1"
LIMIT = ["--limit", "mon1.example.test"]
CA = "mkcert-legacy"
CERT = {"name": "legacy-app", "names": ["app.mon1.example.test"], "issuer": CA}
DIRECTORY = f"/etc/pkinfra/certs/{CERT['name']}"
OLD_LEAF = "/tmp/pkinfra-mkcert-old.pem"  # on mon1: what the CA issued before the import
SYSTEM_STORE = "/etc/ssl/certs/ca-certificates.crt"
LAB_ROOT = issue.trust_anchor_path("duckcorp")

pytestmark = pytest.mark.lab


def deploy_pki(inventory: Path) -> str:
    return pyinfra_output("deploys/pki.py", *LIMIT, inventory=inventory, tail=4000)


def changed(out: str) -> str:
    found = re.search(r"Grand total\s+\d+\s+(\S+)", out)
    assert found is not None, out[-3000:]
    return found.group(1)


#: A command on mon1 (the shell command line, through ``sh -c``).
sh = partial(lab_run.sh, CONTAINER, timeout=60, interactive=True)


def verify(ca_file: str, cert: str) -> tuple[bool, str]:
    """Strict verification against ``ca_file`` alone (openssl would add the default path)."""
    run = sh(
        f"openssl verify -x509_strict -purpose sslserver -no-CApath -no-CAstore "
        f"-CAfile {ca_file} {cert}"
    )
    return run.returncode == 0, run.stdout + run.stderr


def der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def private_digest(pem: bytes, passphrase: bytes | None = None) -> str:
    """A digest of the private key itself (never the key: assertion messages are printed)."""
    key = serialization.load_pem_private_key(pem, passphrase)
    raw = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return hashlib.sha256(raw).hexdigest()


def store_digests(directory: Path) -> dict[str, str]:
    """Every file of a CA store (records, keys, CRLs) by its SHA-256."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def clean_mon1() -> None:
    """Remove what the import run put on mon1; the system store forgets the CA again."""
    run = sh(
        f"rm -rf {DIRECTORY} && rm -f {issue.ca_bundle_path(CA)} {issue.trust_anchor_path(CA)} "
        f"{OLD_LEAF} && update-ca-certificates --fresh >/dev/null"
    )
    assert run.returncode == 0, run.stderr


@pytest.fixture
def import_inventory(site_deployed: str, tmp_path: Path) -> Iterator[Path]:
    """The lab inventory with CA ``mkcert-legacy`` imported and mon1 holding one of its
    certificates; its own copy of the CA store (TSIG secrets left out: pki.py needs none)."""
    mkcert = tmp_path / "mkcert"
    make_mkcert_ca(mkcert, "old.mon1.example.test")
    for name in ("inventory.py", "config.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "group_data", tmp_path / "group_data")
    shutil.copytree(PKI, tmp_path / "pki", ignore=shutil.ignore_patterns("secrets"))
    (tmp_path / ".lab").symlink_to(ROOT / ".lab")
    all_py = tmp_path / "group_data" / "all.py"
    all_py.write_text(
        all_py.read_text()
        + f"\ncas[{CA!r}] = {{"
        + '"import_from": {"cert": "mkcert/rootCA.pem", "key": "mkcert/rootCA-key.pem"}, '
        + '"passphrase": _passphrase}\n'
    )
    inventory = tmp_path / "inventory.py"
    text = inventory.read_text()
    anchor = "_inventory = load_or_exit("
    assert text.count(anchor) == 1 and '"fqdn": "mon1.example.test"' in text
    inventory.write_text(
        text.replace(
            anchor,
            "next(h for h in monitoring if h[1]['fqdn'] == 'mon1.example.test')[1]"
            f"['certificates'].append({CERT!r})\n\n{anchor}",
        )
    )
    clean_mon1()  # whatever an interrupted earlier run left
    yield inventory
    clean_mon1()
    # The store copy holds the lab's (encrypted) CA keys and the imported one: not left in /tmp.
    shutil.rmtree(tmp_path / "pki")
    shutil.rmtree(mkcert)


def test_imported_mkcert_ca_keeps_validating_what_it_issued(import_inventory: Path) -> None:
    mkcert = import_inventory.parent / "mkcert"
    old_pem = (mkcert / "old.pem").read_text()
    sh(f"cat > {OLD_LEAF}", stdin=old_pem)
    ok, out = verify(SYSTEM_STORE, OLD_LEAF)
    assert not ok, "mon1 must not trust the mkcert CA before the import: " + out
    real_store = store_digests(PKI)

    out = deploy_pki(import_inventory)
    assert changed(out) != "-", out[-3000:]
    # No secret in the output: neither the mkcert key nor the host's new key.
    assert "PRIVATE KEY" not in out
    ca_key = (mkcert / "rootCA-key.pem").read_text().splitlines()
    assert not [line for line in ca_key[1:-1] if line in out], "the CA key leaked into the output"

    # The CA pkinfra deployed is mkcert's own certificate, unchanged, with mkcert's key.
    root_der = der((mkcert / "rootCA.pem").read_bytes())
    for path in (issue.ca_bundle_path(CA), issue.trust_anchor_path(CA)):
        deployed = sh(f"cat {path}")
        assert deployed.returncode == 0, f"{path}: {deployed.stderr}"
        assert der(deployed.stdout.encode()) == root_der, f"{path} is not mkcert's root"
    store = CAStore(import_inventory.parent / "pki")
    info = store.ca(CA)
    assert info.imported and info.key_encrypted
    assert der(info.cert_pem) == root_der
    stored_key = (import_inventory.parent / "pki" / CA / "ca.key").read_bytes()
    assert private_digest(stored_key, PassphraseSource.from_file(PASSPHRASE_FILE).read()) == (
        private_digest((mkcert / "rootCA-key.pem").read_bytes())
    ), "the store's key is not mkcert's key"

    # Both the leaf from before the import and the host certificate from after verify, strictly,
    # against the deployed bundle and through the system store.
    new = f"{DIRECTORY}/cert.pem"
    for ca_file in (issue.ca_bundle_path(CA), SYSTEM_STORE):
        for leaf in (OLD_LEAF, new):
            ok, text = verify(ca_file, leaf)
            assert ok, f"{leaf} against {ca_file}: {text}"
    issuer = sh(f"openssl x509 -in {new} -noout -issuer").stdout
    assert "CN=mkcert me@laptop" in issuer.replace(" = ", "="), issuer  # OpenSSL 3.0 or 3.5
    # The control: the lab's own root does not vouch for the mkcert CA's certificates.
    ok, _ = verify(LAB_ROOT, OLD_LEAF)
    assert not ok

    again = deploy_pki(import_inventory)
    assert changed(again) == "-", again[-3000:]  # imported once, issued once
    assert store_digests(PKI) == real_store, "the lab's real CA store changed"

    # The lab's own inventory takes the CA's root out of mon1's system store again. The host
    # certificate and bundle belong to the store copy, which no real run knows: removed by hand.
    real = deploy_pki(ROOT / "inventory.py")
    assert f"{issue.trust_anchor_path(CA)} (removed)" in real, real[-3000:]
    run = sh(f"rm -rf {DIRECTORY} && rm -f {issue.ca_bundle_path(CA)}")
    assert run.returncode == 0, run.stderr
    dangling = sh("find /etc/ssl/certs -type l ! -exec test -e {} \\; -print").stdout
    assert dangling == "", f"links to removed CAs stay in /etc/ssl/certs: {dangling}"
    ok, _ = verify(SYSTEM_STORE, OLD_LEAF)
    assert not ok, "mon1 still trusts the mkcert CA after it left the inventory"
    real = deploy_pki(ROOT / "inventory.py")
    assert changed(real) == "-", real[-3000:]  # mon1 is as the lab's inventory wants it
