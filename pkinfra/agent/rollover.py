"""Key rollover of an ACME certificate without a DANE gap: ``pkinfra-rollover``, on the host.

RFC 7671: the TLSA RRset must always hold a record that matches the certificate being served.
The rollover is the one ``pkinfra.rollover`` describes (it decides each next step; this carries
them out), in two commands, with its state in ``/etc/pkinfra/rollover/<certificate>.json``:

1. ``start CERT --label L``: certbot issues a second lineage ``<CERT>-next`` (a new lineage has
   a new key), the publisher makes the TLSA RRset "3 1 1" of the current key *and* the next one
   and waits until every authoritative server serves both. The state records when.
2. ``finish CERT``: only once every authoritative server serves the next record (checked again)
   and at least the TTL has passed since (so no cache still holds an RRset without it), the
   next lineage's key, certificate and chain become the newest generation of the main lineage
   and its ``live/`` links switch to them in one atomic step (``pkinfra.switch``: the lineage
   never shows a key beside another key's certificate, even after a ``kill -9``); no ACME
   request is needed. certbot's deploy hooks then run as after a renewal and publish and
   deliver. Once every service of the lineage has the new files and has been told, the
   ``-next`` lineage is deleted and the old record removed.

The main lineage keeps its name, so nothing else (services, renewal timer, pyinfra) needs to
know that a rollover happened; certbot's next renewal reuses the new key. Until the end of step
2, the old key's record is kept in the state (``keep``) and the publisher keeps publishing it:
no record is removed while its certificate may still be served.

Interrupted, either step resumes where it stopped: ``start`` again finds the next lineage and
republishes; ``finish`` removes what a killed switch left beside the lineage and switches, or
finds it switched, and runs the hooks again. A switch that cannot be made (a broken next
lineage) changes nothing and leaves the rollover at step 1. ``abort CERT`` (only before the
switch) deletes the next lineage and its record.

The configuration (``/etc/pkinfra/rollover.json``, written by the deploy; no secret)::

    {"state_dir": "/etc/pkinfra/rollover", "dane_config": "/etc/pkinfra/dane.json",
     "delivery": ["python3", "/usr/local/lib/pkinfra/delivery.py", "--mapping", "..."],
     "certificates": {"mail": {"next": "mail-next", "ttl": 60,
                               "certbot_next": ["certbot", "certonly", "..."]}}}

Standard library, dnspython 2.3 and cryptography 38 only: this runs on Debian 12 hosts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pkinfra import rollover as planner
from pkinfra import switch, tlsa
from pkinfra.agent import dane_publish, status_probe
from pkinfra.agent.errors import PkinfraError
from pkinfra.dnsupdate import DNSUpdateError

CONFIG = "/etc/pkinfra/rollover.json"
LIVE = Path("/etc/letsencrypt/live")
#: What a step reports when it has to wait (not a failure: run ``finish`` again later).
EXIT_WAIT = 3
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


#: Runs a command (``args``, extra ``env``), its output captured: ``_run`` or a test's stand-in.
Runner = Callable[..., subprocess.CompletedProcess[str]]


class RolloverError(PkinfraError):
    """One line for the operator: which certificate, which step, and why."""


def _say(message: str) -> None:
    print(f"pkinfra-rollover: {message}", flush=True)


def record_of(path: Path) -> str:
    """'3 1 1 <hex>' of a certificate or private key file (only its public half is used)."""
    try:
        return tlsa.TLSARecord.from_pem(path.read_bytes()).to_text()
    except OSError as exc:
        raise RolloverError(f"{path}: {exc.strerror}") from None
    except tlsa.TLSAError as exc:
        raise RolloverError(f"{path}: {exc}") from None


# -- state --------------------------------------------------------------------------------------


class Rollover:
    """One certificate's rollover: its configuration, its state file, its lineages."""

    def __init__(
        self,
        cert: str,
        config: dict[str, Any],
        *,
        live: Path = LIVE,
        run: Runner | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        certs = config.get("certificates", {})
        if cert not in certs:
            known = ", ".join(sorted(certs)) or "none"
            raise RolloverError(f"no rollover configured for certificate '{cert}' (known: {known})")
        self.cert = cert
        self.config = config
        self.spec: dict[str, Any] = certs[cert]
        self.next = str(self.spec.get("next", f"{cert}-next"))
        self.ttl = float(self.spec.get("ttl", 0))
        self.live = live
        self.state_dir = Path(config.get("state_dir", "/etc/pkinfra/rollover"))
        self.run = run or _run
        self.clock = clock
        self.sleep = sleep

    # files
    @property
    def state_file(self) -> Path:
        return self.state_dir / f"{self.cert}.json"

    @property
    def backup_file(self) -> Path:
        return self.state_dir / f"{self.cert}.previous-key.pem"

    def lineage(self, name: str | None = None) -> Path:
        return self.live / (name or self.cert)

    def state(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise RolloverError(f"cannot read {self.state_file}: {exc}") from None
        return data

    def save(self, **fields: Any) -> dict[str, Any]:
        """Write the state durably (beside, fsync, rename): a rerun must find it."""
        state = {**self.state(), **fields, "updated": int(self.clock())}
        self.state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.state_dir, prefix=f".{self.cert}.")
        with os.fdopen(fd, "w") as out:
            json.dump(state, out, indent=1, sort_keys=True)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.state_file)
        return state

    # DNS
    def _publications(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        path = self.config.get("dane_config", dane_publish.CONFIG)
        if not Path(path).exists():
            return {}, []  # no TLSA publication on this host: nothing to wait for
        dane = dane_publish.load(path)
        pubs = [p for p in dane.get("publications", []) if self.cert in dane_publish.lineages(p)]
        return dane, pubs

    def publish(self) -> None:
        """Publish the RRset the state asks for; return once every server serves it."""
        dane, pubs = self._publications()
        if not pubs:
            return
        client = dane_publish.client_for(dane)
        seen = dane_publish.Seen(dane.get("seen_file"))
        for pub in pubs:
            _say(
                dane_publish.publish(
                    client,
                    pub,
                    int(dane.get("ttl", 60)),
                    float(dane.get("timeout", 60)),
                    rollover_dir=str(self.state_dir),
                    mapping=dane.get("services_mapping"),
                    seen=seen,
                )
            )

    def served_ttl(self) -> int:
        """The longest TTL the primary serves the certificate's TLSA RRsets with now."""
        dane, pubs = self._publications()
        if not pubs:
            return 0
        client = dane_publish.client_for(dane)
        return max(client.served_ttl(client.follow_cnames(pub["owner"])[0], "TLSA") for pub in pubs)

    def visible(self) -> str:
        """'' when every authoritative server serves every wanted record, else why not."""
        dane, pubs = self._publications()
        if not pubs:
            return ""
        client = dane_publish.client_for(dane)
        for pub in pubs:
            why = dane_publish.visible(
                client,
                pub,
                timeout=5.0,
                rollover_dir=str(self.state_dir),
                mapping=dane.get("services_mapping"),
            )
            if why:
                return why
        return ""

    def plan(self, *, asked: str | None = None, wait: float = 0.0) -> planner.Step:
        """What comes next (``pkinfra.rollover``); ``asked``: ``start``'s label."""
        seen = planner.Seen(
            asked=asked, explicit=asked is not None, now=self.clock(), ttl=self.ttl, wait=wait
        )
        return planner.plan(planner.ACME, self.state(), seen)

    # -- step 1 ---------------------------------------------------------------------------------

    def start(self, label: str) -> str:
        while True:
            step = self.plan(asked=label)
            if step.action == planner.REFUSE:
                raise RolloverError(f"{self.cert}: {step.reason}")
            if step.action == planner.NOTHING:
                return f"{self.cert}: {step.reason}; nothing to do"
            if step.action == planner.BEGIN:
                self._begin(label, step)
            elif step.action == planner.PUBLISH:
                self._publish_next(step)
                held = planner.held_ttl(self.state(), self.ttl)
                return (
                    f"{self.cert}: step 1 done: TLSA for the current and the next key served by "
                    f"every authoritative server; step 2 (finish) from {int(held)} s on"
                )
            else:
                return f"{self.cert}: step 1 of the rollover to '{label}' is done; run finish"

    def _begin(self, label: str, step: planner.Step) -> None:
        current = self.lineage() / "cert.pem"
        if not current.exists():
            raise RolloverError(f"{self.cert}: no certificate at {current} to roll over from")
        old = record_of(current)
        self.save(step=step.saves, label=label, keep=[old], started=int(self.clock()))

    def _publish_next(self, step: planner.Step) -> None:
        old = (self.state().get("keep") or [record_of(self.lineage() / "cert.pem")])[0]
        next_cert = self.lineage(self.next) / "cert.pem"
        if next_cert.exists() and record_of(next_cert) != old:
            _say(f"{self.cert}: next lineage {self.next} exists already (resumed)")
        else:
            _say(f"{self.cert}: issuing the next lineage {self.next} (a new key)")
            done = self.run(self.spec["certbot_next"])
            if done.returncode != 0:
                raise RolloverError(
                    f"{self.cert}: certbot could not issue {self.next}: {_last_line(done)}"
                )
        new = record_of(next_cert)
        if new == old:
            raise RolloverError(f"{self.cert}: lineage {self.next} has the current key")
        # A cache may hold the set served until now for the TTL it was served with, which is
        # longer than this one when the inventory lowered it: step 2 waits for the longer.
        cached_ttl = self.served_ttl()
        self.publish()
        self.save(
            step=step.saves,
            next_record=new,
            served_since=int(self.clock()),
            cached_ttl=cached_ttl,
        )

    # -- step 2 ---------------------------------------------------------------------------------

    def finish(self, wait: float = 0.0) -> str:
        if not planner.active(planner.ACME, self.state()):
            return f"{self.cert}: no rollover in progress; nothing to do"
        while True:
            step = self.plan(wait=wait)
            if step.action in (planner.BEGIN, planner.PUBLISH):
                raise RolloverError(f"{self.cert}: step 1 did not complete; run start again")
            if step.action == planner.WAIT:
                self._gate()
                held = planner.held_ttl(self.state(), self.ttl)
                raise Waiting(
                    f"{self.cert}: the next record has been served for "
                    f"{int(held + planner.SERVED_SINCE_RESOLUTION - step.left)} s of the TTL"
                    f" ({int(held)} s); step 2 in {int(step.left) + 1} s"
                )
            if step.action == planner.SWITCH:
                if step.gate:
                    self._gate(step.left)
                    self.save(step=planner.GATE_PASSED[planner.ACME])
                self._switch(self.state())
            elif step.action == planner.DELIVER:
                self._deliveries_done()
            elif step.action == planner.RETIRE:
                self._retire()
                self.backup_file.unlink(missing_ok=True)
                self.save(step=step.saves, keep=[], finished=int(self.clock()))
                return f"{self.cert}: key rolled over to '{step.label}'; the old record is gone"
            else:
                raise RolloverError(f"{self.cert}: {step.reason}")
            self.save(step=step.saves)

    def _gate(self, hold: float = 0.0) -> None:
        """Every authoritative server serves the next record (after ``hold`` s: again)."""
        why = self.visible()
        if why:
            raise RolloverError(f"{self.cert}: step 2 refused: {why}")
        if hold > 0:
            _say(f"{self.cert}: waiting {hold:.0f} s until the TTL has passed")
            self.sleep(hold)
            why = self.visible()
            if why:
                raise RolloverError(f"{self.cert}: step 2 refused: {why}")

    def _switch(self, state: dict[str, Any]) -> None:
        """The next lineage's files into the main lineage in one step, then certbot's deploy
        hooks, as after a renewal."""
        live, source = self.lineage(), self.lineage(self.next)
        want = state["next_record"]
        if record_of(source / "cert.pem") != want:
            self.save(step=planner.SAVES[planner.ACME][planner.PUBLISH])
            raise RolloverError(
                f"{self.cert}: lineage {self.next} no longer has the key whose record was "
                "published; abort and start again"
            )
        self._put_back_old_key(live, want)
        try:
            how = switch.switch_lineage(live, source)
        except (switch.SwitchError, OSError) as exc:
            self.save(step=planner.SAVES[planner.ACME][planner.PUBLISH])
            raise RolloverError(
                f"{self.cert}: the switch to the next key failed, the old key stays "
                f"(still at step 1): {exc}"
            ) from None
        _say(f"{self.cert}: {self.cert} has the next key: {how}; certbot's deploy hooks deliver it")
        self._deploy_hooks(live)
        switch.crash_point("hooks-run")

    def _put_back_old_key(self, live: Path, want: str) -> None:
        """An agent before the atomic switch wrote the next key over the lineage's key, then
        renewed; killed in between, it left that key beside the old certificate and the old key
        in ``backup_file``: the old key goes back first, so the pair matches until the switch."""
        key_file = (live / "privkey.pem").resolve()
        if (
            self.backup_file.exists()
            and record_of(key_file) == want
            and record_of(live / "cert.pem") != want
        ):
            _write_secret(key_file, self.backup_file.read_bytes())

    def _deploy_hooks(self, live: Path) -> None:
        """What certbot runs after a renewal: each executable of ``renewal-hooks/deploy``, in
        order, told the lineage and its names; a failing one is reported, the rest still run."""
        hooks = self.live.parent / "renewal-hooks" / "deploy"
        found = sorted(hooks.iterdir()) if hooks.is_dir() else []
        cert = (live / "cert.pem").read_bytes()
        env = {
            "RENEWED_LINEAGE": str(live),
            "RENEWED_DOMAINS": " ".join(status_probe.cert_info(cert).get("names", [])),
        }
        for hook in found:
            if not hook.is_file() or not os.access(hook, os.X_OK) or hook.name.endswith("~"):
                continue
            done = self.run([str(hook)], env=env)
            if done.returncode != 0:
                _say(f"{self.cert}: deploy hook {hook.name} failed: {_last_line(done)}")

    def _deliveries_done(self) -> None:
        command = self.config.get("delivery")
        if not command:
            return
        done = self.run([*command, "--lineage", self.cert])
        problems = []
        try:
            report = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout else {}
        except (ValueError, IndexError):
            report = {}
        for svc in report.get("services", []):
            if svc.get("error") or svc.get("held") or svc.get("pending"):
                problems.append(
                    f"{svc['name']}: {svc.get('error') or svc.get('held') or 'pending'}"
                )
        if done.returncode != 0 and not problems:
            problems.append(_last_line(done))
        if problems:
            raise RolloverError(
                f"{self.cert}: the old record stays until every service has the new key: "
                + "; ".join(problems)
            )

    def _retire(self) -> None:
        if self.lineage(self.next).exists():
            done = self.run(["certbot", "delete", "--cert-name", self.next, "--non-interactive"])
            if done.returncode != 0:
                raise RolloverError(
                    f"{self.cert}: certbot could not delete {self.next}: {_last_line(done)}"
                )
        self.save(keep=[])
        self.publish()

    # -- abort ----------------------------------------------------------------------------------

    def abort(self) -> str:
        why = planner.abort_refusal(planner.ACME, self.state())
        if why:
            return f"{self.cert}: {why}"
        if self.lineage(self.next).exists():
            done = self.run(["certbot", "delete", "--cert-name", self.next, "--non-interactive"])
            if done.returncode != 0:
                raise RolloverError(
                    f"{self.cert}: could not delete {self.next}: {_last_line(done)}"
                )
        self.save(keep=[])
        self.publish()
        self.save(step="aborted")
        return f"{self.cert}: rollover aborted; the current key stays, its record alone"

    def status(self) -> dict[str, Any]:
        state = self.state()
        out = {"certificate": self.cert, "ttl": self.ttl, **state}
        step = self.plan()
        if step.action == planner.WAIT or step.gate:
            out["wait"] = int(step.left)
        return out


class Waiting(RolloverError):
    """Step 2 is not due yet (not an error: run it again later)."""


# -- helpers ------------------------------------------------------------------------------------


def _run(
    args: Sequence[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={"PATH": PATH, "LANG": "C.UTF-8", **(env or {})},
        timeout=600,
        check=False,
    )


def _last_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit {done.returncode}"


def _write_secret(path: Path, data: bytes) -> None:
    """Key bytes to ``path``: created 0600 beside it, fsync'd, renamed over it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pkinfra-rollover",
        description="Roll an ACME certificate's key over without a DANE gap (two steps).",
    )
    parser.add_argument("--config", default=CONFIG)
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="step 1: next key, TLSA for both")
    start.add_argument("certificate")
    start.add_argument("--label", required=True, help="names this rollover (the inventory's)")
    finish = sub.add_parser("finish", help="step 2: switch to the next key, drop the old record")
    finish.add_argument("certificate")
    finish.add_argument(
        "--wait", type=float, default=0.0, help="wait up to this many seconds for the TTL"
    )
    abort = sub.add_parser("abort", help="undo step 1 (before the switch only)")
    abort.add_argument("certificate")
    status = sub.add_parser("status", help="the state of each certificate, as JSON")
    status.add_argument("certificate", nargs="?")
    args = parser.parse_args(argv)
    try:
        config = dane_publish.load(args.config)
        if args.command == "status":
            names = [args.certificate] if args.certificate else sorted(config["certificates"])
            print(json.dumps({n: Rollover(n, config).status() for n in names}, sort_keys=True))
            return 0
        rollover = Rollover(args.certificate, config)
        if args.command == "start":
            _say(rollover.start(args.label))
        elif args.command == "finish":
            _say(rollover.finish(wait=args.wait))
        else:
            _say(rollover.abort())
    except Waiting as exc:
        _say(str(exc))
        return EXIT_WAIT
    except (RolloverError, dane_publish.PublishError, DNSUpdateError, tlsa.TLSAError) as exc:
        print(f"pkinfra-rollover: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
