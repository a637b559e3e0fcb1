"""Operations for ACME certificates: certbot account and lineages, the ACME server's TLS trust,
nginx serving HTTP-01 challenges, and (lab only) Pebble with a TLS certificate of the lab's CA.

Decisions are made by ``pkinfra.acme`` from facts read before the first ``yield``, so ``--dry``
says why a lineage would be (re)issued. certbot itself runs on the host: everything a renewal
needs is saved in the lineage's renewal configuration and in files the deploy writes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from typing import Any

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, OperationError, operation
from pyinfra.api.command import FileUploadCommand

from operations.facts import (
    CertbotAccounts,
    CertbotLineage,
    FileDigest,
    NginxServers,
    ProcessId,
)
from operations.util import Upload, q, upload_atomic
from pkinfra import acme
from pkinfra import nginx as nginx_core
from pkinfra.agent import paths
from pkinfra.install import truststore_command
from pkinfra.nginx import SITE, SNIPPET


def _announce(message: str) -> None:
    """Say why an operation changes something (printed by runs and dry runs alike)."""
    prefix = getattr(host, "print_prefix", f"[{host.name}] ")
    logger.info(f"{prefix}{message}")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _shell(args: Sequence[str]) -> str:
    return " ".join(q(a) for a in args)


@operation()
def server_trust(pem: str, source: str, current: Any = None):
    """Trust the ACME server's own TLS CA in the system store (what certbot's requests reads).

    A clean-environment ``certbot renew`` (cron, by hand) reads no ``REQUESTS_CA_BUNDLE`` and
    certbot 2.1 has no CA-bundle option: on Debian, requests uses
    ``/etc/ssl/certs/ca-certificates.crt``, rebuilt as ``update-ca-certificates`` does
    (``pkinfra.truststore``).

    + pem: the CA certificate(s), PEM
    + source: where it came from (for messages)
    + current: the ``FileDigest`` fact of the trust file (read here when not given)

    **Example:**

    .. code:: python

        acme.server_trust(pem=Path("acme-ca.pem").read_text(), source="acme-ca.pem")
    """
    if "BEGIN CERTIFICATE" not in pem:
        raise OperationError(f"ACME server CA bundle {source}: no PEM certificate in it")
    path = paths.ACME_SERVER_TRUST
    have = current if current is not None else host.get_fact(FileDigest, path)
    data = pem.encode()
    if isinstance(have, dict) and have["sha256"] == _sha256(data):
        host.noop(f"ACME server CA from {source} is trusted ({path})")
        return
    why = "changed" if isinstance(have, dict) else "missing"
    _announce(f"ACME server CA from {source}: {why} in {path}; updating the system trust store")
    yield from upload_atomic(path, data, "0644")
    yield truststore_command()


@operation()
def account(server: str, contact: str | None = None, current: Any = None):
    """A certbot ACME account on ``server`` that the server knows (certbot keeps its key).

    An account the server no longer knows (a restarted Pebble forgets them all) is removed and
    registered again; ``certificate`` then moves each lineage saved with an account the host no
    longer has to the current one (it reads the same fact).

    + server: the ACME directory URL
    + contact: e-mail for expiry notices; None registers without one
    + current: the ``CertbotAccounts`` fact (read here when not given)
    """
    accounts = current if current is not None else host.get_fact(CertbotAccounts, server)
    state, ids = accounts["state"], accounts["ids"]
    if state == "valid":
        host.noop(f"certbot has an account on {server} ({ids[0] if ids else '?'})")
        return
    if state == "unchecked":
        # Typically the ACME server starts later in this run (the lab's Pebble): ask again then.
        _announce(f"ACME server {server} could not be asked: checking the account when it runs")
        yield acme.recheck_account_script(server, contact)
        return
    if state == "unknown":
        _announce(f"ACME account {', '.join(ids)} is unknown to {server}: registering again")
        yield f"rm -rf {q(acme.account_dir(server))}"
    else:
        _announce(f"no certbot account on {server}: registering one")
    yield _shell(acme.register_args(server, contact))


@operation()
def certificate(
    cert_name: str,
    names: Sequence[str],
    challenge: str,
    server: str,
    key_type: str = "ec-p256",
    webroot: str | None = None,
    renew_before_days: int | None = None,
    certbot_args: Sequence[str] = (),
    current: Any = None,
    accounts: Any = None,
    now: str | None = None,
):
    """A certbot lineage with exactly ``names``, not due, renewable by certbot on its own.

    A missing lineage is issued; a change of names reissues under the same ``--cert-name``
    (the key is kept); a lineage due for renewal, whose saved settings differ, or saved with
    an ACME account the host no longer has (or is about to replace: see ``account``), is
    renewed with ``--force-renewal`` (certonly saves the account it used). Otherwise nothing
    happens.

    + cert_name: the lineage (``/etc/letsencrypt/live/<cert_name>/``)
    + names: DNS names, first = subject
    + challenge: ``http-01`` (with ``webroot``) or ``dns-01`` (pkinfra's hook)
    + server: the ACME directory URL
    + key_type: ``ec-p256``, ``ec-p384`` or ``rsa-*``
    + renew_before_days: renew this many days before expiry; None: a third of the lifetime
    + certbot_args: extra arguments for certbot
    + current: the ``CertbotLineage`` fact (read here when not given)
    + accounts: the ``CertbotAccounts`` fact for ``server`` (read here when not given)
    + now: ISO time (tests)

    **Example:**

    .. code:: python

        acme.certificate(
            cert_name="mail", names=["mx1.example.test"], challenge="dns-01",
            server="https://acme-v02.api.letsencrypt.org/directory",
        )
    """
    try:
        acme.key_args(key_type)
    except acme.AcmeError as exc:
        raise OperationError(f"certificate {cert_name}: {exc}") from None
    lineage = current if current is not None else host.get_fact(CertbotLineage, cert_name)
    registered = accounts if accounts is not None else host.get_fact(CertbotAccounts, server)
    moment = dt.datetime.fromisoformat(now) if now else dt.datetime.now(dt.UTC)
    reason, force, new_key = acme.lineage_reason(
        lineage,
        cert_name=cert_name,
        names=names,
        challenge=challenge,
        server=server,
        key_type=key_type,
        webroot=webroot,
        renew_before_days=renew_before_days,
        now=moment,
    )
    move, only_if_gone = acme.account_move(lineage, registered, cert_name)
    conditional = False
    if reason is None and move is not None:
        reason, force, conditional = move, True, only_if_gone
    if reason is None:
        host.noop(acme.describe_current(lineage, cert_name))
        return
    args = acme.certonly_args(
        cert_name=cert_name,
        names=names,
        challenge=challenge,
        server=server,
        key_type=key_type,
        webroot=webroot,
        force=force,
        new_key=new_key,
        extra=certbot_args,
    )
    _announce(reason)
    if webroot is not None:
        yield f"mkdir -p {q(webroot)}"
    if conditional:
        # The account step may register again; only then (the old account's directory is gone)
        # must the lineage move.
        saved = acme.account_dir(server) + "/" + lineage["renewal"]["account"]
        yield f"[ -d {q(saved)} ] || {_shell(args)}"
        return
    yield _shell(args)


@operation()
def nginx(reload: bool = False, pid: int | None = None):
    """nginx running with its current configuration (started, or reloaded after a change).

    + reload: the configuration changed in this run
    + pid: nginx's master PID (the ``ProcessId`` fact; read here when not given)
    """
    running = pid if pid is not None else host.get_fact(ProcessId, "nginx")
    if running and not reload:
        host.noop(f"nginx is running (pid {running})")
        return
    # Under systemd, through its unit (MainPID kept on reload); elsewhere nginx itself, whose
    # daemonized output must not keep the connector's exec open.
    if running:
        _announce(f"nginx (pid {running}): its configuration changed in this run; reloading")
        yield (
            "nginx -t -q && if [ -d /run/systemd/system ]; then systemctl reload nginx;"
            " else nginx -s reload; fi"
        )
    else:
        _announce("nginx is not running; starting it")
        yield (
            "nginx -t -q && if [ -d /run/systemd/system ]; then systemctl start nginx;"
            " else nginx >/dev/null 2>&1; fi"
        )


_NGINX_RELOAD = (
    "if [ -d /run/systemd/system ]; then systemctl try-reload-or-restart nginx;"
    " elif pidof nginx >/dev/null; then nginx -s reload; fi"
)
_NGINX_STATES = {
    "absent": "nginx is not installed: pkinfra serves HTTP-01 challenges through nginx",
    "no-python": "python3 is missing: pkinfra reads nginx's configuration with it",
    "invalid": "nginx -t fails ({error}): pkinfra changes nothing in nginx until it passes",
    "unreadable": "nginx's configuration could not be read ({error})",
}


def _refuse(state: Any, host: Any, lines: list[str]) -> bool:
    """Execution time: the host's nginx needs its admin; every reason, one line each."""
    for line in lines:
        _fail(state, host, line)
    return False


def _swap_script(changes: list[tuple[str, bytes | None]]) -> str:
    """Put pkinfra's staged files in place, check, and reload; on a failed check, put the
    previous files back (a broken configuration is never left for the next reload or boot)."""
    stage, old = q(paths.NGINX_STAGE), q(f"{paths.NGINX_STAGE}/old")
    keep, install, restore = [], [], []
    for path, data in changes:
        name = path.rsplit("/", 1)[1]
        saved, staged = q(f"{paths.NGINX_STAGE}/old/{name}"), q(f"{paths.NGINX_STAGE}/{name}")
        keep.append(f"if [ -e {q(path)} ]; then cp -p {q(path)} {saved}; fi")
        if data is None:
            install.append(f"rm -f {q(path)}")
        else:
            install.append(f"chmod 0644 {staged} && mv -f {staged} {q(path)}")
        restore.append(f"if [ -e {saved} ]; then mv -f {saved} {q(path)}; else rm -f {q(path)}; fi")
    return "\n".join(
        [
            f"set -e; rm -rf {old}; mkdir {old}",
            *keep,
            *install,
            f"if nginx -t -q 2>{stage}/check.log; then rm -rf {old}; {_NGINX_RELOAD}; else",
            *(f"  {line}" for line in restore),
            "  echo 'pkinfra: nginx -t refused the HTTP-01 files; the previous ones are back:' >&2",
            f"  cat {stage}/check.log >&2; exit 1",
            "fi",
        ]
    )


@operation()
def nginx_challenge(webroots: Sequence[str], names: Sequence[str], current: Any = None):
    """nginx answering HTTP-01 challenges for ``names`` from ``webroots``, beside the admin's
    own port-80 servers, whose files pkinfra never changes.

    pkinfra writes the challenge location as a snippet (``pkinfra.nginx.SNIPPET``). A name no
    admin server answers by name gets pkinfra's server block (``pkinfra.nginx.SITE``), which
    includes it; a name an admin's server answers must be served there, through
    ``include snippets/pkinfra-acme-challenge.conf;``: pkinfra then writes no server for it.
    Files change together, checked by ``nginx -t`` (the previous files are put back when it
    fails), and a running nginx is reloaded. When an admin's server still needs an edit, the
    files are brought as far as they can go and the operation fails naming each server and the
    edit (the snippet exists by then, so the include the admin adds is valid).

    + webroots: certbot's webroots (tried in turn)
    + names: every name of the host's HTTP-01 certificates
    + current: the ``NginxServers`` fact (read here when not given)

    **Example:**

    .. code:: python

        acme.nginx_challenge(webroots=["/var/www/acme"], names=["www.example.com"])
    """
    if not webroots or not names:
        raise OperationError("nginx HTTP-01: needs at least one webroot and one name")
    fact = current if current is not None else host.get_fact(NginxServers, SNIPPET, SITE)
    if fact["state"] in _NGINX_STATES:
        message = "nginx: " + _NGINX_STATES[fact["state"]].format(error=fact.get("error"))
        _announce(message)
        yield FunctionCommand(_refuse, ([message],), {})
        return
    plan = nginx_core.challenge_plan(fact["servers"], names, own=[SITE])
    have = fact["own"]
    changes: list[tuple[str, bytes | None]] = []
    want_snippet = nginx_core.snippet(webroots).encode()
    if have.get(SNIPPET) != _sha256(want_snippet):
        changes.append((SNIPPET, want_snippet))
    if plan.own_names:
        site = nginx_core.server_block(plan.own_names, plan.addresses).encode()
        if have.get(SITE) != _sha256(site):
            changes.append((SITE, site))
    elif have.get(SITE) is not None:
        changes.append((SITE, None))
    if not changes and not plan.problems:
        host.noop(f"nginx serves HTTP-01 challenges: {plan.reason()}")
        return
    if changes:
        what = ", ".join(f"{'remove' if d is None else 'write'} {p}" for p, d in changes)
        _announce(f"nginx HTTP-01: {what} ({plan.reason()})")
        yield f"mkdir -p -m 0700 {q(paths.NGINX_STAGE)} && mkdir -p {q(SNIPPET.rsplit('/', 1)[0])}"
        for path, data in changes:
            if data is not None:
                staged = f"{paths.NGINX_STAGE}/{path.rsplit('/', 1)[1]}"
                yield FileUploadCommand(Upload(data), staged)
        yield _swap_script(changes)
    if plan.problems:
        for problem in plan.problems:
            _announce(problem)
        yield FunctionCommand(_refuse, (list(plan.problems),), {})


# -- lab: Pebble ----------------------------------------------------------------------------------


def _fail(state: Any, host: Any, message: str) -> bool:
    """An execution-time failure in one line; the operation then counts as failed."""
    host.log_styled(f"pkinfra: {message}", fg="red", log_func=logger.error)
    return False
