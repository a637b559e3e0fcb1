"""The PkiFiles fact and the certificate commands, run locally with real openssl and a real CA
store: key made by genpkey, CSR by csr_command, files installed by install_command."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from operations.facts import PkiFiles
from operations.util import csr_command, genpkey, install_command, new_name
from pkinfra import issue
from pkinfra.ca import CAStore


def sh(command: str) -> list[str]:
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


@pytest.fixture
def store(tmp_path: Path) -> CAStore:
    cas = CAStore(tmp_path / "pki")
    cas.create_root("root", key_type="ec-p256", unencrypted=True)
    cas.create_sub_ca(
        "sub", "root", parent_passphrase=None, permitted=["sub.test"], unencrypted=True
    )
    return cas


def issue_into(directory: Path, cas: CAStore, names: list[str]) -> str:
    """What operations.pki._issue does, with the host being this machine."""
    lines = sh(csr_command(str(directory), names[0]))
    spki, csr = lines[0], "\n".join(lines[1:]) + "\n"
    issued = cas.sign_csr(
        "sub",
        csr.encode(),
        names=names,
        usages=["client", "server"],
        validity_days=30,
        host="h.sub.test",
        cert_name="svc",
        passphrase=None,
        expected_spki_sha256=spki,
    )
    files = {
        "chain.pem": issued.chain_pem,
        "bundle.pem": issued.bundle_pem,
        "cert.pem": issued.cert_pem,
        "fullchain.pem": issued.fullchain_pem,
    }
    for name, content in files.items():
        Path(new_name(str(directory / name))).write_bytes(content)
    sh(install_command(str(directory), list(files), check_cert=True))
    return spki


def test_fact_reads_a_certificate_directory_in_one_command(tmp_path: Path, store: CAStore) -> None:
    directory = tmp_path / "certs" / "svc"
    directory.mkdir(parents=True)
    sh(genpkey(str(directory / "key.pem"), "ec-p256", *sh("id -un; id -gn")))
    spki = issue_into(directory, store, ["h.sub.test", "alias.sub.test"])
    assert not list(directory.glob(".*pkinfra-new"))

    anchor = tmp_path / "trust" / "pkinfra-root.crt"
    anchor.parent.mkdir()
    anchor.write_bytes(store.root_pem("root"))
    fact = PkiFiles()
    output = sh(
        fact.command(
            directories=[str(directory), str(tmp_path / "absent")],
            files=[f"{anchor.parent}/pkinfra-*.crt", str(tmp_path / "nothing.pem")],
        )
    )
    text = "\n".join(output)
    assert "PRIVATE" not in text and "priv:" not in text
    info = fact.process(output)

    entry = info["directories"][str(directory)]
    key = entry["key"]
    assert key is not None
    assert (key["mode"], key["key_type"], key["spki_sha256"]) == ("0600", "ec-p256", spki)
    cert = entry["cert"]
    assert isinstance(cert, dict)
    record = store.find_current("h.sub.test", "svc")
    assert record is not None
    assert cert["serial"] == record.serial_hex
    assert cert["names"] == ["h.sub.test", "alias.sub.test"]
    assert cert["usages"] == ["client", "server"]
    assert cert["issuer"] == "sub"
    assert cert["issuer_key_id"] == issue.key_id(store.ca("sub"))
    assert cert["spki_sha256"] == spki
    assert cert["not_after"] == record.not_after.isoformat()
    sha = {n: hashlib.sha256((directory / n).read_bytes()).hexdigest() for n in ["chain.pem"]}
    assert entry["sha256"]["chain.pem"] == sha["chain.pem"]
    assert entry["sha256"]["fullchain.pem"] == entry["sha256"]["cert+chain"]
    assert info["directories"][str(tmp_path / "absent")] == {
        "key": None,
        "cert": None,
        "sha256": {},
    }
    assert info["files"] == {str(anchor): hashlib.sha256(anchor.read_bytes()).hexdigest()}


def test_install_refuses_a_certificate_that_does_not_match_the_key(
    tmp_path: Path, store: CAStore
) -> None:
    directory = tmp_path / "svc"
    directory.mkdir()
    me = sh("id -un; id -gn")
    sh(genpkey(str(directory / "key.pem"), "ec-p256", *me))
    issue_into(directory, store, ["h.sub.test"])
    live = (directory / "cert.pem").read_bytes()
    # Another key's certificate arrives (a key replaced meanwhile): nothing is renamed.
    other = tmp_path / "other"
    other.mkdir()
    sh(genpkey(str(other / "key.pem"), "ec-p256", *me))
    issue_into(other, store, ["h.sub.test"])
    Path(new_name(str(directory / "cert.pem"))).write_bytes((other / "cert.pem").read_bytes())
    with pytest.raises(subprocess.CalledProcessError):
        sh(install_command(str(directory), ["cert.pem"], check_cert=True))
    assert (directory / "cert.pem").read_bytes() == live


def test_unreadable_certificate_and_key(tmp_path: Path) -> None:
    directory = tmp_path / "svc"
    directory.mkdir()
    (directory / "key.pem").write_text("junk\n")
    (directory / "cert.pem").write_text("junk\n")
    fact = PkiFiles()
    entry = fact.process(sh(fact.command(directories=[str(directory)])))["directories"][
        str(directory)
    ]
    assert entry["cert"] is False
    assert entry["key"] is not None and entry["key"]["key_type"] is None


def test_unsafe_file_pattern_refused() -> None:
    with pytest.raises(ValueError, match="unsafe file pattern"):
        PkiFiles().command(files=["/etc/x; rm -rf /"])
