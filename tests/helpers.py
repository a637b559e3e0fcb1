"""Certificates that tests make with the openssl command line, as an outside tool would.

``self_signed`` is the one ``openssl req -x509`` the tests share; ``make_mkcert_ca`` builds a CA
the way mkcert does (its ``rootCA.pem`` + ``rootCA-key.pem``) and a leaf it issued, for the
tests that prove an imported CA keeps validating what it issued before. ``installed_agents``
lays the host agents out as a host gets them. ``fake_site`` writes a site of pyinfra ``@fake``
hosts under two CAs.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: ``openssl req -newkey`` arguments for an ECDSA P-256 key.
EC_P256 = ("ec", "-pkeyopt", "ec_paramgen_curve:P-256")

#: What mkcert writes into its root: RSA 3072, certificate signing only, no sub-CAs.
MKCERT_SUBJECT = "/O=mkcert development CA/OU=me@laptop/CN=mkcert me@laptop"
MKCERT_EXTENSIONS = ("basicConstraints=critical,CA:TRUE,pathlen:0", "keyUsage=critical,keyCertSign")


def openssl(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def self_signed(
    key: Path,
    cert: Path,
    subject: str,
    *,
    days: int = 2,
    newkey: Sequence[str] = EC_P256,
    extensions: Sequence[str] = (),
) -> None:
    """A new unencrypted key (PKCS#8, as ``-nodes`` writes it) and its self-signed certificate."""
    openssl(
        "req", "-x509", "-newkey", *newkey, "-nodes", "-subj", subject, "-days", str(days),
        *[arg for ext in extensions for arg in ("-addext", ext)],
        "-keyout", str(key), "-out", str(cert),
    )  # fmt: skip


def make_mkcert_ca(directory: Path, leaf_name: str) -> None:
    """``rootCA.pem`` + ``rootCA-key.pem`` made like mkcert's, and ``old.pem`` (key
    ``old-key.pem``): a server certificate for ``leaf_name`` that this CA issued."""
    directory.mkdir()
    self_signed(
        directory / "rootCA-key.pem",
        directory / "rootCA.pem",
        MKCERT_SUBJECT,
        days=3650,
        newkey=("rsa:3072",),
        extensions=MKCERT_EXTENSIONS,
    )
    openssl(
        "req", "-newkey", *EC_P256, "-nodes",
        "-keyout", "old-key.pem", "-out", "old.csr", "-subj", f"/CN={leaf_name}",
        cwd=directory,
    )  # fmt: skip
    (directory / "ext").write_text(f"subjectAltName=DNS:{leaf_name}\nextendedKeyUsage=serverAuth\n")
    openssl(
        "x509", "-req", "-in", "old.csr", "-CA", "rootCA.pem", "-CAkey", "rootCA-key.pem",
        "-CAcreateserial", "-days", "365", "-extfile", "ext", "-out", "old.pem",
        cwd=directory,
    )  # fmt: skip


def lab_inventory_copy(directory: Path) -> Path:
    """The lab inventory (inventory.py, config.py, group_data/) copied into ``directory`` for a
    test to change, sharing the lab's CA store and state (``pki/``, ``.lab/``); its path."""
    root = Path(__file__).resolve().parents[1]
    for name in ("inventory.py", "config.py"):
        shutil.copy(root / name, directory / name)
    shutil.copytree(root / "group_data", directory / "group_data")
    for shared in ("pki", ".lab"):
        (directory / shared).symlink_to(root / shared)
    return directory / "inventory.py"


def installed_agents(lib_dir: Path) -> Path:
    """The host agents installed under ``lib_dir`` as ``system.agent`` installs them under
    ``/usr/local/lib/pkinfra`` (only the files ``pkinfra.install`` names); returns the delivery
    agent's entry point, to run as ``python3 -I <it>``."""
    from pkinfra import install

    for relative, data in install.agent_files().items():
        target = lib_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    entry = lib_dir / "delivery.py"
    entry.write_text(install.entry_point("delivery", "tests", lib_dir=str(lib_dir)))
    return entry


#: The passphrase of the CAs of a ``fake_site`` (its file ``pass``).
FAKE_PASSPHRASE = "fake-hosts passphrase\n"

#: A ``fake_site``'s group data: a root CA and a sub-CA for names under fake.test.
FAKE_GROUP_DATA = """
pki_dir = "pki"
zones = [{"name": "fake.test"}]
shadow_zone = {"name": "shadow.fake.test"}
dns = {"primary": "PRIMARY"}
cas = {
    "fake-root": {"key_type": "ec-p256", "path_length": 1, "passphrase": {"file": "pass"}},
    "fake-sub": {
        "parent": "fake-root",
        "key_type": "ec-p256",
        "validity_days": 1825,
        "path_length": 0,
        "permitted": ["fake.test"],
        "passphrase": {"file": "pass"},
    },
}
"""


def fake_site(directory: Path, hosts: list[tuple[str, dict[str, Any]]], primary: str) -> Path:
    """A site in ``directory`` whose ``hosts`` (pyinfra names such as ``@fake/h0`` and their
    data) form the group ``fake``, ``primary`` being the DNS primary: its group data, the CAs'
    passphrase file and its ``inventory.py``, whose path is returned. The CA store (``pki``)
    is the caller's to make or link."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "group_data").mkdir()
    (directory / "group_data" / "all.py").write_text(FAKE_GROUP_DATA.replace("PRIMARY", primary))
    (directory / "pass").write_text(FAKE_PASSPHRASE)
    (directory / "pass").chmod(0o600)
    (directory / "inventory.py").write_text(
        "from pkinfra.model import load_or_exit\n\n"
        f"hosts = {hosts!r}\n"
        "_inventory = load_or_exit(__file__, {'fake': hosts})\n"
    )
    return directory / "inventory.py"
