"""A tiny TLS daemon that reloads its certificate on a signal: the test stand-in for a service.

Standard library only (it runs in unit tests and on lab hosts alike)::

    python3 lab/tlsd.py --cert C --key K --port 0 --pidfile P --log L --reload-signal USR1

It listens on ``--host``:``--port`` (0: a free port), completes TLS handshakes with ``--cert``
and ``--key`` and closes each connection, writes its pid to ``--pidfile`` once it listens, and
calls itself ``--name`` (the kernel's process name, what ``/proc/<pid>/comm`` shows). On
``--reload-signal`` (HUP, USR1 or USR2) it loads the certificate and key again; the other two
are logged and ignored, so a test sees which signal arrived. Log lines (``--log``, appended)::

    listening on 127.0.0.1:43121 (pid 4242)
    got SIGUSR1: reloaded (certificate sha256 5f0c...)
    got SIGHUP: ignored (reloads on SIGUSR1)
    got SIGUSR1: reload failed, keeps serving the old certificate: <reason>

SIGTERM ends it and removes the pidfile.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import socket
import ssl
import sys
from pathlib import Path
from types import FrameType

RELOAD_SIGNALS = {"HUP": signal.SIGHUP, "USR1": signal.SIGUSR1, "USR2": signal.SIGUSR2}


class Daemon:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.context = self.load()

    def log(self, line: str) -> None:
        with open(self.args.log, "a") as out:
            out.write(line + "\n")

    def load(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.args.cert, self.args.key)
        return context

    def served(self) -> str:
        der = ssl.PEM_cert_to_DER_cert(Path(self.args.cert).read_text())
        return hashlib.sha256(der).hexdigest()

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if signum != RELOAD_SIGNALS[self.args.reload_signal]:
            self.log(f"got {name}: ignored (reloads on SIG{self.args.reload_signal})")
            return
        try:
            self.context = self.load()
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.log(f"got {name}: reload failed, keeps serving the old certificate: {exc}")
            return
        self.log(f"got {name}: reloaded (certificate sha256 {self.served()})")

    def stop(self, signum: int, frame: FrameType | None) -> None:
        Path(self.args.pidfile).unlink(missing_ok=True)
        self.log("stopped")
        sys.exit(0)

    def serve(self) -> None:
        listener = socket.create_server((self.args.host, self.args.port), reuse_port=False)
        for signum in RELOAD_SIGNALS.values():
            signal.signal(signum, self.on_signal)
        signal.signal(signal.SIGTERM, self.stop)
        host, port = listener.getsockname()[:2]
        self.log(f"listening on {host}:{port} (pid {os.getpid()})")
        tmp = Path(f"{self.args.pidfile}.tmp")
        tmp.write_text(f"{os.getpid()}\n")
        tmp.replace(self.args.pidfile)
        while True:
            conn, _ = listener.accept()
            conn.settimeout(5)
            try:
                with self.context.wrap_socket(conn, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tlsd", description=__doc__.splitlines()[0])
    parser.add_argument("--cert", required=True, help="certificate (chain) PEM")
    parser.add_argument("--key", required=True, help="private key PEM")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--pidfile", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--reload-signal", choices=sorted(RELOAD_SIGNALS), default="HUP")
    parser.add_argument("--name", default="tlsd", help="process name (at most 15 characters)")
    args = parser.parse_args(argv)
    # What the delivery agent compares with its 'process': a script is 'python3' otherwise.
    Path("/proc/self/comm").write_text(args.name[:15])
    Daemon(args).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
