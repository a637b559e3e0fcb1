"""Controller-side ACME helpers: certbot command lines, when a lineage needs work, and the lab's
Pebble TLS CA.

certbot runs on the hosts; this module only decides what it is told. ``certonly_args`` builds the
one command that issues, reissues or renews a lineage with everything a later ``certbot renew``
needs saved in its renewal configuration (server, authenticator, webroot or hooks, key type,
``reuse_key``). ``lineage_reason`` says why a lineage needs that command, or None.

Pebble (lab only) ships no TLS certificate for itself. The lab keeps a small CA in ``.lab/``
beside its other controller-side state (SSH key, CA passphrase): ``ensure_server_ca`` makes it
once, name-constrained to the ACME server's names (trusting it system-wide on lab hosts trusts
nothing else), and ``sign_server_csr`` signs the CSR that the ACME host made with its own key.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypedDict
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Controller only: no agent file imports this module (the agent's own code is AGENT_FILES).
from pkinfra.ca import DNSConstraints, build_ca_certificate
from pkinfra.keys import generate_private_key

HOOK = "/usr/local/bin/pkinfra-certbot-hook"
HOOK_CONFIG = "/etc/pkinfra/acme-hook.conf"
LIB_DIR = "/usr/local/lib/pkinfra"
#: Where a non-public ACME server's TLS CA joins the system store (what certbot's requests use on
#: Debian, also for a renewal started by cron in a clean environment).
TRUST_PATH = "/usr/local/share/ca-certificates/pkinfra-acme-server.crt"

_CURVES = {"ec-p256": "secp256r1", "ec-p384": "secp384r1"}


class AcmeError(Exception):
    """A controller-side ACME problem; the text names the file or certificate."""


class LineageInfo(TypedDict):
    """What the ``CertbotLineage`` fact reads (public data only)."""

    #: ``key = value`` lines of the renewal configuration (top level and [renewalparams]).
    renewal: dict[str, str]
    #: ``[[webroot_map]]`` entries: name -> webroot.
    webroot_map: dict[str, str]
    #: The live certificate; None when absent or unreadable.
    names: list[str] | None
    not_before: str | None  # ISO 8601, UTC
    not_after: str | None
    issuer: str | None
    #: Hex SHA-256 of the live key's SubjectPublicKeyInfo.
    key_spki_sha256: str | None


class AccountsInfo(TypedDict):
    """What the ``CertbotAccounts`` fact reads for one ACME directory."""

    #: certbot's account ids for the directory on the host.
    ids: list[str]
    #: ``valid`` (the server knows them), ``unknown`` (it says they do not exist), ``unchecked``
    #: (it could not be asked) or ``none`` (no account on the host).
    state: str


def key_args(key_type: str) -> list[str]:
    """certbot's key options for a model key type."""
    if key_type in _CURVES:
        return ["--key-type", "ecdsa", "--elliptic-curve", _CURVES[key_type]]
    if key_type.startswith("rsa-"):
        return ["--key-type", "rsa", "--rsa-key-size", key_type[4:]]
    raise AcmeError(f"key type {key_type} is not one certbot makes")


def account_dir(server: str) -> str:
    """certbot's account directory for a directory URL (``accounts/<host:port><path>``)."""
    parts = urlsplit(server)
    return f"/etc/letsencrypt/accounts/{parts.netloc}{parts.path}".rstrip("/")


def register_args(server: str, contact: str | None) -> list[str]:
    contact_args = ["-m", contact] if contact else ["--register-unsafely-without-email"]
    return [
        "certbot",
        "register",
        "--non-interactive",
        "--agree-tos",
        "--server",
        server,
        *contact_args,
    ]


def recheck_account_script(server: str, contact: str | None) -> str:
    """Shell: register again if the server says the account does not exist, else nothing.

    certbot 2.1's ``show_account`` crashes on that answer; its debug log names it.
    """
    logs = '"$l"'
    register = " ".join(shlex.quote(a) for a in register_args(server, contact))
    return (
        f"l=$(mktemp -d); if certbot show_account --server {shlex.quote(server)}"
        f" --logs-dir {logs} >/dev/null 2>&1; then :;"
        f" elif grep -q accountDoesNotExist {logs}/letsencrypt.log 2>/dev/null;"
        f" then rm -rf {shlex.quote(account_dir(server))} && {register};"
        f" fi; rc=$?; rm -rf {logs}; exit $rc"
    )


def certonly_args(
    *,
    cert_name: str,
    names: Sequence[str],
    challenge: str,
    server: str,
    key_type: str,
    webroot: str | None = None,
    force: bool = False,
    new_key: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    """The ``certbot certonly`` command for one lineage, everything saved for renewals."""
    args = [
        "certbot",
        "certonly",
        "--non-interactive",
        "--agree-tos",
        "--server",
        server,
        "--cert-name",
        cert_name,
        "--reuse-key",
        *key_args(key_type),
    ]
    if challenge == "http-01":
        if webroot is None:
            raise AcmeError(f"certificate {cert_name}: http-01 needs a webroot")
        args += ["--webroot", "-w", webroot]
    elif challenge == "dns-01":
        args += [
            "--manual",
            "--preferred-challenges",
            "dns",
            "--manual-auth-hook",
            f"{HOOK} auth",
            "--manual-cleanup-hook",
            f"{HOOK} cleanup",
        ]
    else:
        raise AcmeError(f"certificate {cert_name}: unknown challenge {challenge!r}")
    for name in names:
        args += ["-d", name]
    if force:
        args.append("--force-renewal")
    if new_key:
        args.append("--new-key")
    return [*args, *extra]


def _parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None


def renew_before(not_before: dt.datetime, not_after: dt.datetime, days: int | None) -> dt.timedelta:
    """How long before expiry a certificate is due: ``days``, else a third of its lifetime."""
    if days is not None:
        return dt.timedelta(days=days)
    return (not_after - not_before) / 3


def _key_type_of(renewal: Mapping[str, str]) -> str | None:
    kind = renewal.get("key_type")
    if kind == "ecdsa":
        curve = renewal.get("elliptic_curve", "secp256r1")
        return {v: k for k, v in _CURVES.items()}.get(curve)
    if kind == "rsa":
        return f"rsa-{renewal.get('rsa_key_size', '2048')}"
    return None


def lineage_reason(
    current: LineageInfo | None,
    *,
    cert_name: str,
    names: Sequence[str],
    challenge: str,
    server: str,
    key_type: str,
    webroot: str | None,
    renew_before_days: int | None,
    now: dt.datetime,
) -> tuple[str | None, bool, bool]:
    """(why the lineage needs ``certbot certonly``, force renewal?, new key?); reason None: current.

    Order matters: a missing lineage or new names reissue anyway; only a lineage whose names
    are right needs ``--force-renewal`` to be renewed before certbot's own schedule.
    """
    what = f"certificate {cert_name}"
    if current is None:
        return f"{what}: no certbot lineage yet", False, False
    renewal = current["renewal"]
    if current["names"] is None or current["not_after"] is None:
        return f"{what}: the lineage has no readable certificate", True, False
    wanted, have = sorted(names), sorted(current["names"])
    new_key = _key_type_of(renewal) not in (None, key_type)
    if wanted != have:
        added = [n for n in wanted if n not in have]
        removed = [n for n in have if n not in wanted]
        change = ", ".join([*(f"+{n}" for n in added), *(f"-{n}" for n in removed)])
        return f"{what}: names change ({change})", False, new_key
    if renewal.get("server") != server:
        return f"{what}: ACME server changes ({renewal.get('server')} -> {server})", True, new_key
    if new_key:
        return f"{what}: key type changes ({_key_type_of(renewal)} -> {key_type})", True, True
    drift = _renewal_drift(renewal, current["webroot_map"], names, challenge, webroot)
    if drift:
        return f"{what}: renewal settings differ ({drift})", True, False
    not_before = _parse_time(current["not_before"])
    not_after = _parse_time(current["not_after"])
    if not_before is None or not_after is None:
        return f"{what}: the lineage has no readable certificate", True, False
    left = not_after - now
    if left <= renew_before(not_before, not_after, renew_before_days):
        days = max(0, left.days)
        return f"{what}: expires in {days} day{'s' if days != 1 else ''}", True, False
    return None, False, False


def account_move(
    current: LineageInfo | None, accounts: AccountsInfo, cert_name: str
) -> tuple[str | None, bool]:
    """(why the lineage must move to the host's current ACME account, only if its account is
    gone when the command runs?); reason None: the lineage's account is the current one.

    ``certbot renew`` uses the account saved in the lineage's renewal configuration and fails
    when the host no longer has it; ``certbot certonly`` uses the host's account and saves
    it. The account step runs first in the same run: with state ``none`` or ``unknown`` it
    registers a new account (whose id is not known yet); with ``unchecked`` it asks the
    server again and registers only if told the account does not exist, so a lineage on that
    account moves only then (the command checks at execution time).
    """
    saved = current["renewal"].get("account", "") if current is not None else ""
    if not saved:
        return None, False  # no lineage yet, or certbot saved none: nothing to move from
    what = f"certificate {cert_name}: its ACME account {saved}"
    state, ids = accounts["state"], accounts["ids"]
    if state == "none":
        return f"{what} is not on this host; moving to the account registered in this run", False
    if state == "unknown":
        return f"{what} is unknown to the server; moving to the account registered again", False
    if saved not in ids:
        return f"{what} is not on this host; moving to {', '.join(ids)}", False
    if state == "unchecked":
        return f"{what} could not be checked; renewed if it is registered again", True
    return None, False


def _renewal_drift(
    renewal: Mapping[str, str],
    webroot_map: Mapping[str, str],
    names: Sequence[str],
    challenge: str,
    webroot: str | None,
) -> str:
    if renewal.get("reuse_key", "").lower() != "true":
        return "reuse_key is off"
    if challenge == "http-01":
        if renewal.get("authenticator") != "webroot":
            return f"authenticator {renewal.get('authenticator')}, wanted webroot"
        wrong = [n for n in names if webroot_map.get(n) != webroot]
        if wrong:
            return f"webroot of {', '.join(wrong)} is not {webroot}"
        return ""
    if renewal.get("authenticator") != "manual":
        return f"authenticator {renewal.get('authenticator')}, wanted manual with pkinfra's hook"
    if renewal.get("manual_auth_hook") != f"{HOOK} auth":
        return "auth hook is not pkinfra's"
    if renewal.get("manual_cleanup_hook") != f"{HOOK} cleanup":
        return "cleanup hook is not pkinfra's"
    return ""


def describe_current(current: LineageInfo, cert_name: str) -> str:
    until = (current["not_after"] or "?")[:10]
    names = ", ".join(current["names"] or [])
    return f"certificate {cert_name} is current ({names}; {current['issuer']}; valid until {until})"


def hook_config(
    tsig_key: str, ttl: int, propagation_timeout: int = 60, extra: Mapping[str, str] | None = None
) -> str:
    """The agent's configuration file (``pkinfra.agent.certbot_hook``): no secret, a key path."""
    lines = [
        "# Written by pkinfra (deploys/acme.py): read by pkinfra-certbot-hook on every",
        "# certbot run, also renewals started by cron.",
        "[dns-01]",
        f"tsig_key = {tsig_key}",
        f"ttl = {ttl}",
        f"propagation_timeout = {propagation_timeout}",
        *(f"{k} = {v}" for k, v in (extra or {}).items()),
    ]
    return "\n".join(lines) + "\n"


def hook_wrapper() -> str:
    """The DNS-01 hook's entry point in /usr/local/bin."""
    return agent_wrapper("certbot_hook", "certbot's DNS-01 hook (deploys/acme.py)")


#: The controller files that make up the agent on a host, relative to the repository root,
#: and where each goes under LIB_DIR.
AGENT_FILES = (
    "pkinfra/agent/__init__.py",
    "pkinfra/agent/certbot_hook.py",
    "pkinfra/agent/dane_publish.py",
    "pkinfra/agent/rollover.py",
    "pkinfra/agent/status_probe.py",
    "pkinfra/dnsupdate.py",
    "pkinfra/rollover.py",
    "pkinfra/switch.py",
    "pkinfra/tlsa.py",
)
DANE_PUBLISH = "/usr/local/bin/pkinfra-dane-publish"
DANE_CONFIG = "/etc/pkinfra/dane.json"
DANE_DEPLOY_HOOK = "/etc/letsencrypt/renewal-hooks/deploy/40-pkinfra-dane"
DANE_SEEN = "/var/lib/pkinfra/dane-seen.json"
ROLLOVER = "/usr/local/bin/pkinfra-rollover"
ROLLOVER_CONFIG = "/etc/pkinfra/rollover.json"
ROLLOVER_DIR = "/etc/pkinfra/rollover"


def agent_wrapper(module: str, what: str) -> str:
    """An agent entry point in /usr/local/bin: the host's python3, pkinfra's files only."""
    return (
        "#!/usr/bin/python3 -I\n"
        f"# Written by pkinfra: {what}.\n"
        "import sys\n\n"
        f'sys.path.insert(0, "{LIB_DIR}")\n'
        f"from pkinfra.agent.{module} import main  # noqa: E402\n\n"
        "sys.exit(main())\n"
    )


# -- the lab's Pebble TLS CA ------------------------------------------------------------------


def ca_key_path(bundle: Path) -> Path:
    return bundle.with_suffix(".key")


def ensure_server_ca(bundle: Path, names: Sequence[str], days: int = 3650) -> bytes:
    """The CA certificate in ``bundle``, made (with its key beside, 0600) if absent.

    Name-constrained to ``names``: even trusted system-wide it vouches for the ACME server only.
    """
    key_path = ca_key_path(bundle)
    if bundle.exists() and key_path.exists():
        return bundle.read_bytes()
    if bundle.exists() != key_path.exists():
        present = bundle if bundle.exists() else key_path
        raise AcmeError(f"{present} exists without its pair; remove it to make a new lab CA")
    bundle.parent.mkdir(parents=True, exist_ok=True)
    key = generate_private_key("ec-p256")
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pkinfra lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, "pkinfra lab ACME server CA"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    # The CA store's builder: the same extensions as every pkinfra CA (its name constraints
    # also exclude every IP address, which the ACME server is never reached by).
    cert = build_ca_certificate(
        subject=subject,
        public_key=key.public_key(),
        issuer_cert=None,
        issuer_key=key,
        serial=x509.random_serial_number(),
        not_before=now - dt.timedelta(minutes=5),
        not_after=now + dt.timedelta(days=days),
        path_length=0,
        constraints=DNSConstraints(permitted=tuple(names)),
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_pem)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    bundle.write_bytes(cert_pem)
    return cert_pem


def ca_key_id(bundle: Path) -> str:
    """Hex subject key identifier of the CA in ``bundle`` (what issued certificates name)."""
    cert = x509.load_pem_x509_certificate(bundle.read_bytes())
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return ski.digest.hex()


def sign_server_csr(bundle: Path, csr_pem: bytes, names: Sequence[str], days: int = 825) -> bytes:
    """A TLS server certificate for ``names`` on the CSR's key, signed by the lab CA."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise AcmeError(f"not a CSR: {exc}") from None
    if not csr.is_signature_valid:
        raise AcmeError("the CSR's signature does not verify")
    ca_cert = x509.load_pem_x509_certificate(bundle.read_bytes())
    loaded = serialization.load_pem_private_key(ca_key_path(bundle).read_bytes(), None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise AcmeError(f"{ca_key_path(bundle)}: not the lab CA's EC key")
    now = dt.datetime.now(dt.UTC)
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(loaded, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)
