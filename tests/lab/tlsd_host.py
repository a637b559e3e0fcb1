"""lab/tlsd.py on a lab host as a systemd unit: a daemon that reloads its certificate on one
signal and logs every signal it gets, so a test sees what it was told and what it serves."""

from __future__ import annotations

import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from tests.helpers import lab_inventory_copy
from tests.lab.run import sh

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "/usr/local/lib/lab-tlsd.py"
PROCESS = "lab-tlsd"
STATE = "/var/lib/pkinfra"


@dataclass(frozen=True)
class Tlsd:
    """One tlsd unit on one lab host."""

    container: str
    address: str
    port: int
    cert: str
    key: str
    signal: str

    @property
    def unit(self) -> str:
        return f"lab-tlsd-{self.port}"

    @property
    def pidfile(self) -> str:
        return f"/run/{self.unit}.pid"

    @property
    def log(self) -> str:
        return f"/var/log/{self.unit}.log"

    def start(self) -> None:
        """(Re)start the unit with an empty log, and wait until it listens."""
        copied = subprocess.run(
            ["docker", "cp", str(ROOT / "lab" / "tlsd.py"), f"{self.container}:{SCRIPT}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert copied.returncode == 0, copied.stderr
        self.stop()
        started = sh(
            self.container,
            f"rm -f {self.log} {self.pidfile} && systemd-run --quiet --collect --unit={self.unit}"
            f" /usr/bin/python3 {SCRIPT} --cert {self.cert} --key {self.key} --host 0.0.0.0"
            f" --port {self.port} --pidfile {self.pidfile} --log {self.log}"
            f" --reload-signal {self.signal} --name {PROCESS}"
            f" && for i in $(seq 100); do test -s {self.pidfile} && exit 0; sleep 0.1; done;"
            f" systemctl status --no-pager {self.unit}; exit 1",
        )
        assert started.returncode == 0, started.stdout + started.stderr

    def stop(self, forget: bool = False) -> None:
        """Stop the unit; with ``forget``, also what the host's delivery agent recorded of it."""
        sh(
            self.container,
            f"systemctl stop {self.unit} 2>/dev/null; systemctl reset-failed {self.unit}"
            " 2>/dev/null; true",
        )
        if forget:
            sh(self.container, f"rm -f {STATE}/served/{PROCESS}.json {STATE}/pending/{PROCESS}")

    def lines(self) -> list[str]:
        """The daemon's log: what it got, and whether it reloaded."""
        out = sh(self.container, f"cat {self.log} 2>/dev/null || true").stdout
        return [line for line in out.splitlines() if line.startswith("got ")]

    def reloads(self) -> int:
        return sum(f"got SIG{self.signal}: reloaded" in line for line in self.lines())

    def wait_reloads(self, count: int, within: float = 10.0) -> int:
        """The reloads once there are ``count`` of them, or when ``within`` seconds have passed
        (a signal is handled a moment after it is sent)."""
        deadline = time.monotonic() + within
        seen = self.reloads()
        while seen < count and time.monotonic() < deadline:
            time.sleep(0.2)
            seen = self.reloads()
        return seen

    def served(self) -> x509.Certificate:
        """The certificate the daemon serves now (read over TLS from here)."""
        pem = ssl.get_server_certificate((self.address, self.port), timeout=10)
        return x509.load_pem_x509_certificate(pem.encode())

    def file_serial(self, path: str | None = None) -> int:
        out = sh(self.container, f"openssl x509 -noout -serial -in {path or self.cert}")
        assert out.returncode == 0, out.stderr
        return int(out.stdout.strip().split("=", 1)[1], 16)

    def wait_serving(self, serial: int, within: float = 10.0) -> None:
        """Until the daemon serves ``serial`` (a signal is handled a moment after it is sent)."""
        deadline = time.monotonic() + within
        served = self.served().serial_number
        while served != serial and time.monotonic() < deadline:
            time.sleep(0.2)
            served = self.served().serial_number
        assert served == serial, f"{self.unit} serves {served:x}, not {serial:x}: {self.lines()}"


WEB1 = Tlsd(
    "pkinfra-web1",
    "172.29.53.20",
    8443,
    "/etc/letsencrypt/live/web/fullchain.pem",
    "/etc/letsencrypt/live/web/privkey.pem",
    "USR1",
)
DB1 = Tlsd(
    "pkinfra-db1",
    "172.29.53.30",
    8443,
    "/etc/pkinfra/certs/postgres/fullchain.pem",
    "/etc/pkinfra/certs/postgres/key.pem",
    "USR2",
)


def in_place(tlsd: Tlsd, certificate: str) -> dict[str, object]:
    """The inventory entry of a service that reads ``certificate`` in place."""
    return {
        "name": PROCESS,
        "certificate": certificate,
        "notify": {"signal": tlsd.signal, "pidfile": tlsd.pidfile, "process": PROCESS},
    }


def inventory_with(directory: Path, extra: dict[str, list[dict[str, object]]]) -> Path:
    """A copy of the lab inventory whose groups' first hosts get ``extra`` services."""
    inventory = lab_inventory_copy(directory)
    text = inventory.read_text()
    anchor = "_inventory = load_or_exit("
    assert text.count(anchor) == 1
    lines = [
        f"{group}[0][1]['services'].extend({services!r})\n" for group, services in extra.items()
    ]
    inventory.write_text(text.replace(anchor, "".join(lines) + anchor))
    return inventory
