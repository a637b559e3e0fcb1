"""Operations for the private PKI: CAs and CRLs on the controller, keys, certificates, trust
anchors and CRLs on managed hosts.

Controller-side work (making a CA, issuing a CRL, signing a CSR) happens at execution time in a
``FunctionCommand``, so ``--dry`` changes nothing; every operation says why it would change
before its first ``yield`` and ends with ``host.noop`` when there is nothing to do. CA keys and
their passphrases stay in the CA store; host keys stay on their host.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pyinfra import host, logger
from pyinfra.api import FileUploadCommand, FunctionCommand, OperationError, StringCommand, operation

from operations.context import announce, run_on_host, upload_to_host
from operations.facts import (
    DirectoryFiles,
    PkiDirInfo,
    PkiFiles,
    PrivateKey,
    RolloverStateInfo,
)
from operations.util import (
    GENPKEY_ARGS,
    INLINE_MAX,
    csr_command,
    genpkey,
    inline_writes,
    install_command,
    new_name,
    ownership_fixes,
    q,
)
from pkinfra import dnsupdate, issue, rollover
from pkinfra.agent import paths
from pkinfra.ca import CAError, CAStore, Issued, PassphraseSource, load_csr
from pkinfra.install import switch_command, truststore_command
from pkinfra.keys import spki_sha256


@operation()
def private_key(
    path: str,
    key_type: str = "ec-p256",
    owner: str = "root",
    group: str = "root",
    mode: str = "0600",
):
    """
    Ensure a private key exists on the host, made there (``umask 077``) and never copied out.

    + path: the key file
    + key_type: one of ``ec-p256``, ``ec-p384``, ``rsa-2048``, ``rsa-3072``, ``rsa-4096``,
      ``ed25519``
    + owner, group, mode: the key file's ownership and mode (never readable by others)

    An existing key of another type is never replaced: that is a rollover, asked for elsewhere.

    **Example:**

    .. code:: python

        pki.private_key(path="/etc/pkinfra/certs/postgres/key.pem", key_type="ec-p256")
    """
    if key_type not in GENPKEY_ARGS:
        raise OperationError(f"unknown key type '{key_type}'")
    if int(mode, 8) & 0o007:
        raise OperationError(f"key {path}: mode {mode} would make it readable by others")

    info = host.get_fact(PrivateKey, path=path)
    if info is False:
        raise OperationError(f"key {path}: exists but is not a regular file; not touching it")
    if info is None:
        announce(f"key {path}: missing; making a {key_type} key on the host")
        yield genpkey(path, key_type, owner, group)
        if mode != "0600":
            yield f"chmod {mode} {q(path)}"
        return
    assert isinstance(info, dict)
    if info["key_type"] is None:
        raise OperationError(
            f"key {path}: exists but openssl cannot read it as a key; not touching it"
        )
    if info["key_type"] != key_type:
        raise OperationError(
            f"key {path}: is {info['key_type']}, the inventory wants {key_type}; "
            "a new key type needs a key rollover"
        )
    fixes = ownership_fixes(path, info["owner"], info["group"], info["mode"], owner, group, mode)
    if not fixes:
        host.noop(f"key {path} exists ({key_type}, {mode} {owner}:{group})")
    else:
        have = f"{info['mode']} {info['owner']}:{info['group']}"
        announce(f"key {path}: {have}, wanted {mode} {owner}:{group}")
    yield from fixes


# -- helpers ------------------------------------------------------------------------------------


def _fail(state: Any, where: Any, message: str) -> bool:
    """Report an execution-time failure in one line; the operation then counts as failed."""
    where.log_styled(message, fg="red", log_func=logger.error)
    return False


def _store(path: str) -> CAStore:
    return issue.store_for(path)


def _source(spec: str | None) -> PassphraseSource | None:
    return PassphraseSource.parse(spec) if spec else None


def _ca_or_error(store: CAStore, ca: str) -> Any:
    try:
        return issue.existing_ca(store, ca)
    except CAError as exc:
        raise OperationError(str(exc)) from None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: A file's content, or a function that reads it from the CA store at execution time (a CA or
#: CRL that an earlier operation of this run makes).
Content = bytes | Callable[[], bytes | None]


def _install_files(files: dict[str, bytes], then: str | None = None) -> list[Any]:
    """Commands that write each file (path -> content, mode 0644) beside its path and rename it
    into place, then run ``then``: one remote command when the files can travel inside it (see
    ``inline_writes``), else uploads (never diffed)."""
    if not files:
        return [then] if then else []
    directories = " ".join(q(d) for d in sorted({p.rpartition("/")[0] for p in files}))
    moves = " && ".join(
        f"chmod 0644 {q(new_name(p))} && mv -f {q(new_name(p))} {q(p)}" for p in files
    )
    last = f"{moves} && {then}" if then else moves
    writes = inline_writes({new_name(p): content for p, content in files.items()})
    if writes is not None:
        return [f"mkdir -p {directories} &&\n{writes}{last}"]
    uploads = [FileUploadCommand(BytesIO(content), new_name(p)) for p, content in files.items()]
    return [f"mkdir -p {directories}", *uploads, last]


def _file_commands(files: dict[str, Content], then: str | None, what: str) -> list[Any]:
    """``_install_files``, or one ``FunctionCommand`` doing it at execution time when a content
    is read from the CA store then."""
    if any(callable(content) for content in files.values()):
        return [FunctionCommand(_publish, (files,), {"then": then, "what": what})]
    return _install_files({p: c for p, c in files.items() if isinstance(c, bytes)}, then)


def _run_commands(state: Any, host: Any, commands: Sequence[Any]) -> bool:
    """Execution time: run shell commands and uploads on the host, in order, until one fails."""
    for command in commands:
        if isinstance(command, FileUploadCommand):
            ok = upload_to_host(state, host, command.src, command.dest)
        else:
            ok, _ = run_on_host(state, host, command)
        if not ok:
            return False
    return True


def _publish(
    state: Any, host: Any, files: dict[str, Content], *, then: str | None, what: str
) -> bool:
    """Execution time: install ``files`` (see ``_install_files``), contents read from the CA
    store now where they are functions."""
    contents: dict[str, bytes] = {}
    for path, content in files.items():
        try:
            data = content() if callable(content) else content
        except CAError as exc:
            return _fail(state, host, f"{what}: {exc}")
        if data is None:
            return _fail(state, host, f"{what}: the CA store has none for {path}")
        contents[path] = data
    if not _run_commands(state, host, _install_files(contents, then)):
        return _fail(state, host, f"{what}: cannot write {', '.join(files)}")
    return True


# -- controller: CAs and CRLs -------------------------------------------------------------------


@operation()
def certificate_authority(
    ca: str,
    store: str,
    key_type: str = "ec-p384",
    validity_days: int = 3650,
    parent: str | None = None,
    path_length: int | None = None,
    permitted: Sequence[str] = (),
    excluded: Sequence[str] = (),
    organization: str | None = None,
    passphrase: str | None = None,
    parent_passphrase: str | None = None,
    import_cert: str | None = None,
    import_key: str | None = None,
):
    """
    Ensure a CA exists in the controller's CA store (made or imported at execution time).

    + ca: the CA's name
    + store: the CA store directory on the controller
    + key_type, validity_days, path_length, permitted, excluded, organization: the new CA's
      parameters (see ``pkinfra.model.CA``)
    + parent: the parent CA for a sub-CA
    + passphrase: ``env:NAME`` or ``file:PATH`` for the CA key; None keeps it unencrypted
    + parent_passphrase: the same for the parent's key (to sign the sub-CA)
    + import_cert, import_key: PEM files of an existing CA to take over instead of making one

    An existing CA is never replaced; differences from these parameters are reported. Run it
    once per run (``_run_once=True``): it touches no host.

    **Example:**

    .. code:: python

        pki.certificate_authority(
            name="CA duckcorp", ca="duckcorp", store="pki", passphrase="file:/root/ca-pass",
            _run_once=True,
        )
    """
    cas = _store(store)
    info = _ca_or_error(cas, ca)
    if info is not None:
        found = issue.ca_differences(info, parent, key_type)
        text = f"CA {ca} exists ({info.key_type}, valid until {info.not_after:%Y-%m-%d})"
        if found:
            text += f"; not as the inventory says ({'; '.join(found)}): it is kept"
        host.noop(text)
        return
    if import_cert is not None and import_key is not None:
        announce(f"CA {ca}: missing, will import {import_cert}")
    elif parent is None:
        announce(f"CA {ca}: missing, will create a root CA ({key_type}, {validity_days} days)")
    else:
        announce(f"CA {ca}: missing, will create a sub-CA of {parent} ({key_type})")
    yield FunctionCommand(
        _make_ca,
        (),
        {
            "ca": ca,
            "store": store,
            "key_type": key_type,
            "validity_days": validity_days,
            "parent": parent,
            "path_length": path_length,
            "permitted": list(permitted),
            "excluded": list(excluded),
            "organization": organization,
            "passphrase": passphrase,
            "parent_passphrase": parent_passphrase,
            "import_cert": import_cert,
            "import_key": import_key,
        },
    )


def _make_ca(state: Any, host: Any, **kw: Any) -> bool:
    cas = _store(kw["store"])
    ca = kw["ca"]
    secret = _source(kw["passphrase"])
    try:
        if ca in cas.names():  # made meanwhile (another run): keep it
            return True
        if kw["import_cert"] is not None:
            cas.import_ca(
                ca,
                Path(kw["import_cert"]),
                Path(kw["import_key"]),
                passphrase=secret,
                unencrypted=secret is None,
                parent=kw["parent"],
            )
        elif kw["parent"] is None:
            cas.create_root(
                ca,
                key_type=kw["key_type"],
                validity_days=kw["validity_days"],
                organization=kw["organization"],
                path_length=kw["path_length"],
                permitted=kw["permitted"],
                excluded=kw["excluded"],
                passphrase=secret,
                unencrypted=secret is None,
            )
        else:
            cas.create_sub_ca(
                ca,
                kw["parent"],
                parent_passphrase=_source(kw["parent_passphrase"]),
                key_type=kw["key_type"],
                validity_days=kw["validity_days"],
                organization=kw["organization"],
                path_length=kw["path_length"],
                permitted=kw["permitted"],
                excluded=kw["excluded"],
                passphrase=secret,
                unencrypted=secret is None,
            )
    except CAError as exc:
        if ca in cas.names():  # another process made it between our check and now
            return True
        return _fail(state, host, str(exc))
    return True


@operation()
def controller_ready(what: str):
    """
    Nothing on the host: the point of the run after which the controller's work of the first
    host (``context.first_to_reach``: CAs made, certificates revoked, CRLs issued) is done.
    pyinfra orders operations by each host's sequence; this one, called on every host, puts
    that work before any host's signing or CRL upload.

    + what: what is ready (for the output)

    **Example:**

    .. code:: python

        pki.controller_ready(name="CAs and CRLs ready", what="CAs and CRLs")
    """
    host.noop(f"{what} ready on the controller")
    yield from ()


@operation()
def crl(
    ca: str,
    store: str,
    passphrase: str | None = None,
    crl_days: int = 7,
    revoking: bool = False,
):
    """
    Ensure the CA's CRL is current: issued again when missing, stale, lacking a revocation, or
    within half of ``crl_days`` of its next update (at execution time, on the controller).

    + ca: the CA's name
    + store: the CA store directory on the controller
    + passphrase: ``env:NAME`` or ``file:PATH`` for the CA key (None: unencrypted)
    + crl_days: the CRL's lifetime (its nextUpdate is this many days ahead)
    + revoking: an earlier operation of this run revokes certificates of this CA (the CRL is
      then issued after it, at execution time)

    **Example:**

    .. code:: python

        pki.crl(name="CRL duckcorp", ca="duckcorp", store="pki", _run_once=True)
    """
    cas = _store(store)
    info = _ca_or_error(cas, ca)
    if info is not None and not info.can_sign_crl:
        host.noop(f"CRL {ca}: the CA certificate may not sign CRLs (no cRLSign)")
        return
    if info is not None and not revoking and not cas.crl_due(ca, issue.crl_window(crl_days)):
        host.noop(f"CRL {ca} is current")
        return
    why = "CA made by this run" if info is None else "due (missing, old or lacking revocations)"
    if revoking:
        why = "certificates revoked by this run"
    announce(f"CRL {ca}: will issue ({why})")
    yield FunctionCommand(
        _issue_crl, (), {"ca": ca, "store": store, "passphrase": passphrase, "days": crl_days}
    )


def _issue_crl(state: Any, host: Any, ca: str, store: str, passphrase: str | None, days: int):
    cas = _store(store)
    try:
        if cas.crl_due(ca, issue.crl_window(days)):  # another run may have just done it
            cas.crl(ca, _source(passphrase), next_update_days=days)
    except CAError as exc:
        return _fail(state, host, str(exc))
    return True


@operation()
def removed_certificates(store: str, holders: dict[str, list[str]], revoke: bool = False):
    """
    Report certificates the store still has as valid for a host of ``holders`` under a name the
    inventory no longer gives that host (they are never silently left valid and forgotten), and
    revoke them when ``revoke`` (the inventory's ``revoke_removed``).

    + store: the CA store directory on the controller
    + holders: every host (FQDN) of the inventory and the names of its CA-issued certificates
    + revoke: revoke them (reason: cessationOfOperation) at execution time; otherwise only a
      warning per certificate, with the command that revokes it

    **Example:**

    .. code:: python

        pki.removed_certificates(store="pki", holders={"db1.example.test": ["postgres"]})
    """
    found = issue.removed_certificates(_store(store), holders)
    if not found:
        host.noop("no certificate removed from the inventory is still valid")
        return
    for record in found:
        what = (
            f"certificate {record.host}/{record.cert_name} ({record.ca} {record.serial_hex}) is "
            f"no longer in the inventory"
        )
        if revoke:
            announce(f"{what}: will revoke it (revoke_removed)")
        else:
            logger.warning(
                f"{what} but still valid until {record.not_after:%Y-%m-%d}: "
                f"pkinfra ca revoke {record.ca} {record.serial_hex}"
            )
    if not revoke:
        host.noop(f"{len(found)} removed certificate(s) still valid (revoke_removed is off)")
        return
    serials = [(r.ca, r.serial_hex) for r in found]
    yield FunctionCommand(_revoke_removed, (store, serials), {})


def _revoke_removed(state: Any, host: Any, store: str, serials: list[tuple[str, str]]) -> bool:
    cas = _store(store)
    try:
        for ca, serial in serials:
            cas.revoke(ca, serial, reason="cessation_of_operation")
    except CAError as exc:
        return _fail(state, host, str(exc))
    return True


# -- hosts: certificates ------------------------------------------------------------------------


#: A certificate directory that does not exist (``PkiFiles``'s entry).
EMPTY_DIR: PkiDirInfo = {"key": None, "cert": None, "sha256": {}}


def _dir_info(directory: str, current: PkiDirInfo | None) -> PkiDirInfo:
    if current is None:
        facts = host.get_fact(PkiFiles, directories=[directory])
        current = facts["directories"].get(directory) if facts else None
    return current or EMPTY_DIR


@operation()
def certificate(
    directory: str,
    names: Sequence[str],
    issuer: str,
    store: str,
    host_id: str,
    cert_name: str,
    passphrase: str | None = None,
    key_type: str = "ec-p256",
    usages: Sequence[str] = ("server",),
    validity_days: int = 90,
    renew_before_days: int | None = None,
    current: PkiDirInfo | None = None,
):
    """
    Ensure a host certificate from one of our CAs: key made on the host, CSR signed on the
    controller at execution time, certificate and chain written beside and renamed into place.

    + directory: holds key.pem (0600, made here, kept across renewals), cert.pem, chain.pem,
      fullchain.pem and bundle.pem
    + names: the DNS names (the first is also the CN)
    + issuer: the CA that signs it
    + store: the CA store directory on the controller
    + host_id, cert_name: how the CA's record names the holder
    + passphrase: ``env:NAME`` or ``file:PATH`` for the issuer's key (None: unencrypted)
    + key_type: the host key's type (an existing key of another type is refused: rollover)
    + usages: ``server`` and/or ``client`` (extended key usage)
    + validity_days: lifetime of a new certificate
    + renew_before_days: renew when this many days are left (default: a third of the lifetime)
    + current: this directory's entry of a ``PkiFiles`` fact already read (one fact per host)

    Nothing happens while the certificate matches the key, names, usages and issuer, is not
    revoked and is outside the renewal window; otherwise the run says why and reissues: two
    remote commands, one that makes the key when it is missing and prints the CSR, one that
    writes the certificate and its chain files.

    **Example:**

    .. code:: python

        pki.certificate(
            directory="/etc/pkinfra/certs/postgres", names=["db1.example.test"],
            issuer="duckcorp", store="pki", host_id="db1.example.test", cert_name="postgres",
            passphrase="file:/root/ca-pass",
        )
    """
    plan = _certificate_plan(
        directory=directory,
        names=names,
        issuer=issuer,
        store=store,
        host_id=host_id,
        cert_name=cert_name,
        passphrase=passphrase,
        key_type=key_type,
        usages=usages,
        validity_days=validity_days,
        renew_before_days=renew_before_days,
        current=_dir_info(directory, current),
    )
    if plan.noop is not None:
        host.noop(plan.noop)
        return
    announce(plan.reason)
    yield from plan.commands
    if plan.issue is not None:
        yield FunctionCommand(_issue, (), plan.issue)


@operation()
def certificates(
    store: str,
    host_id: str,
    certificates: Sequence[dict[str, Any]],
    current: dict[str, PkiDirInfo] | None = None,
):
    """
    Ensure a host's certificates from our CAs, each as ``certificate`` does, in as few remote
    commands as can be: every key to make and every CSR in one, every new certificate and its
    chain files in one more (issuance runs on all hosts at once, host by host in parallel).

    + store, host_id: as for ``certificate``
    + certificates: for each, the other arguments of ``certificate`` (``directory``, ``names``,
      ``issuer``, ``cert_name``; optionally ``passphrase``, ``key_type``, ``usages``,
      ``validity_days``, ``renew_before_days``)
    + current: the ``directories`` of a ``PkiFiles`` fact already read (one fact per host)

    **Example:**

    .. code:: python

        pki.certificates(
            store="pki", host_id="db1.example.test",
            certificates=[
                {"directory": "/etc/pkinfra/certs/postgres", "names": ["db1.example.test"],
                 "issuer": "duckcorp", "cert_name": "postgres"},
            ],
        )
    """
    if current is None:
        facts = host.get_fact(PkiFiles, directories=[c["directory"] for c in certificates])
        current = facts["directories"] if facts else {}
    plans = [
        _certificate_plan(
            store=store,
            host_id=host_id,
            current=current.get(c["directory"], EMPTY_DIR),
            **c,
        )
        for c in certificates
    ]
    if all(plan.noop is not None for plan in plans):
        host.noop("; ".join(str(plan.noop) for plan in plans) or "no certificate")
        return
    issues = []
    for plan in plans:
        if plan.noop is None:
            announce(plan.reason)
            yield from plan.commands
            if plan.issue is not None:
                issues.append(plan.issue)
    if issues:
        yield FunctionCommand(_issue_all, (issues,), {})


@dataclass(frozen=True)
class _CertificatePlan:
    """What the ``certificate`` operation does for one certificate."""

    noop: str | None  # why nothing is done (then nothing else is set)
    reason: str = ""  # why something is done
    commands: tuple[Any, ...] = ()  # run before the issuance, or instead of it
    issue: dict[str, Any] | None = None  # ``_issue``'s arguments, keys made there included


def _certificate_plan(
    *,
    directory: str,
    names: Sequence[str],
    issuer: str,
    store: str,
    host_id: str,
    cert_name: str,
    current: PkiDirInfo,
    passphrase: str | None = None,
    key_type: str = "ec-p256",
    usages: Sequence[str] = ("server",),
    validity_days: int = 90,
    renew_before_days: int | None = None,
) -> _CertificatePlan:
    """Decide one certificate: refuse (``OperationError``), keep, fix, or reissue and why."""
    if key_type not in GENPKEY_ARGS:
        raise OperationError(f"certificate {cert_name}: unknown key type '{key_type}'")
    if not names:
        raise OperationError(f"certificate {cert_name}: needs at least one name")
    cas = _store(store)
    ca_info = _ca_or_error(cas, issuer)
    key_path = f"{directory}/key.pem"
    key = current["key"]
    held = current["cert"]

    commands: list[Any] = []
    key_spki: str | None = None
    if key is None:
        reasons = ["key missing (made on the host)"]
        if held is not None:
            # An old certificate must not stay live beside a key it does not match.
            commands.append(f"rm -f {q(directory + '/cert.pem')} {q(directory + '/fullchain.pem')}")
        commands += [f"mkdir -p {q(directory)}", genpkey(key_path, key_type)]
    else:
        if key["kind"] != "regular file":
            raise OperationError(f"key {key_path}: is a {key['kind']}; not touching it")
        if key["key_type"] is None or key["spki_sha256"] is None:
            raise OperationError(
                f"key {key_path}: exists but openssl cannot read it as a key; not touching it"
            )
        if key["key_type"] != key_type:
            raise OperationError(
                f"key {key_path}: is {key['key_type']}, the inventory wants {key_type}; "
                "a new key type needs a key rollover"
            )
        key_spki = key["spki_sha256"]
        reasons = []
        if (key["owner"], key["group"]) != ("root", "root"):
            commands.append(f"chown root:root {q(key_path)}")
        if key["mode"] != "0600":
            commands.append(f"chmod 0600 {q(key_path)}")
        if commands:
            reasons.append(f"key owner/mode {key['owner']}:{key['group']} {key['mode']} fixed")

    wanted = issue.Wanted(
        names=tuple(names),
        usages=tuple(sorted(set(usages))),
        issuer=issuer,
        validity_days=validity_days,
        renew_before_days=renew_before_days,
    )
    if held is False:
        cert_reasons = ["certificate unreadable"]
    elif key is None and held is not None:
        cert_reasons = ["new key"]
    else:
        cert_reasons = issue.reissue_reasons(
            wanted,
            _held(held) if isinstance(held, dict) else None,
            key_spki_sha256=key_spki,
            issuer_key_id=issue.key_id(ca_info) if ca_info is not None else None,
            revoked=_revoked(cas, issuer, held) if ca_info is not None else False,
        )
    if cert_reasons:
        reasons += [] if key is None and held is None else cert_reasons
        if ca_info is None:
            reasons.append(f"CA {issuer} is made by this run")
        return _CertificatePlan(
            noop=None,
            reason=f"certificate {cert_name}: will issue: {', '.join(reasons)}",
            issue={
                "directory": directory,
                "names": list(names),
                "usages": list(wanted.usages),
                "issuer": issuer,
                "store": store,
                "passphrase": passphrase,
                "validity_days": validity_days,
                "host_id": host_id,
                "cert_name": cert_name,
                "expected_spki": key_spki,
                # In the CSR's remote command: the key is made (or fixed) there.
                "prepare": commands,
            },
        )

    assert isinstance(held, dict)
    stale = _stale_chain_files(cas, issuer, current["sha256"])
    if stale:
        reasons.append(f"{', '.join(stale)} out of date")
        commands += _chain_commands(cas, issuer, directory)
    if reasons:
        return _CertificatePlan(
            noop=None,
            reason=f"certificate {cert_name}: {', '.join(reasons)}",
            commands=tuple(commands),
        )
    until = dt.datetime.fromisoformat(held["not_after"])
    return _CertificatePlan(
        noop=f"certificate {cert_name} is current ({', '.join(names)}; {issuer}; "
        f"valid until {until:%Y-%m-%d})"
    )


def _held(cert: Any) -> issue.Held:
    return issue.Held(
        serial=int(cert["serial"], 16),
        not_after=dt.datetime.fromisoformat(cert["not_after"]),
        names=tuple(cert["names"]),
        usages=tuple(cert["usages"]),
        issuer=cert["issuer"],
        issuer_key_id=cert["issuer_key_id"],
        spki_sha256=cert["spki_sha256"],
    )


def _revoked(cas: CAStore, issuer: str, held: Any) -> bool:
    if not isinstance(held, dict):
        return False
    try:
        return cas.get_record(issuer, held["serial"]).revoked_at is not None
    except CAError:
        return False  # not issued through this store (e.g. before an import)


def _stale_chain_files(cas: CAStore, issuer: str, have: dict[str, str]) -> list[str]:
    chain = cas.chain_pem(issuer)
    stale = []
    if have.get("chain.pem") != _sha256(chain):
        stale.append("chain.pem")
    if have.get("bundle.pem") != _sha256(cas.bundle_pem(issuer)):
        stale.append("bundle.pem")
    if "chain.pem" in stale or have.get("fullchain.pem") != have.get("cert+chain"):
        stale.append("fullchain.pem")
    return stale


def _chain_commands(cas: CAStore, issuer: str, directory: str) -> list[Any]:
    """New chain.pem and bundle.pem, and fullchain.pem made from them on the host."""
    staged = {
        new_name(f"{directory}/chain.pem"): cas.chain_pem(issuer),
        new_name(f"{directory}/bundle.pem"): cas.bundle_pem(issuer),
    }
    d = q(directory)
    fullchain_new = q(new_name(f"{directory}/fullchain.pem"))
    install = (
        f"cat {d}/cert.pem {q(new_name(f'{directory}/chain.pem'))} > {fullchain_new} && "
        + install_command(directory, ["chain.pem", "bundle.pem", "fullchain.pem"], key_spki=None)
    )
    writes = inline_writes(staged)
    if writes is not None:
        return [writes + install]
    return [*(FileUploadCommand(BytesIO(c), path) for path, c in staged.items()), install]


def _issue(state: Any, host: Any, **kw: Any) -> bool:
    """Execution time: one certificate (``_issue_all``'s arguments for one)."""
    return _issue_all(state, host, [kw])


def _issue_all(state: Any, host: Any, certs: Sequence[dict[str, Any]]) -> bool:
    """Execution time: keys made where missing and CSRs printed in one remote command, each CSR
    signed here, then every certificate and its chain files written beside and renamed into
    place in one more. At the first failure no more are signed (as a failed operation stops
    the host); those already signed are installed."""
    script = "\n".join(
        f"echo '@csr|{i}'; ("
        + " && ".join([*kw.get("prepare", ()), csr_command(kw["directory"], kw["names"][0])])
        + ")"
        for i, kw in enumerate(certs)
    )
    _, output = run_on_host(state, host, StringCommand(script))
    csrs = _sections(output.stdout_lines, "@csr|")
    signed: list[tuple[dict[str, Any], Issued, str]] = []
    failed = False
    for i, kw in enumerate(certs):
        what = f"certificate {kw['cert_name']}"
        csr = "\n".join(csrs.get(i, [])) + "\n"
        if "-----BEGIN CERTIFICATE REQUEST-----" not in csr:
            failed = not _fail(
                state, host, f"{what}: cannot make a CSR with {kw['directory']}/key.pem"
            )
            break
        try:
            spki = spki_sha256(load_csr(csr.encode()))
        except ValueError as exc:
            failed = not _fail(state, host, f"{what}: {exc}")
            break
        expected = kw["expected_spki"]
        if expected is not None and spki != expected:
            failed = not _fail(
                state, host, f"{what}: key.pem changed since the run read it; not signed"
            )
            break
        try:
            issued = _store(kw["store"]).sign_csr(
                kw["issuer"],
                csr.encode(),
                names=kw["names"],
                usages=kw["usages"],
                validity_days=kw["validity_days"],
                host=kw["host_id"],
                cert_name=kw["cert_name"],
                passphrase=_source(kw["passphrase"]),
                expected_spki_sha256=spki,
            )
        except CAError as exc:
            failed = not _fail(state, host, f"{what}: {exc}")
            break
        signed.append((kw, issued, spki))
    return _install_issued(state, host, signed) and not failed


def _sections(lines: Sequence[str], tag: str) -> dict[int, list[str]]:
    """Output lines after each ``<tag><n>`` line, by n."""
    found: dict[int, list[str]] = {}
    section: list[str] | None = None
    for line in lines:
        if line.startswith(tag) and line[len(tag) :].isdigit():
            section = found.setdefault(int(line[len(tag) :]), [])
        elif section is not None:
            section.append(line)
    return found


def _install_issued(
    state: Any, host: Any, signed: Sequence[tuple[dict[str, Any], Issued, str]]
) -> bool:
    """Execution time: each new certificate and its chain files written beside and renamed into
    place only when cert.pem matches key.pem: in one remote command for as many as it carries
    (``INLINE_MAX``), by uploads for a certificate too big for one."""
    blocks: list[tuple[int, str]] = []
    ok = True
    for i, (kw, issued, spki) in enumerate(signed):
        directory = kw["directory"]
        files = {
            "chain.pem": issued.chain_pem,
            "bundle.pem": issued.bundle_pem,
            "cert.pem": issued.cert_pem,
            "fullchain.pem": issued.fullchain_pem,
        }
        install = install_command(directory, list(files), key_spki=spki)
        writes = inline_writes({new_name(f"{directory}/{n}"): c for n, c in files.items()})
        if writes is not None:
            blocks.append((i, f"({writes}{install}) || echo '@failed|{i}'"))
            continue
        uploads = [
            FileUploadCommand(BytesIO(c), new_name(f"{directory}/{n}")) for n, c in files.items()
        ]
        if not _run_commands(state, host, [*uploads, install]):
            ok = _fail(state, host, _not_installed(kw, issued))
    # As many certificates per command as it carries.
    batches: list[list[tuple[int, str]]] = []
    size = INLINE_MAX
    for block in blocks:
        if size + len(block[1]) > INLINE_MAX:
            batches.append([])
            size = 0
        batches[-1].append(block)
        size += len(block[1])
    for batch in batches:
        done, output = run_on_host(state, host, StringCommand("\n".join(b for _, b in batch)))
        refused = set(_sections(output.stdout_lines, "@failed|")) if done else {i for i, _ in batch}
        for i, _ in batch:
            if i in refused:
                ok = _fail(state, host, _not_installed(*signed[i][:2]))
    return ok


def _not_installed(kw: dict[str, Any], issued: Issued) -> str:
    return (
        f"certificate {kw['cert_name']}: serial {issued.serial:x} not installed (key.pem changed?)"
    )


# -- hosts: trust anchors, CA bundles, CRLs -----------------------------------------------------


def _files_fact(paths: Sequence[str], current: dict[str, str] | None) -> dict[str, str]:
    if current is not None:
        return current
    facts = host.get_fact(PkiFiles, files=list(paths))
    return facts["files"] if facts else {}


@operation()
def trust(
    store: str,
    anchors: Sequence[str] = (),
    bundles: Sequence[str] = (),
    current: dict[str, str] | None = None,
):
    """
    Ensure the host trusts our CAs: their roots in the system store, their bundles in a file.

    + store: the CA store directory on the controller
    + anchors: root CAs to install as ``/usr/local/share/ca-certificates/pkinfra-<ca>.crt``
      (then the system store is brought up to date, only when one changed:
      ``pkinfra.truststore``, what ``update-ca-certificates`` does, in one process); other
      ``pkinfra-*.crt`` go (``--fresh``: no link to them stays in ``/etc/ssl/certs``)
    + bundles: CAs whose bundle (the CA and its ancestors) goes to ``/etc/pkinfra/ca/<ca>.pem``
    + current: the ``files`` of a ``PkiFiles`` fact already read (path -> SHA-256)
    + revoking: CAs whose CRL this run re-issues for its own revocations

    **Example:**

    .. code:: python

        pki.trust(store="pki", anchors=["duckcorp"], bundles=["duckcorp-monitoring"])
    """
    cas = _store(store)
    wanted = {issue.trust_anchor_path(ca): ("anchor", ca) for ca in anchors}
    wanted |= {issue.ca_bundle_path(ca): ("bundle", ca) for ca in bundles}
    have = _files_fact([*wanted, f"{issue.TRUST_DIR}/pkinfra-*.crt"], current)
    changed: list[str] = []
    files: dict[str, Content] = {}
    for path, (kind, ca) in wanted.items():
        read = cas.root_pem if kind == "anchor" else cas.bundle_pem
        if _ca_or_error(cas, ca) is None:
            changed.append(f"{path} (CA made by this run)")
            files[path] = _bind(read, ca)
            continue
        content = read(ca)
        if have.get(path) != _sha256(content):
            changed.append(path)
            files[path] = content
    stale = sorted(
        p for p in have if p.startswith(f"{issue.TRUST_DIR}/pkinfra-") and p not in wanted
    )
    changed += [f"{p} (removed)" for p in stale]
    if not changed:
        host.noop(f"trust: {', '.join(wanted) or 'nothing'} current")
        return
    announce(f"trust: will write {', '.join(changed)}")
    then = []
    if stale:
        # Without --fresh, Debian's update-ca-certificates keeps a deleted local CA's links in
        # /etc/ssl/certs: it clears orphans only when its own configuration adds or removes one.
        then += [f"rm -f {' '.join(q(p) for p in stale)}", truststore_command(fresh=True)]
    elif any(p.startswith(issue.TRUST_DIR) for p in files):
        then.append(truststore_command())
    yield from _file_commands(files, " && ".join(then) or None, "trust")


def _bind(read: Callable[[str], bytes | None], ca: str) -> Callable[[], bytes | None]:
    def bound() -> bytes | None:
        return read(ca)

    return bound


@operation()
def crls(
    store: str,
    cas: Sequence[str],
    crl_days: dict[str, int] | None = None,
    current: dict[str, str] | None = None,
    revoking: Sequence[str] = (),
):
    """
    Ensure the host has the current CRL of each CA it checks, at ``/etc/pkinfra/crl/<ca>.pem``.

    + store: the CA store directory on the controller
    + cas: the CAs (every CA of a chain whose clients the host verifies)
    + crl_days: per CA, the lifetime its ``pki.crl`` operation uses (default 7): a CRL that
      operation re-issues in this run is deployed as it is then
    + current: the ``files`` of a ``PkiFiles`` fact already read (path -> SHA-256)

    **Example:**

    .. code:: python

        pki.crls(store="pki", cas=["duckcorp-monitoring", "duckcorp"])
    """
    store_ = _store(store)
    days = crl_days or {}
    have = _files_fact([issue.crl_path(ca) for ca in cas], current)
    changed: list[str] = []
    files: dict[str, Content] = {}
    for ca in cas:
        path = issue.crl_path(ca)
        info = _ca_or_error(store_, ca)
        if info is not None and not info.can_sign_crl:
            continue
        if info is None or ca in revoking or store_.crl_due(ca, issue.crl_window(days.get(ca, 7))):
            changed.append(f"{path} (re-issued by this run)")
            files[path] = _bind(store_.current_crl, ca)
            continue
        content = store_.current_crl(ca)
        assert content is not None  # not due, so it exists
        if have.get(path) != _sha256(content):
            changed.append(path)
            files[path] = content
    if not changed:
        host.noop(f"CRLs of {', '.join(cas)} current")
        return
    announce(f"CRLs: will write {', '.join(changed)}")
    yield from _file_commands(files, None, "CRLs")


# -- key rollover of a CA-issued certificate ----------------------------------------------------


@operation()
def key_rollover(
    directory: str,
    cert_name: str,
    label: str | None,
    owners: Sequence[str],
    servers: Sequence[str],
    ttl: int,
    issuer: str,
    store: str,
    host_id: str,
    names: Sequence[str],
    usages: Sequence[str] = ("server",),
    validity_days: int = 90,
    passphrase: str | None = None,
    services: Sequence[str] = (),
    wait: int = 0,
    state_dir: str = "/etc/pkinfra/rollover",
    current: PkiDirInfo | None = None,
    next_current: PkiDirInfo | None = None,
    states: dict[str, RolloverStateInfo] | None = None,
):
    """
    Ensure the key of a CA-issued certificate has been rolled over to ``label``, never leaving
    a served certificate without its TLSA record (RFC 7671).

    + directory: the certificate's directory; ``<directory>/next`` holds the next key and its
      certificate (made by a ``certificate`` operation named ``<cert_name>-next``)
    + cert_name, issuer, store, host_id, names, usages, validity_days, passphrase: as for
      ``certificate`` (the switch signs the next key's certificate under ``cert_name``)
    + label: the inventory's ``rollover`` label; None: none asked (one in progress goes on)
    + owners: the TLSA owner names of the certificate's publications
    + servers: addresses of every authoritative server of their zone
    + ttl: the TLSA records' TTL (step 2 waits that long after the next record is served)
    + services: the services that use the certificate (their pending notifications hold the
      old record)
    + wait: how long this run may wait for step 2
    + state_dir: the host's rollover states (``<cert_name>.json``)
    + current, next_current: the two directories' ``PkiFiles`` entries, already read
    + states: the ``states`` of a ``PkiFiles`` fact already read (path -> rollover state)

    Step 1 (a run): the next key and certificate; its record joins the zone with the next
    run's DNS deploy, and this operation then checks every server and notes the time. Step 2
    (once served for ``ttl``): the next key's certificate is signed under ``cert_name`` and
    the next key and files replace the live ones in one atomic step (``pkinfra.switch``); the
    services get them in the same run. A later run, once no service of the certificate has a
    notification pending, revokes the old key's certificates (superseded), which drops the old
    record, and removes ``next/``. Each step is the one ``pkinfra.rollover`` plans.

    **Example:**

    .. code:: python

        pki.key_rollover(
            directory="/etc/pkinfra/certs/postgres", cert_name="postgres", label="2026-11",
            owners=["_5432._tcp.db1.example.test"], servers=["192.0.2.53"], ttl=300,
            issuer="duckcorp", store="pki", host_id="db1.example.test",
            names=["db1.example.test"],
        )
    """
    path = f"{state_dir}/{cert_name}.json"
    if states is None:
        facts = host.get_fact(PkiFiles, states=[path])
        states = facts["states"] if facts else {}
    found = states.get(path)
    state = found["state"] if found else {}
    next_dir = f"{directory}/next"
    # Only what the plan looks at is read: the current key to begin, the next one after that.
    in_progress = rollover.active(rollover.CA, state)
    key = None if in_progress else _dir_info(directory, current)["key"]
    nxt = _dir_info(next_dir, next_current)["key"] if in_progress else None
    pending = None
    if rollover.at(rollover.CA, state) == rollover.DELIVER:
        told = host.get_fact(DirectoryFiles, directory=paths.PENDING_DIR) or []
        pending = sorted(set(services) & set(told))
    seen = rollover.Seen(
        asked=label,
        now=found["now"] if found else 0,
        ttl=ttl,
        wait=wait,
        old_key=bool(key and key.get("spki_sha256")),
        next_key=bool(nxt and nxt.get("spki_sha256")),
        next_dir=next_dir,
        pending=pending,
    )
    step = rollover.plan(rollover.CA, state, seen)
    if step.action == rollover.REFUSE:
        raise OperationError(f"{step.text(cert_name)} ({path})")
    if step.action in (rollover.NOTHING, rollover.WAIT):
        host.noop(step.text(cert_name))
        return
    announce(step.text(cert_name))
    if step.action == rollover.BEGIN:
        assert key is not None
        yield _write_state(path, {"label": label, "step": step.saves, "old": key["spki_sha256"]})
        return
    if step.action == rollover.RETIRE:
        yield FunctionCommand(
            _retire_key,
            (),
            {"store": store, "host_id": host_id, "cert_name": cert_name, "spki": state["old"]},
        )
        yield f"rm -rf {q(next_dir)}"
        yield _write_state(path, {**state, "step": step.saves})
        return

    assert nxt is not None and nxt["spki_sha256"] is not None
    record = f"3 1 1 {nxt['spki_sha256']}"
    check = {"owners": list(owners), "record": record, "servers": list(servers)}
    if step.action == rollover.PUBLISH:
        published = {**state, "step": step.saves}
        hold = ttl if step.then_switch else None
        yield FunctionCommand(
            _next_served, (), {**check, "path": path, "new_state": published, "hold": hold}
        )
        if hold is None:
            return
    else:  # SWITCH, after the last check
        yield FunctionCommand(_next_served, (), {**check, "hold": step.left, "path": None})
    yield FunctionCommand(
        _issue,
        (),
        {
            "directory": next_dir,
            "names": list(names),
            "usages": sorted(set(usages)),
            "issuer": issuer,
            "store": store,
            "passphrase": passphrase,
            "validity_days": validity_days,
            "host_id": host_id,
            "cert_name": cert_name,
            "expected_spki": nxt["spki_sha256"],
        },
    )
    # One atomic step on the host: the directory never holds a key beside another's certificate.
    yield switch_command(directory, next_dir)
    switched = rollover.SAVES[rollover.CA][rollover.SWITCH]
    yield _write_state(path, {**state, "step": switched, "new": nxt["spki_sha256"]})


def _write_state(path: str, state: dict[str, Any], time_field: str | None = None) -> str:
    """A shell command that writes a rollover state (no secret in it) beside, then renames."""
    text = json.dumps(state, sort_keys=True)
    if time_field:
        text = text[:-1] + f', "{time_field}": %s}}'
        body = f'printf \'%s\\n\' "$(printf {q(text)} "$(date +%s)")"'
    else:
        body = f"printf '%s\\n' {q(text)}"
    tmp = q(new_name(path))
    return f"mkdir -p {q(path.rpartition('/')[0])} && {body} > {tmp} && mv -f {tmp} {q(path)}"


def _next_served(state: Any, host: Any, **kw: Any) -> bool:
    """Execution time: every authoritative server serves the next record (checked from here);
    then, with ``path``, note when on the host; with ``hold``, wait that long and check again."""
    import time

    def why() -> str:
        for owner in kw["owners"]:
            reason = dnsupdate.served_everywhere(owner, "TLSA", kw["record"], kw["servers"])
            if reason:
                return reason
        return ""

    reason = why()
    if reason:
        if kw.get("path") and kw.get("hold") is None:
            logger.warning(f"{host.print_prefix}key rollover: {reason}; a later run checks again")
            return True
        return _fail(state, host, f"key rollover: step 2 refused: {reason}")
    if kw.get("path"):
        ok, _ = run_on_host(
            state,
            host,
            StringCommand(_write_state(kw["path"], kw["new_state"], time_field="served_since")),
        )
        if not ok:
            return _fail(state, host, f"key rollover: cannot write {kw['path']}")
    if kw.get("hold"):
        time.sleep(kw["hold"])
        reason = why()
        if reason:
            return _fail(state, host, f"key rollover: step 2 refused: {reason}")
    return True


def _retire_key(state: Any, host: Any, **kw: Any) -> bool:
    try:
        retired = issue.retire_key(_store(kw["store"]), kw["host_id"], kw["cert_name"], kw["spki"])
    except CAError as exc:
        return _fail(state, host, f"key rollover {kw['cert_name']}: {exc}")
    logger.info(
        f"{host.print_prefix}key rollover {kw['cert_name']}: {len(retired)} certificate(s) of "
        "the old key revoked (superseded); its TLSA record leaves with the next DNS deploy"
    )
    return True
