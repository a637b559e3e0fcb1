"""Operations the lab needs and a production site does not: the lab's ACME server (Pebble and its
TLS certificate from the lab CA) and its validating resolver (unbound). A real site has Let's
Encrypt and its own resolvers; pkinfra's own operations live in ``operations/``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, OperationError, StringCommand, operation
from pyinfra.api.command import FileUploadCommand

from operations.context import announce, run_on_host, upload_to_host
from operations.dns import _install, _refuse, _Text
from operations.dns import _sha256 as _text_sha256
from operations.facts import FileDigest, PkiFiles, ProcessId
from operations.util import new_name, q, run_checked, run_staged
from pkinfra import acme

PEBBLE_STATE = "/run/pkinfra-pebble.args"
PEBBLE_LOG = "/var/log/pebble.log"
UNBOUND_PID = "/run/unbound.pid"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fail(state: Any, target: Any, message: str) -> bool:
    """An execution-time failure in one line; the operation then counts as failed."""
    target.log_styled(f"pkinfra: {message}", fg="red", log_func=logger.error)
    return False


# -- the ACME server (Pebble) ----------------------------------------------------------------


def _sign_server(state: Any, host: Any, directory: str, names: list[str], bundle: str) -> bool:
    """Execution time: a CSR made on the host with its key, signed by the lab CA here."""
    key = f"{directory}/key.pem"
    ok, output = run_on_host(
        state, host, StringCommand(f"openssl req -new -key {q(key)} -subj {q('/CN=' + names[0])}")
    )
    if not ok:
        return _fail(state, host, f"ACME server certificate: cannot make a CSR with {key}")
    csr = ("\n".join(output.stdout_lines) + "\n").encode()
    try:
        cert = acme.sign_server_csr(Path(bundle), csr, names)
    except acme.AcmeError as exc:
        return _fail(state, host, f"ACME server certificate: {exc}")
    staged = new_name(f"{directory}/cert.pem")
    if not upload_to_host(state, host, BytesIO(cert), staged):
        return _fail(state, host, f"ACME server certificate: cannot upload {staged}")
    ok, _ = run_on_host(
        state,
        host,
        StringCommand(f"chmod 0644 {q(staged)} && mv -f {q(staged)} {q(directory)}/cert.pem"),
    )
    return bool(ok) or _fail(state, host, f"ACME server certificate: cannot install in {directory}")


@operation()
def server_certificate(
    directory: str,
    names: Sequence[str],
    ca_bundle: str,
    ca_key_id: str,
    current: Any = None,
    now: str | None = None,
):
    """The ACME server's TLS key (made on the host) and a certificate of the lab CA for it.

    + directory: holds ``key.pem`` and ``cert.pem``
    + names: the server's DNS names
    + ca_bundle: the lab CA's certificate on the controller (its key beside it signs)
    + ca_key_id: the CA's subject key identifier, hex (a certificate naming another is replaced)
    + current: the ``PkiFiles`` fact's entry for ``directory`` (read here when not given)
    """
    if current is None:
        facts = host.get_fact(PkiFiles, directories=[directory])
        current = facts["directories"].get(directory)
    key = (current or {}).get("key")
    cert = (current or {}).get("cert")
    moment = dt.datetime.fromisoformat(now) if now else dt.datetime.now(dt.UTC)
    reason = None
    if not key or not key.get("spki_sha256"):
        reason = "no key"
    elif not isinstance(cert, dict):
        reason = "no certificate"
    elif sorted(cert["names"]) != sorted(names):
        reason = f"names {', '.join(cert['names'])}"
    elif cert["issuer_key_id"] != ca_key_id:
        reason = "issued by another CA"
    elif cert["spki_sha256"] != key["spki_sha256"]:
        reason = "certificate does not match the key"
    elif dt.datetime.fromisoformat(cert["not_after"]) - moment < dt.timedelta(days=30):
        reason = f"expires {cert['not_after'][:10]}"
    if reason is None:
        host.noop(f"ACME server certificate is current ({', '.join(names)})")
        return
    announce(f"ACME server certificate: {reason}")
    yield f"mkdir -p {q(directory)}"
    if not key or not key.get("spki_sha256"):
        yield (
            f"(umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256"
            f" -out {q(directory)}/key.pem)"
        )
    yield FunctionCommand(_sign_server, (directory, list(names), ca_bundle), {})


def pebble_command(config: str, dnsserver: str, env: dict[str, str]) -> str:
    """The exact command line Pebble runs with (also what marks it as current)."""
    settings = " ".join(f"{k}={q(v)}" for k, v in sorted(env.items()))
    return f"env {settings} /usr/bin/pebble -config {q(config)} -dnsserver {q(dnsserver)}"


@operation()
def pebble(
    config: str,
    dnsserver: str,
    env: dict[str, str],
    restart: bool = False,
    listen_port: int = 14000,
    pid: int | None = None,
    state: Any = None,
):
    """Pebble running in the background with exactly this command line.

    Pebble forgets its accounts and makes a new root at every start, so it is restarted only
    when its command line, configuration or certificate changed (``restart``).

    + config: the JSON configuration file
    + dnsserver: ``addr:port`` of the resolver Pebble asks (it does not chase CNAMEs itself)
    + env: ``PEBBLE_*`` settings
    + restart: the configuration or certificate changed in this run
    + pid, state: the ``ProcessId`` fact and the ``FileDigest`` of the saved command line
    """
    command = pebble_command(config, dnsserver, env)
    running = pid if pid is not None else host.get_fact(ProcessId, "pebble")
    saved = state if state is not None else host.get_fact(FileDigest, PEBBLE_STATE)
    same = isinstance(saved, dict) and saved["sha256"] == _sha256(f"{command}\n".encode())
    if running and same and not restart:
        host.noop(f"pebble is running (pid {running}) with this configuration")
        return
    why = "not running" if not running else ("changed" if restart or not same else "")
    announce(f"pebble: {why}")
    if running:
        yield (
            f"kill {running}; for i in $(seq 50); do kill -0 {running} 2>/dev/null || break;"
            " sleep 0.1; done"
        )
    yield (
        f"echo {q(command)} > {PEBBLE_STATE} && cd / && setsid {command}"
        f" >>{PEBBLE_LOG} 2>&1 </dev/null &"
    )
    # Bounded wait until the ACME port listens, so the next operations can use it.
    yield (
        f"for i in $(seq 100); do ss -ltn | grep -q ':{listen_port} ' && exit 0; sleep 0.1; done;"
        f" echo 'pebble did not start; see {PEBBLE_LOG}' >&2; tail -5 {PEBBLE_LOG} >&2; exit 1"
    )


# -- the validating resolver (unbound) ---------------------------------------------------------


ANCHOR_AWK = (
    'awk -v z="$z" \'$1==257 {k=""; for (i=4; i<=NF; i++) k=k $i;'
    ' print "trust-anchor: \\"" z ". DNSKEY 257 " $2 " " $3 " " k "\\""}\''
)


@operation()
def unbound(
    config: str,
    anchors: str | None,
    path: str = "/etc/unbound/unbound.conf",
    anchors_path: str = "/etc/unbound/pkinfra-anchors.conf",
    primary: str = "",
    signed_zones: list[str] | None = None,
):
    """
    Ensure unbound runs with this configuration and these trust anchors; reload on change.

    + config: unbound.conf, which ``include:``s ``anchors_path`` inside its ``server:`` clause
    + anchors: the ``trust-anchor:`` lines, or None when the controller could not read the
      zones' keys (the primary is not serving yet in this run): then the host reads them from
      ``primary`` with ``dig`` after the DNS deploy has started it, for ``signed_zones``
    + path, anchors_path: where both go

    Checked with ``unbound-checkconf`` before anything is installed; a change reloads unbound
    (SIGHUP), and unbound is started when it is not running.

    **Example:**

    .. code:: python

        dns.unbound(config=render_unbound(inv, anchors), anchors="".join(...))
    """
    if anchors is None and not (primary and signed_zones):
        raise OperationError("unbound: without anchors, give the primary and the signed zones")
    pid = host.get_fact(ProcessId, program="unbound")
    conf_info = host.get_fact(FileDigest, path=path)
    anchors_info = host.get_fact(FileDigest, path=anchors_path)
    conf_changed = not isinstance(conf_info, dict) or conf_info["sha256"] != _text_sha256(config)
    anchors_changed = anchors is not None and (
        not isinstance(anchors_info, dict) or anchors_info["sha256"] != _text_sha256(anchors)
    )
    if anchors is not None and not conf_changed and not anchors_changed:
        if pid is not None:
            host.noop(f"unbound (pid {pid}): configuration and trust anchors are current")
            return
        announce("unbound is not running; starting it")
        yield f"unbound -c {q(path)} >/dev/null 2>&1"
        return

    changed = [
        what
        for what, yes in (
            ("its configuration", conf_changed),
            ("the trust anchors", anchors_changed or anchors is None),
        )
        if yes
    ]
    announce(f"unbound: {' and '.join(changed)} to install, checked first")
    new_conf, new_anchors, check = run_staged(path), run_staged(anchors_path), run_checked(path)
    yield FileUploadCommand(_Text(config), new_conf)
    if anchors is not None:
        yield FileUploadCommand(_Text(anchors), new_anchors)
    else:
        zones = " ".join(q(z) for z in signed_zones or [])
        yield (
            f": > {q(new_anchors)}; for try in $(seq 1 40); do ok=1; : > {q(new_anchors)};"
            f" for z in {zones}; do"
            f' one=$(dig +short +norec +time=1 +tries=1 @{q(primary)} DNSKEY "$z" | {ANCHOR_AWK});'
            f' [ -n "$one" ] || ok=0; echo "$one" >> {q(new_anchors)}; done;'
            f' [ "$ok" = 1 ] && break; sleep 0.25; done;'
            f' [ "$ok" = 1 ] || {{ echo "pkinfra: {primary} serves no DNSKEY for every signed zone'
            f' ({" ".join(signed_zones or [])}) after 10 s" >&2; exit 1; }};'
            f" LC_ALL=C sort -o {q(new_anchors)} {q(new_anchors)}"
        )
    yield f'sed \'s#"{anchors_path}"#"{new_anchors}"#\' {q(new_conf)} > {q(check)}'
    yield _refuse(
        f"unbound-checkconf {q(check)}",
        "the new unbound configuration",
        [new_conf, new_anchors, check],
    )
    yield f"rm -f {q(check)}"
    reload = (
        f"if [ -f {UNBOUND_PID} ] && kill -0 $(cat {UNBOUND_PID}) 2>/dev/null;"
        f" then kill -HUP $(cat {UNBOUND_PID});"
        f" else unbound -c {q(path)} >/dev/null 2>&1; fi"
    )
    install = (
        f"{_install(new_conf, path, 'root', 'root', '0644')}"
        f" && {_install(new_anchors, anchors_path, 'root', 'root', '0644')}"
    )
    if anchors is None and not conf_changed:
        # Known only now: install and reload only if the keys differ from the installed ones.
        start = "" if pid else f"unbound -c {q(path)} >/dev/null 2>&1;"
        yield (
            f"if cmp -s {q(new_anchors)} {q(anchors_path)};"
            f" then rm -f {q(new_conf)} {q(new_anchors)}; {start}"
            f" else {install} && {{ {reload}; }}; fi"
        )
        return
    yield install
    yield reload
