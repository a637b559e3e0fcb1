"""Services that read their certificate in place, and signals that reach a real TLS daemon.

An in-place service has no copies: the agent records the fingerprint of the certificate it
reads and tells the service once per change. ``lab/tlsd.py`` is a TLS daemon that reloads on one
signal; the tests connect to it and compare the served certificate with the delivered one.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pkinfra.agent import delivery
from pkinfra.model import Notify, Service, load_inventory_file
from pkinfra.services import service_entry
from tests.helpers import installed_agents, self_signed

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="changes file owners: needs root")

ROOT = Path(__file__).resolve().parents[2]
TLSD = ROOT / "lab" / "tlsd.py"


def sha256_of(cert: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).hexdigest()


class Lineage:
    """A certbot-like lineage: ``live/`` links into ``archive/``; a renewal adds a version."""

    def __init__(self, directory: Path) -> None:
        self.archive, self.live = directory / "archive", directory / "live"
        self.archive.mkdir(parents=True)
        self.live.mkdir()
        self.version = 0

    def renew(self, *, new_key: bool = True) -> None:
        self.version += 1
        n = self.version
        key, cert = self.archive / f"privkey{n}.pem", self.archive / f"cert{n}.pem"
        if new_key or n == 1:
            self_signed(key, cert, f"/CN=inplace-{n}")
        else:
            # certbot's reuse_key: a new certificate for the key of the previous version
            key.write_bytes((self.archive / f"privkey{n - 1}.pem").read_bytes())
            csr = self.archive / "csr.pem"
            subprocess.run(
                ["openssl", "req", "-new", "-key", str(key), "-subj", f"/CN=inplace-{n}",
                 "-out", str(csr)],
                check=True, capture_output=True,
            )  # fmt: skip
            subprocess.run(
                ["openssl", "x509", "-req", "-in", str(csr), "-key", str(key), "-days", "2",
                 "-out", str(cert)],
                check=True, capture_output=True,
            )  # fmt: skip
        for name, target in (("cert.pem", cert), ("privkey.pem", key)):
            link = self.live / name
            link.unlink(missing_ok=True)
            link.symlink_to(target)

    @property
    def cert(self) -> Path:
        return self.live / "cert.pem"

    @property
    def key(self) -> Path:
        return self.live / "privkey.pem"


@dataclass
class InPlace:
    lineage: Lineage
    service: dict[str, Any]
    state: Path
    marker: Path

    def run(self, **kw: Any) -> delivery.ServiceResult:
        [result] = delivery.deliver({"services": [self.service]}, state_dir=self.state, **kw)
        return result

    @property
    def notifications(self) -> int:
        return len(self.marker.read_text().splitlines()) if self.marker.exists() else 0

    @property
    def recorded(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state / "served" / "inplace.json").read_text())
        return data

    @property
    def pending(self) -> bool:
        return (self.state / "pending" / "inplace").exists()


@pytest.fixture
def inplace(tmp_path: Path) -> InPlace:
    lineage = Lineage(tmp_path / "le")
    lineage.renew()
    marker = tmp_path / "notified"
    service: dict[str, Any] = {
        "name": "inplace",
        "certificate": "web",
        "lineage": "web",
        "gate": None,
        "files": [],
        "in_place": {"cert": str(lineage.cert), "key": str(lineage.key)},
        "notify": {"command": f"echo x >> {marker}"},
    }
    return InPlace(lineage, service, tmp_path / "state", marker)


def short(cert: Path) -> str:
    return sha256_of(cert)[:16]


def test_first_sighting_records_and_notifies_once(inplace: InPlace) -> None:
    first = short(inplace.lineage.cert)
    planned = inplace.run(plan=True)
    assert planned.change == f"first sighting of certificate {first}"
    assert planned.changed == [] and inplace.notifications == 0
    assert not (inplace.state / "served").exists(), "a plan records nothing"

    done = inplace.run()
    assert done.change == f"first sighting of certificate {first}"
    assert done.notified and inplace.notifications == 1 and not inplace.pending
    assert inplace.recorded["sha256"] == sha256_of(inplace.lineage.cert)
    assert inplace.recorded["certificate"] == str(inplace.lineage.cert)

    for plan in (True, False):
        again = inplace.run(plan=plan)
        assert (again.change, again.notified, again.pending) == (None, None, False)
    assert inplace.notifications == 1


def test_a_changed_certificate_notifies_exactly_once(inplace: InPlace) -> None:
    inplace.run()
    old = short(inplace.lineage.cert)
    inplace.lineage.renew()
    new = short(inplace.lineage.cert)
    planned = inplace.run(plan=True)
    assert planned.change == f"certificate changed (fingerprint {old} -> {new})"
    assert inplace.notifications == 1
    assert inplace.run().notified and inplace.notifications == 2
    assert inplace.run().notified is None and inplace.notifications == 2
    assert inplace.recorded["sha256"] == sha256_of(inplace.lineage.cert)


def test_failed_notification_stays_pending_and_is_retried(inplace: InPlace) -> None:
    inplace.run()
    inplace.lineage.renew()
    good = inplace.service["notify"]
    inplace.service["notify"] = {"command": "echo 'reload refused' >&2; exit 2"}
    failed = inplace.run()
    assert failed.error == "'echo 'reload refused' >&2; exit 2' failed (exit 2): reload refused"
    assert inplace.pending and failed.pending
    planned = inplace.run(plan=True)
    assert planned.change is None and planned.pending, "recorded, but still owed"

    inplace.service["notify"] = good
    retried = inplace.run()
    assert retried.notified and retried.change is None and not inplace.pending
    assert inplace.notifications == 2
    assert inplace.run().notified is None and inplace.notifications == 2


def test_a_new_key_waits_for_the_gate_a_renewal_with_the_same_key_does_not(
    inplace: InPlace, tmp_path: Path
) -> None:
    asked = tmp_path / "gate-asked"
    inplace.service["gate"] = f"touch {asked}"
    inplace.run()  # the first sighting is a new key to the agent: the gate is asked
    assert asked.exists() and inplace.notifications == 1
    asked.unlink()

    inplace.lineage.renew(new_key=False)
    assert inplace.run().notified and not asked.exists(), "same key: no gate"
    assert inplace.notifications == 2

    before = inplace.recorded
    inplace.lineage.renew(new_key=True)
    inplace.service["gate"] = f"touch {asked}; echo 'TLSA for the new key not yet served'; exit 1"
    planned = inplace.run(plan=True)
    assert planned.held is not None and "TLSA record" in planned.held and not asked.exists()
    record = inplace.state / "held" / "inplace"
    assert not record.exists(), "a plan writes nothing down"
    held = inplace.run()
    assert held.held == "TLSA for the new key not yet served" and held.notified is None
    assert inplace.recorded == before and not inplace.pending and inplace.notifications == 2
    # Written down for `pkinfra status`; a hold that goes on keeps its first time.
    assert record.read_text() == "TLSA for the new key not yet served\n"
    os.utime(record, (1, 1))
    inplace.run()
    assert record.stat().st_mtime == 1

    inplace.service["gate"] = "true"
    assert inplace.run().notified and inplace.notifications == 3
    assert inplace.recorded["sha256"] == sha256_of(inplace.lineage.cert)
    assert not record.exists(), "delivered: no longer held"


def test_a_key_that_does_not_match_is_refused(inplace: InPlace, tmp_path: Path) -> None:
    inplace.run()
    before = inplace.recorded
    other_key, other_cert = tmp_path / "o.key", tmp_path / "o.crt"
    self_signed(other_key, other_cert, "/CN=other")
    inplace.lineage.cert.unlink()
    inplace.lineage.cert.symlink_to(other_cert)  # a half-renewed lineage
    result = inplace.run()
    assert result.error == "the key does not match the certificate"
    assert inplace.recorded == before and inplace.notifications == 1 and not inplace.pending


A = {"sha256": "a" * 64, "spki_sha256": "k"}
B_SAME_KEY = {"sha256": "b" * 64, "spki_sha256": "k"}
B_NEW_KEY = {"sha256": "b" * 64, "spki_sha256": "j"}
A_TO_B = f"certificate changed (fingerprint {'a' * 16} -> {'b' * 16})"


@pytest.mark.parametrize(
    ("recorded", "now", "why", "key_changed"),
    [
        (None, A, f"first sighting of certificate {'a' * 16}", True),
        (A, A, None, False),
        (A, B_SAME_KEY, A_TO_B, False),
        (A, B_NEW_KEY, A_TO_B, True),
    ],
)
def test_served_change(
    recorded: dict[str, str] | None, now: dict[str, str], why: str | None, key_changed: bool
) -> None:
    assert delivery.served_change(recorded, now) == (why, key_changed)


def test_the_mapping_names_what_an_in_place_service_reads() -> None:
    site = load_inventory_file(ROOT / "inventory.py")
    web = site.host("web1.example.test")
    svc = Service(
        name="nginx-inplace",
        certificate="web",
        notify=Notify(signal="HUP", pidfile="/run/nginx.pid"),
    )
    entry = service_entry(site, web, svc)
    assert entry["files"] == [] and entry["lineage"] == "web"
    assert entry["in_place"] == {
        "cert": "/etc/letsencrypt/live/web/cert.pem",
        "key": "/etc/letsencrypt/live/web/privkey.pem",
    }
    copies = service_entry(site, web, web.services[0])
    assert "in_place" not in copies, "services with copies keep their mapping unchanged"


# -- a real TLS daemon --------------------------------------------------------------------------


@dataclass
class Tlsd:
    proc: subprocess.Popen[bytes]
    name: str
    pidfile: Path
    log: Path
    port: int

    def served(self) -> str:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock,
            context.wrap_socket(sock) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return hashlib.sha256(der).hexdigest()

    def serves(self, want: str) -> bool:
        return poll(lambda: self.served() == want)

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()


def poll(condition: Callable[[], bool], seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture
def start_tlsd(tmp_path: Path) -> Iterator[Callable[[Path, Path, str], Tlsd]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(cert: Path, key: Path, reload_signal: str) -> Tlsd:
        # A name of its own: the agent looks for processes by name, and other tests may run.
        name = f"tlsd-{secrets.token_hex(4)}"
        pidfile, log = tmp_path / f"{name}.pid", tmp_path / f"{name}.log"
        proc = subprocess.Popen(
            [sys.executable, str(TLSD), "--cert", str(cert), "--key", str(key),
             "--pidfile", str(pidfile), "--log", str(log), "--reload-signal", reload_signal,
             "--name", name],
        )  # fmt: skip
        started.append(proc)
        assert poll(pidfile.exists), (
            f"tlsd did not start: {log.read_text() if log.exists() else ''}"
        )
        port = int(log.read_text().split("listening on 127.0.0.1:")[1].split()[0])
        return Tlsd(proc, name, pidfile, log, port)

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(timeout=5)


def copies(tmp_path: Path, key: Path, cert: Path, notify: dict[str, Any]) -> dict[str, Any]:
    out = tmp_path / "svc"
    return {
        "name": "tlsd",
        "certificate": "one",
        "lineage": "one",
        "files": [
            {"path": str(out / "cert.pem"), "content": "fullchain", "sources": [str(cert)],
             "owner": "root", "group": "root", "mode": "0644"},
            {"path": str(out / "key.pem"), "content": "key", "sources": [str(key)],
             "owner": "root", "group": "root", "mode": "0600"},
        ],
        "notify": notify,
    }  # fmt: skip


@pytest.mark.parametrize("sig", ["USR1", "USR2"])
def test_signal_makes_the_daemon_serve_the_new_certificate(
    tmp_path: Path, start_tlsd: Callable[[Path, Path, str], Tlsd], sig: str
) -> None:
    key1, cert1, key2, cert2 = (tmp_path / n for n in ("1.key", "1.crt", "2.key", "2.crt"))
    self_signed(key1, cert1, "/CN=one")
    self_signed(key2, cert2, "/CN=two")
    state = tmp_path / "state"
    service = copies(tmp_path, key1, cert1, {})
    [first] = delivery.deliver({"services": [service]}, state_dir=state)
    assert first.error is None and len(first.changed) == 2
    out = tmp_path / "svc"
    daemon = start_tlsd(out / "cert.pem", out / "key.pem", sig)
    assert daemon.served() == sha256_of(cert1)

    service = copies(tmp_path, key2, cert2, {"signal": sig, "pidfile": str(daemon.pidfile)})
    service["notify"]["process"] = daemon.name
    [second] = delivery.deliver({"services": [service]}, state_dir=state)
    assert second.notified == f"SIG{sig} to {daemon.name} (pid {daemon.proc.pid})"
    assert daemon.serves(sha256_of(cert2))
    assert poll(lambda: len(daemon.lines()) == 2)
    assert daemon.lines()[1] == f"got SIG{sig}: reloaded (certificate sha256 {sha256_of(cert2)})"


def test_the_signal_sent_is_the_one_named(
    tmp_path: Path, start_tlsd: Callable[[Path, Path, str], Tlsd]
) -> None:
    key1, cert1, key2, cert2 = (tmp_path / n for n in ("1.key", "1.crt", "2.key", "2.crt"))
    self_signed(key1, cert1, "/CN=one")
    self_signed(key2, cert2, "/CN=two")
    state = tmp_path / "state"
    delivery.deliver({"services": [copies(tmp_path, key1, cert1, {})]}, state_dir=state)
    out = tmp_path / "svc"
    daemon = start_tlsd(out / "cert.pem", out / "key.pem", "USR1")
    notify = {"signal": "USR2", "pidfile": str(daemon.pidfile), "process": daemon.name}
    [result] = delivery.deliver(
        {"services": [copies(tmp_path, key2, cert2, notify)]}, state_dir=state
    )
    assert result.notified == f"SIGUSR2 to {daemon.name} (pid {daemon.proc.pid})"
    assert poll(lambda: len(daemon.lines()) == 2)
    assert daemon.lines()[1] == "got SIGUSR2: ignored (reloads on SIGUSR1)"
    assert daemon.served() == sha256_of(cert1)


def test_in_place_daemon_is_told_once_per_renewal(
    inplace: InPlace, start_tlsd: Callable[[Path, Path, str], Tlsd]
) -> None:
    lineage = inplace.lineage
    daemon = start_tlsd(lineage.cert, lineage.key, "USR2")
    inplace.service["notify"] = {
        "signal": "USR2",
        "pidfile": str(daemon.pidfile),
        "process": daemon.name,
    }
    inplace.run()  # first sighting: told once, serves what it served
    assert poll(lambda: len(daemon.lines()) == 2)
    lineage.renew()
    assert daemon.served() != sha256_of(lineage.cert), "reads in place, but only when told"
    assert inplace.run().notified == f"SIGUSR2 to {daemon.name} (pid {daemon.proc.pid})"
    assert daemon.serves(sha256_of(lineage.cert))
    assert inplace.run().notified is None
    # certbot's deploy hook after the same renewal: nothing new, nobody told
    mapping = inplace.state.parent / "services.json"
    mapping.write_text(json.dumps({"services": [inplace.service]}))
    hook = subprocess.run(
        [sys.executable, "-I", str(installed_agents(inplace.state.parent / "lib")),
         "--mapping", str(mapping),
         "--state-dir", str(inplace.state)],
        env={**os.environ, "RENEWED_LINEAGE": "/etc/letsencrypt/live/web"},
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    [report] = json.loads(hook.stdout)["services"]
    assert (report["change"], report["notified"]) == (None, None)
    assert [line.split(":")[0] for line in daemon.lines()[1:]] == ["got SIGUSR2"] * 2
