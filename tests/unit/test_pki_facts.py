"""The PkiFiles fact and the certificate commands, run locally with real openssl and a real CA
store: keys made by genpkey, CSRs printed and certificates installed by the commands
operations.pki's execution-time functions send (here to this machine's ``sh``)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from operations import pki
from operations.facts import PkiFiles
from operations.util import genpkey, install_command, key_spki_command, new_name
from pkinfra import issue
from pkinfra.ca import CAStore


def sh(command: str) -> list[str]:
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


class ShellHost:
    """A pyinfra host stand-in whose commands run in this machine's ``sh``."""

    print_prefix = "[local] "

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.errors: list[str] = []

    def run_shell_command(self, command: Any, **_: Any) -> tuple[bool, Any]:
        text = command.get_raw_value()
        self.commands.append(text)
        done = subprocess.run(["sh", "-c", text], capture_output=True, text=True)
        return done.returncode == 0, SimpleNamespace(stdout_lines=done.stdout.splitlines())

    def log_styled(self, message: str, **_: Any) -> None:
        self.errors.append(message)


STATE = SimpleNamespace(print_output=False, print_input=False)


@pytest.fixture
def store(tmp_path: Path) -> CAStore:
    cas = CAStore(tmp_path / "pki")
    cas.create_root("root", key_type="ec-p256", unencrypted=True)
    cas.create_sub_ca(
        "sub", "root", parent_passphrase=None, permitted=["sub.test"], unencrypted=True
    )
    return cas


def request(directory: Path, cas: CAStore, names: list[str], **extra: Any) -> dict[str, Any]:
    """``_issue``'s arguments for a certificate of ``sub`` in ``directory``."""
    return {
        "directory": str(directory),
        "names": names,
        "usages": ["client", "server"],
        "issuer": "sub",
        "store": str(cas.directory),
        "passphrase": None,
        "validity_days": 30,
        "host_id": "h.sub.test",
        "cert_name": directory.name,
        "expected_spki": None,
        **extra,
    }


def issue_into(directory: Path, cas: CAStore, names: list[str]) -> str:
    """What operations.pki._issue does, with the host being this machine: the key's
    fingerprint."""
    host = ShellHost()
    assert pki._issue(STATE, host, **request(directory, cas, names)), host.errors
    return sh(key_spki_command(str(directory)))[0]


def test_one_command_makes_every_key_and_csr_and_one_installs_them(
    tmp_path: Path, store: CAStore
) -> None:
    me = sh("id -un; id -gn")
    made = []
    for name in ("web", "api", "peer"):
        directory = tmp_path / "certs" / name
        prepare = [f"mkdir -p {directory}", genpkey(str(directory / "key.pem"), "ec-p256", *me)]
        made.append(request(directory, store, [f"{name}.sub.test"], prepare=prepare))
    host = ShellHost()
    assert pki._issue_all(STATE, host, made), host.errors
    assert len(host.commands) == 2
    fact = PkiFiles()
    info = fact.process(sh(fact.command(directories=[m["directory"] for m in made])))
    for m in made:
        entry = info["directories"][m["directory"]]
        key, cert = entry["key"], entry["cert"]
        assert key is not None and isinstance(cert, dict)
        assert (key["mode"], key["key_type"]) == ("0600", "ec-p256")
        assert cert["spki_sha256"] == key["spki_sha256"]
        assert cert["names"] == m["names"]
        assert entry["sha256"]["fullchain.pem"] == entry["sha256"]["cert+chain"]
        assert not list(Path(m["directory"]).glob(".*pkinfra-new*"))
    # A key replaced since the run read it: refused before signing, nothing else happens.
    again = [{**made[0], "expected_spki": "0" * 64}]
    host = ShellHost()
    assert not pki._issue_all(STATE, host, again)
    assert host.errors == ["certificate web: key.pem changed since the run read it; not signed"]
    assert len(host.commands) == 1


def test_files_travel_inside_one_command_or_are_uploaded(tmp_path: Path) -> None:
    files = {str(tmp_path / "a" / "x.pem"): b"one\n", str(tmp_path / "b" / "y.pem"): b""}
    (command,) = pki._install_files(files, then=f"touch {tmp_path / 'then'}")
    sh(command)
    assert (tmp_path / "a" / "x.pem").read_bytes() == b"one\n"
    assert (tmp_path / "b" / "y.pem").read_bytes() == b""
    assert (tmp_path / "then").exists()
    assert not list(tmp_path.glob("*/.*pkinfra-new"))
    for content in (b"no newline", b"\xff\n", b"PKINFRA-EOF\n", b"tab\there\n"):
        commands = pki._install_files({"/x/y.pem": content})
        assert [type(c).__name__ for c in commands] == ["str", "FileUploadCommand", "str"]


def test_fact_reads_a_certificate_directory_in_one_command(tmp_path: Path, store: CAStore) -> None:
    directory = tmp_path / "certs" / "svc"
    directory.mkdir(parents=True)
    sh(genpkey(str(directory / "key.pem"), "ec-p256", *sh("id -un; id -gn")))
    spki = issue_into(directory, store, ["h.sub.test", "alias.sub.test"])
    assert not list(directory.glob(".*pkinfra-new*"))

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
        sh(
            install_command(
                str(directory), ["cert.pem"], key_spki=sh(key_spki_command(str(other)))[0]
            )
        )
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


def test_fact_reads_rollover_states_in_the_same_command(tmp_path: Path) -> None:
    done = tmp_path / "web.json"
    done.write_text('{"step": "done", "label": "k2"}')  # no newline at the end
    (tmp_path / "api.json").write_text("not json\n")
    fact = PkiFiles()
    paths = [str(tmp_path / n) for n in ("web.json", "api.json", "absent.json")]
    states = fact.process(sh(fact.command(directories=[str(tmp_path / "web")], states=paths)))[
        "states"
    ]
    assert set(states) == set(paths[:2])
    assert states[paths[0]]["state"] == {"step": "done", "label": "k2"}
    assert states[paths[1]]["state"] == {"step": "unreadable"}
    assert states[paths[0]]["now"] > 1_700_000_000
