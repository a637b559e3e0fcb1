"""``kill -9`` at every step of a key switch, then a rerun: the live pair always belongs together.

The switch runs as a host runs it, in its own process: a CA-issued certificate's directory by
the very command the rollover operation yields (``pkinfra.install.switch_command``: the module
and those it imports, fed to the system's ``python3 -I -``), a certbot lineage by
``switch_lineage``. It kills itself with SIGKILL at a named step
(``PKINFRA_SWITCH_CRASH_AT=test-only:<step>``, the test-only fault hook). After each kill a TLS
library must load the live key with the live certificate (as a service that reloads then would),
every live file must be wholly old or wholly new with its owner and mode, and a certbot lineage
must be what certbot reads as consistent. A rerun then finishes the switch, and a further one
finds it done.

A reader that loads the pair over and over while switches go back and forth never sees a key
beside another key's certificate.
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from pkinfra import install, switch
from tests.helpers import openssl, self_signed

ROOT = Path(__file__).resolve().parents[2]
DIRECTORY_STEPS = ["copied", "built", "checked", "exchanged"]
LINEAGE_STEPS = [f"archived-{kind}" for kind in switch.LINEAGE_KINDS] + DIRECTORY_STEPS
#: Owners and modes a switch must keep (as root, a group that is not root's).
GROUP = 1 if os.geteuid() == 0 else os.getgid()
CA_MODES = {
    "key.pem": 0o640,
    "cert.pem": 0o644,
    "chain.pem": 0o644,
    "fullchain.pem": 0o604,
    "bundle.pem": 0o644,
}


def killed(done: subprocess.CompletedProcess[str]) -> bool:
    return done.returncode in (-9, 128 + 9)


def loads(cert: Path, key: Path) -> None:
    """What a TLS service does on a reload: it refuses a key that is not the certificate's."""
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)


def pair(directory: Path, subject: str, ca: Path) -> dict[str, bytes]:
    """A CA-issued certificate's five files (a self-signed leaf, ``ca`` as its chain)."""
    directory.mkdir(parents=True)
    self_signed(directory / "key.pem", directory / "cert.pem", subject)
    chain = ca.read_bytes()
    (directory / "chain.pem").write_bytes(chain)
    (directory / "bundle.pem").write_bytes(chain)
    (directory / "fullchain.pem").write_bytes((directory / "cert.pem").read_bytes() + chain)
    return {name: (directory / name).read_bytes() for name in switch.CA_FILES}


@dataclass
class CaDir:
    live: Path
    source: Path
    old: dict[str, bytes]
    new: dict[str, bytes]

    def run(self, crash: str | None = None) -> subprocess.CompletedProcess[str]:
        """The operation's command, as the host's shell runs it."""
        env = {**os.environ, switch.CRASH_VARIABLE: f"test-only:{crash}" if crash else ""}
        return subprocess.run(
            ["sh", "-c", install.switch_command(str(self.live), str(self.source))],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    def holds(self) -> dict[str, bytes]:
        """The live files; each whole, with its owner and mode, the pair loadable."""
        loads(self.live / "fullchain.pem", self.live / "key.pem")
        loads(self.live / "cert.pem", self.live / "key.pem")
        for name, mode in CA_MODES.items():
            st = (self.live / name).stat()
            assert (stat.S_IMODE(st.st_mode), st.st_gid) == (mode, GROUP), name
        files = {name: (self.live / name).read_bytes() for name in switch.CA_FILES}
        assert files in (self.old, self.new), "a mix of old and new files"
        assert sorted(p.name for p in self.live.iterdir()) == sorted([*switch.CA_FILES, "next"])
        return files


@pytest.fixture
def ca_dir(tmp_path: Path) -> CaDir:
    self_signed(tmp_path / "ca-key.pem", tmp_path / "ca.pem", "/CN=Test CA")
    live = tmp_path / "certs" / "postgres"
    old = pair(live, "/CN=db1 old key", tmp_path / "ca.pem")
    new = pair(live / "next", "/CN=db1 next key", tmp_path / "ca.pem")
    for name, mode in CA_MODES.items():
        os.chown(live / name, -1, GROUP)
        os.chmod(live / name, mode)
    os.chmod(live, 0o750)
    return CaDir(live, live / "next", old, new)


@pytest.mark.parametrize("step", DIRECTORY_STEPS)
def test_a_kill_at_any_step_of_a_directory_switch_is_made_good(ca_dir: CaDir, step: str) -> None:
    done = ca_dir.run(crash=step)
    assert killed(done), done.stdout + done.stderr
    after_kill = ca_dir.holds()
    assert after_kill == (ca_dir.new if step == "exchanged" else ca_dir.old)

    done = ca_dir.run()
    assert done.returncode == 0, done.stderr
    assert ca_dir.holds() == ca_dir.new
    assert not switch.staging(ca_dir.live).exists(), "what the kill left is gone"
    assert stat.S_IMODE(ca_dir.live.stat().st_mode) == 0o750
    assert (ca_dir.source / "key.pem").read_bytes() == ca_dir.new["key.pem"], "next/ is kept"

    again = ca_dir.run()
    assert again.returncode == 0 and "switched already" in again.stdout, again.stderr


def test_a_directory_switch_refuses_a_key_that_is_not_the_certificates(ca_dir: CaDir) -> None:
    other = ca_dir.live.parent / "other"
    other.mkdir()
    self_signed(other / "key.pem", other / "cert.pem", "/CN=another key")
    shutil.copy(other / "key.pem", ca_dir.source / "key.pem")
    done = ca_dir.run()
    assert done.returncode == 1
    assert done.stderr.strip().endswith(
        f"is not the certificate of the key {ca_dir.source}/key.pem"
    )
    assert ca_dir.holds() == ca_dir.old
    assert not switch.staging(ca_dir.live).exists()


def test_a_filesystem_that_cannot_exchange_leaves_everything_as_it_was(
    ca_dir: CaDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(a: Path, b: Path) -> None:
        raise switch.SwitchError(f"cannot exchange {b} with {a}: Invalid cross-device link")

    monkeypatch.setattr(switch, "exchange", refuse)
    with pytest.raises(switch.SwitchError, match="cross-device"):
        switch.switch_directory(ca_dir.live, ca_dir.source)
    assert ca_dir.holds() == ca_dir.old
    assert not switch.staging(ca_dir.live).exists()


def test_a_reader_never_sees_a_key_beside_another_keys_certificate(ca_dir: CaDir) -> None:
    """Switches back and forth while a reader loads the pair from one version of the
    directory at a time (a directory descriptor, as a process that opened it holds it)."""
    back = ca_dir.live.parent / "back"
    shutil.copytree(ca_dir.live, back, ignore=shutil.ignore_patterns("next"))
    stop = threading.Event()
    seen = {"loaded": 0, "gone": 0}
    failures: list[str] = []

    def read() -> None:
        while not stop.is_set():
            try:
                fd = os.open(ca_dir.live, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                continue
            try:
                loads(
                    Path(f"/proc/self/fd/{fd}/fullchain.pem"), Path(f"/proc/self/fd/{fd}/key.pem")
                )
                seen["loaded"] += 1
            except FileNotFoundError:
                seen["gone"] += 1  # that version was removed after the exchange
            except ssl.SSLError as exc:
                failures.append(str(exc))
            finally:
                os.close(fd)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(12):
            assert switch.switch_directory(ca_dir.live, ca_dir.source if n % 2 == 0 else back)
    finally:
        stop.set()
        reader.join()
    assert failures == []
    assert seen["loaded"] > 12, seen


# -- certbot lineages ---------------------------------------------------------------------------

_VERSION = re.compile(r"^(cert|privkey|chain|fullchain)([0-9]+)\.pem$")


def certbot_versions(live: Path) -> tuple[dict[str, int], int]:
    """What certbot reads of a lineage: the version each live link points to (it must be a
    relative link into the lineage's archive, named as certbot names them) and the newest
    version the archive has all four files of."""
    current = {}
    archive = live.parent.parent / "archive" / live.name
    for kind in switch.LINEAGE_KINDS:
        link = live / f"{kind}.pem"
        assert link.is_symlink(), link
        target = os.readlink(link)
        assert not os.path.isabs(target), target
        assert (live / target).parent.samefile(archive), target
        found = _VERSION.match(os.path.basename(target))
        assert found and found.group(1) == kind, target
        current[kind] = int(found.group(2))
    versions: dict[str, set[int]] = {kind: set() for kind in switch.LINEAGE_KINDS}
    for name in os.listdir(archive):
        if found := _VERSION.match(name):
            versions[found.group(1)].add(int(found.group(2)))
    common = set.intersection(*versions.values())
    return current, max(common)


def certbot_lineage(config: Path, name: str, key: Path, cert: Path, chain: bytes) -> None:
    """A lineage as certbot lays it out: ``archive/<name>/<kind>1.pem``, ``live/<name>/`` with
    relative links and a README."""
    archive, live = config / "archive" / name, config / "live" / name
    archive.mkdir(parents=True)
    live.mkdir(parents=True)
    files = {
        "cert": cert.read_bytes(),
        "privkey": key.read_bytes(),
        "chain": chain,
        "fullchain": cert.read_bytes() + chain,
    }
    for kind, data in files.items():
        (archive / f"{kind}1.pem").write_bytes(data)
        (live / f"{kind}.pem").symlink_to(f"../../archive/{name}/{kind}1.pem")
    (archive / "privkey1.pem").chmod(0o640)
    os.chown(archive / "privkey1.pem", -1, GROUP)
    (live / "README").write_text("certbot's README\n")


def certbot_renewal(config: Path, name: str, cert_from: Path) -> None:
    """certbot's renewal with ``reuse_key``, as an older certbot wrote it: version 2, its key
    a link to version 1's."""
    archive, live = config / "archive" / name, config / "live" / name
    for kind in ("cert", "chain", "fullchain"):
        shutil.copy(cert_from / f"{kind}.pem", archive / f"{kind}2.pem")
    (archive / "privkey2.pem").symlink_to("privkey1.pem")
    for kind in switch.LINEAGE_KINDS:
        (live / f"{kind}.pem").unlink()
        (live / f"{kind}.pem").symlink_to(f"../../archive/{name}/{kind}2.pem")


@dataclass
class Lineages:
    config: Path
    live: Path
    source: Path

    def run(self, crash: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, switch.CRASH_VARIABLE: f"test-only:{crash}" if crash else ""}
        code = (
            f"import sys; sys.path.insert(0, {str(ROOT)!r}); from pathlib import Path\n"
            "from pkinfra import switch\n"
            f"print(switch.switch_lineage(Path({str(self.live)!r}), Path({str(self.source)!r})))"
        )
        return subprocess.run(
            [sys.executable, "-I", "-c", code],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    def record(self, directory: Path) -> bytes:
        loads(directory / "fullchain.pem", directory / "privkey.pem")
        loads(directory / "cert.pem", directory / "privkey.pem")
        return switch.public_key(directory / "privkey.pem", cert=False)


@pytest.fixture
def lineages(tmp_path: Path) -> Lineages:
    config = tmp_path / "letsencrypt"
    self_signed(tmp_path / "ca-key.pem", tmp_path / "ca.pem", "/CN=Fake ACME CA")
    chain = (tmp_path / "ca.pem").read_bytes()
    for name in ("web", "web-next"):
        self_signed(tmp_path / f"{name}.key", tmp_path / f"{name}.crt", f"/CN={name}")
        certbot_lineage(config, name, tmp_path / f"{name}.key", tmp_path / f"{name}.crt", chain)
    # web was renewed once (same key): its live links point to version 2.
    renewed = tmp_path / "renewed"
    renewed.mkdir()
    key = config / "archive" / "web" / "privkey1.pem"
    openssl("req", "-x509", "-new", "-key", str(key), "-subj", "/CN=web", "-days", "2",
            "-out", str(renewed / "cert.pem"))  # fmt: skip
    (renewed / "chain.pem").write_bytes(chain)
    (renewed / "fullchain.pem").write_bytes((renewed / "cert.pem").read_bytes() + chain)
    certbot_renewal(config, "web", renewed)
    return Lineages(config, config / "live" / "web", config / "live" / "web-next")


@pytest.mark.parametrize("step", LINEAGE_STEPS)
def test_a_kill_at_any_step_of_a_lineage_switch_is_made_good(lineages: Lineages, step: str) -> None:
    old, new = lineages.record(lineages.live), lineages.record(lineages.source)
    assert certbot_versions(lineages.live) == ({k: 2 for k in switch.LINEAGE_KINDS}, 2)

    done = lineages.run(crash=step)
    assert killed(done), done.stdout + done.stderr
    current, common = certbot_versions(lineages.live)
    assert set(current.values()) in ({2}, {3}), current
    assert lineages.record(lineages.live) == (new if step == "exchanged" else old)
    if common == 3:
        # A complete generation certbot would link to by itself (``ensure_deployed``): the
        # next pair, whole.
        archive = lineages.config / "archive" / "web"
        loads(archive / "fullchain3.pem", archive / "privkey3.pem")

    done = lineages.run()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "switched (archive generation 3)" or step == "exchanged"
    assert certbot_versions(lineages.live) == ({k: 3 for k in switch.LINEAGE_KINDS}, 3)
    assert lineages.record(lineages.live) == new
    for kind in switch.LINEAGE_KINDS:
        assert (lineages.live / f"{kind}.pem").read_bytes() == (
            lineages.source / f"{kind}.pem"
        ).read_bytes()
    key = lineages.config / "archive" / "web" / "privkey3.pem"
    assert (stat.S_IMODE(key.stat().st_mode), key.stat().st_gid) == (0o640, GROUP)
    assert (lineages.live / "README").read_text() == "certbot's README\n"
    assert not switch.staging(lineages.live).exists()
    assert lineages.run().stdout.strip() == "switched already"


def test_certbots_interrupted_links_do_not_come_back(lineages: Lineages) -> None:
    """certbot's ``previous_*.pem`` links (an update of its own, killed) would put the old
    links back the next time certbot reads the lineage: the switched directory has none."""
    for kind in switch.LINEAGE_KINDS:
        (lineages.live / f"previous_{kind}.pem").symlink_to(f"../../archive/web/{kind}1.pem")
    assert lineages.run().returncode == 0
    assert not list(lineages.live.glob("previous_*"))


def test_a_running_certbot_is_waited_for(
    lineages: Lineages, monkeypatch: pytest.MonkeyPatch
) -> None:
    """certbot holds its lock for a whole run: the switch waits, then gives up unchanged."""
    lock = lineages.config / ".certbot.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(lock)!r}, os.O_CREAT | os.O_WRONLY, 0o600)\n"
            "fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "print('held', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        monkeypatch.setattr(switch, "CERTBOT_LOCK_WAIT", 0.6)
        old = lineages.record(lineages.live)
        with pytest.raises(switch.SwitchError, match="certbot is running"):
            switch.switch_lineage(lineages.live, lineages.source)
        assert lineages.record(lineages.live) == old
    finally:
        holder.communicate("")
    assert switch.switch_lineage(lineages.live, lineages.source).startswith("switched")
    assert not lock.exists(), "released as certbot releases it"
