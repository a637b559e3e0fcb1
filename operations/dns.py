"""Operations for the DNS servers: TSIG key files and BIND.

Everything they install is rendered on the controller (``pkinfra.zones``, ``pkinfra.tsig``);
these operations compare, stage beside, check with BIND's own checker, rename into
place and reload - never restart. A file that fails the check is never installed, the running
server keeps its configuration, and the checker's message is shown.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, OperationError, operation
from pyinfra.api.command import FileUploadCommand
from typing_extensions import override

from operations.context import announce, upload_private_to_host
from operations.facts import (
    AdminZone,
    BindIncludes,
    DirectoryFiles,
    FileDigest,
    ProcessId,
    ZoneHeader,
)
from operations.util import (
    install_staged,
    ownership_fixes,
    q,
    run_checked,
    run_staged,
    stage_secret,
)
from pkinfra import tsig
from pkinfra.dnsupdate import served_everywhere
from pkinfra.zones import (
    Layout,
    ZoneError,
    admin_serial,
    include_chain,
    next_serial,
    soa_serial_span,
)

NAMED_START = "/etc/init.d/named start >/var/log/pkinfra-named-start.log 2>&1"
NAMED_LOG = "/var/log/pkinfra-named-start.log"
#: How long a run waits for every authoritative server to serve an admin's zone's change.
SERVED_WAIT = 30
_LAYOUT = Layout()


class _Text(StringIO):
    """Text to upload; its repr names its hash, not an object address (stable in fixtures)."""

    @override
    def __repr__(self) -> str:
        return f"<text sha256:{_sha256(self.getvalue())[:16]}>"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _install(staged: str, path: str, owner: str, group: str, mode: str) -> str:
    return install_staged(staged, path, mode, owner, group)


def _refuse(checker: str, what: str, staged: list[str]) -> str:
    """Shell that runs ``checker``; on failure shows its output, removes ``staged``, fails."""
    cleanup = " ".join(q(p) for p in staged)
    return (
        f'out=$({checker} 2>&1) || {{ echo "pkinfra: {what} failed the check; nothing was'
        f' installed, the running server is unchanged:" >&2; echo "$out" >&2;'
        f" rm -f {cleanup}; exit 1; }}"
    )


@operation()
def secret_file(
    src: str,
    path: str,
    owner: str = "root",
    group: str = "root",
    mode: str = "0600",
    make_key: str | None = None,
):
    """
    Ensure a secret file (a TSIG key) is on the host, uploaded only when its SHA-256 differs.

    + src: the file on the controller
    + path: where it goes on the host
    + owner, group, mode: of the installed file
    + make_key: when ``src`` does not exist yet, make it at execution time as a new TSIG key of
      this name (so ``--dry`` leaves the controller's secrets untouched)

    The content never goes through a diffing upload, a command line or a fact: the upload is a
    plain file transfer to a 0600 file beside the target, then a rename.

    **Example:**

    .. code:: python

        dns.secret_file(src="pki/secrets/mx1.example.test.key", path="/etc/pkinfra/tsig.key")
    """
    if int(mode, 8) & 0o007:
        raise OperationError(f"secret {path}: mode {mode} would make it readable by others")
    try:
        wanted: str | None = hashlib.sha256(Path(src).read_bytes()).hexdigest()
    except FileNotFoundError:
        if make_key is None:
            raise OperationError(f"secret {path}: {src} does not exist") from None
        wanted = None
    except OSError as exc:
        raise OperationError(f"secret {path}: cannot read {src}: {exc.strerror}") from None
    info = host.get_fact(FileDigest, path=path)
    if info is False:
        raise OperationError(f"secret {path}: exists but is not a regular file; not touching it")
    if isinstance(info, dict) and info["sha256"] == wanted:
        fixes = ownership_fixes(
            path, info["owner"], info["group"], info["mode"], owner, group, mode
        )
        if not fixes:
            host.noop(f"secret {path} is current ({mode} {owner}:{group})")
        else:
            have = f"{info['mode']} {info['owner']}:{info['group']}"
            announce(f"secret {path}: {have}, wanted {mode} {owner}:{group}")
        yield from fixes
        return
    if wanted is not None:
        why = "missing" if info is None else f"not the one in {src}"
        announce(f"secret {path}: {why}; installing it (its content is never shown)")
    if wanted is None:
        assert make_key is not None
        logger.info(f"{host.print_prefix}TSIG key {make_key}: made on the controller by this run")
        yield FunctionCommand(_make_key, (src, make_key), {})
    staged = run_staged(path)
    # The empty 0600 file first: uploads that keep an existing file's mode never widen it.
    yield stage_secret(path)
    # Not FileUploadCommand: with sudo, pyinfra's upload would stage the secret in /tmp with
    # the SFTP server's default mode, where other users of the host could read it.
    yield FunctionCommand(_upload_secret, (src, staged), {})
    yield _install(staged, path, owner, group, mode)


def _upload_secret(state: Any, host: Any, src: str, staged: str) -> bool:
    """Execution time: the secret into its 0600 staged file, never readable on the way."""
    if upload_private_to_host(state, host, src, staged):
        return True
    host.log_styled(
        f"pkinfra: cannot upload the secret to {staged}", fg="red", log_func=logger.error
    )
    return False


def _make_key(state: Any, host: Any, src: str, name: str) -> bool:
    """Execution time, on the controller: the key file (another host's operation may have made
    it already in this run; ``ensure_key`` keeps an existing one)."""
    try:
        tsig.ensure_key(Path(src).parent, name, path=Path(src))
    except tsig.TSIGError as exc:
        host.log_styled(f"pkinfra: {exc}", fg="red", log_func=logger.error)
        return False
    return True


@operation()
def key_accepted(key_file: str | None, server: str, zone: str):
    """
    Check, at execution time from the controller, that ``server`` accepts the TSIG key in
    ``key_file`` (a signed SOA query for ``zone``); fail the host's run otherwise, so nothing
    after it (installing that key on the host) happens.

    + key_file: the key on the controller (None: nothing to check, a no-op)
    + server: the primary's address
    + zone: a zone the primary serves

    **Example:**

    .. code:: python

        dns.key_accepted(key_file="pki/secrets/mx1.example.test.next.key",
                         server="192.0.2.53", zone="shadow.test")
    """
    if key_file is None:
        host.noop("no TSIG key rotation under way")
        return
    logger.info(f"{host.print_prefix}TSIG key rotation: checking that {server} accepts the key")
    yield FunctionCommand(_check_accepted, (key_file, server, zone), {})


def _check_accepted(state: Any, host: Any, key_file: str, server: str, zone: str) -> bool:
    why = tsig.accepted_by(Path(key_file), server, zone)
    if why:
        host.log_styled(
            f"pkinfra: {why}; the host keeps its current key", fg="red", log_func=logger.error
        )
        return False
    return True


@operation()
def rotation_recorded(secrets_dir: str, fqdn: str | None):
    """
    Record on the controller that ``fqdn`` holds its next TSIG key, so that
    ``pkinfra dns rotate-key HOST --finish`` may retire the old one.

    + secrets_dir: the inventory's secrets directory
    + fqdn: the host (None: no rotation under way, a no-op)

    **Example:**

    .. code:: python

        dns.rotation_recorded(secrets_dir="pki/secrets", fqdn="mx1.example.test")
    """
    if fqdn is None:
        host.noop("no TSIG key rotation under way")
        return
    keys = tsig.host_keys(Path(secrets_dir), fqdn)
    marker = tsig.installed_marker(Path(secrets_dir), fqdn)
    if keys.next is None:
        host.noop("no key rotation under way")
        return
    if marker.exists() and marker.read_text().strip() == tsig.sha256_file(keys.next.path):
        host.noop(f"key rotation: {fqdn} already holds {keys.next.name}")
        return
    yield FunctionCommand(_record, (secrets_dir, fqdn), {})


def _record(state: Any, host: Any, secrets_dir: str, fqdn: str) -> bool:
    tsig.mark_installed(Path(secrets_dir), fqdn)
    return True


@operation()
def stale_files(directory: str, keep: list[str], suffix: str = ".key"):
    """
    Remove the files ending in ``suffix`` from ``directory`` that are not in ``keep``.

    + directory: e.g. the primary's TSIG key directory
    + keep: file names that stay (everything the inventory still has)
    + suffix: only such files are considered

    **Example:**

    .. code:: python

        dns.stale_files(directory="/etc/bind/pkinfra/keys", keep=["mx1.example.test.key"])
    """
    present = host.get_fact(DirectoryFiles, directory=directory) or []
    stale = sorted(n for n in present if n.endswith(suffix) and n not in keep)
    if not stale:
        host.noop(f"{directory}: no stale {suffix} files")
        return
    announce(f"{directory}: removing {', '.join(stale)} (no longer in the inventory)")
    yield "rm -f " + " ".join(q(f"{directory}/{name}") for name in stale)


@operation()
def named(
    config: str,
    zones: list[dict[str, Any]] | None = None,
    config_file: str = _LAYOUT.config_file,
    admin_conf: str = _LAYOUT.admin_conf,
    include_into: str = _LAYOUT.include_into,
    working_dir: str = _LAYOUT.working_dir,
    servers: list[str] | None = None,
    now: int | None = None,
):
    """
    Ensure BIND runs with pkinfra's configuration file and zones; reload only what changed.

    + config: pkinfra's one configuration file (``pkinfra.zones``), included by the admin
    + zones: zone files as ``pkinfra.zones.ZoneFile`` fields (``zone``, ``path``, ``text`` with
      ``@SERIAL@``, ``content``, ``dynamic``, ``include_path``, ``include_text``, ``admin_file``)
    + config_file: where it goes; ``admin_conf`` (named.conf) must reach it through ``include``
      statements, else the operation refuses and names the line to add to ``include_into``
    + working_dir: named's ``directory`` (relative ``$INCLUDE`` paths of an admin's zone)
    + servers: addresses of every authoritative server: after an admin's zone changed, each
      must serve its TLSA records (``pkinfra.dnsupdate.served_everywhere``)
    + now: the clock for new serials (tests)

    A static zone's file is rewritten when its content hash changed, with a serial above the
    last; a dynamic zone's file only when it is absent. A zone the admin keeps (``admin_file``)
    gets only its include file; when that changes, the admin's file gets a new SOA serial
    (``pkinfra.zones.admin_serial``, those bytes only) and must already ``$INCLUDE`` it.
    Everything new is written beside (``.pkinfra-new``) and checked (``named-checkconf`` on the
    admin's whole configuration with the new file in place of pkinfra's, ``named-checkzone``)
    before anything is renamed into place; then ``rndc reconfig`` for configuration, ``rndc
    reload <zone>`` for changed zones, or a start when named is not running.

    **Example:**

    .. code:: python

        site = pkinfra.zones.render_site(inventory())
        dns.named(config=site.primary.config[layout.config_file],
                  zones=[asdict(z) for z in site.primary.zones])
    """
    zones = zones or []
    clock = int(time.time()) if now is None else now
    include_line = f'include "{config_file}";'
    edges = host.get_fact(BindIncludes, conf=admin_conf)
    if edges is None:
        raise OperationError(
            f"named: {admin_conf} does not exist (BIND not installed yet?): once it does, add"
            f" the line '{include_line}' to {include_into} and run again"
        )
    chain = include_chain(edges, admin_conf, config_file)
    if chain is None:
        raise OperationError(
            f"named: BIND's configuration does not include pkinfra's: add the line"
            f" '{include_line}' to {include_into} (read through {admin_conf}) and run again"
        )
    pid = host.get_fact(ProcessId, program="named")

    info = host.get_fact(FileDigest, path=config_file)
    if info is False:
        raise OperationError(f"named: {config_file} exists but is not a regular file")
    config_changed = not isinstance(info, dict) or info["sha256"] != _sha256(config)

    changed_zones: list[tuple[dict[str, Any], int, bool]] = []
    changed_admin: list[tuple[dict[str, Any], _AdminChange]] = []
    for zone in zones:
        if zone.get("admin_file"):
            change = _admin_change(zone, clock)
            if change is not None:
                changed_admin.append((zone, change))
            continue
        header = host.get_fact(ZoneHeader, path=zone["path"])
        if header is None:
            changed_zones.append((zone, next_serial(None, clock), True))
        elif not zone.get("dynamic") and header["content"] != zone["content"]:
            changed_zones.append((zone, next_serial(header["serial"], clock), False))

    if not config_changed and not changed_zones and not changed_admin:
        if pid is None:
            announce("named: not running; will start it")
            yield f"{NAMED_START} || {{ cat {NAMED_LOG} >&2; exit 1; }}"
            yield _wait_rndc()
            return
        host.noop(f"named (pid {pid}): configuration and {len(zones)} zones are current")
        return

    reasons = [f"{config_file} changed"] if config_changed else []
    reasons += [
        f"zone {z['zone']} {'written first' if new else f'changed (serial {serial})'}"
        for z, serial, new in changed_zones
    ]
    reasons += [
        f"zone {z['zone']}: {z['include_path']} changed; serial {c.old} -> {c.new} in"
        f" {z['admin_file']}"
        for z, c in changed_admin
    ]
    announce(f"named: {'; '.join(reasons)}")
    staged: list[str] = []
    if config_changed:
        staged.append(run_staged(config_file))
        yield FileUploadCommand(_Text(config), run_staged(config_file))
    for zone, serial, _new in changed_zones:
        staged.append(run_staged(zone["path"]))
        yield FileUploadCommand(_Text(zone["text"].replace("@SERIAL@", str(serial))), staged[-1])
        if zone.get("include_path"):
            staged.append(run_staged(zone["include_path"]))
            yield FileUploadCommand(_Text(zone.get("include_text", "")), staged[-1])
    for zone, change in changed_admin:
        staged += [run_staged(zone["include_path"]), run_staged(zone["admin_file"])]
        yield FileUploadCommand(_Text(zone["include_text"]), run_staged(zone["include_path"]))
        yield _admin_staged(zone, change, staged)

    if config_changed:
        yield from _check_config(chain, config_file, staged)
    for zone, _serial, _new in changed_zones:
        zone_new = run_staged(zone["path"])
        checked = run_checked(zone["path"])
        if zone.get("include_path"):
            # The check sees the new include file in place of the $INCLUDE of the old one.
            include_new = run_staged(zone["include_path"])
            yield f"sed -e '/^\\$INCLUDE /{{r {include_new}' -e 'd;}}' {q(zone_new)} > {q(checked)}"
        else:
            yield f"cp {q(zone_new)} {q(checked)}"
        yield _refuse(
            f"named-checkzone -k fail {q(zone['zone'])} {q(checked)}",
            f"zone {zone['zone']}",
            [*staged, checked],
        )
        yield f"rm -f {q(checked)}"
    for zone, _change in changed_admin:
        # The admin's file as it will be, its $INCLUDE pointing at the staged include: checked
        # from named's directory, where its relative $INCLUDEs (if any) resolve.
        checked = run_checked(zone["include_path"])
        include = zone["include_path"]
        pattern = f'^([$]INCLUDE[[:space:]]+"?){_ere(include)}("?([[:space:]]|$))'
        script = f"s#{pattern}#\\1{run_staged(include)}\\2#"
        yield f"sed -E {q(script)} {q(run_staged(zone['admin_file']))} > {q(checked)}"
        yield _refuse(
            f"named-checkzone -w {q(working_dir)} {q(zone['zone'])} {q(checked)}",
            f"zone {zone['zone']} (the admin's {zone['admin_file']} with pkinfra's new include)",
            [*staged, checked],
        )
        yield f"rm -f {q(checked)}"

    if config_changed:
        yield _install(run_staged(config_file), config_file, "root", "bind", "0644")
    for zone, _serial, _new in changed_zones:
        if zone.get("include_path"):
            yield _install(
                run_staged(zone["include_path"]), zone["include_path"], "root", "bind", "0644"
            )
        yield _install(run_staged(zone["path"]), zone["path"], "bind", "bind", "0644")
    for zone, change in changed_admin:
        # The admin's file first: an include installed without its serial would never reach
        # the secondaries, while a serial moved twice does no harm.
        yield (
            f"{_unchanged(zone['admin_file'], change.sha256, staged)}"
            f" && mv -f {q(run_staged(zone['admin_file']))} {q(zone['admin_file'])}"
        )
        yield _install(
            run_staged(zone["include_path"]), zone["include_path"], "root", "bind", "0644"
        )

    if pid is None:
        # A static zone's raw journal holds the differences between our earlier files; one
        # rewritten while named was down no longer follows from it, and named would refuse the
        # zone ("journal out of sync"). The signed zone and its journal are kept.
        stale = [
            f"{z['path']}.jnl" for z, _s, new in changed_zones if not z.get("dynamic") and not new
        ]
        if stale:
            yield f"rm -f {' '.join(q(p) for p in stale)}"
        yield f"{NAMED_START} || {{ cat {NAMED_LOG} >&2; exit 1; }}"
        yield _wait_rndc()
    else:
        if config_changed:
            yield "rndc reconfig"
        for zone, _serial, new in changed_zones:
            # reconfig loads a zone that is new to the configuration; a dynamic zone is named's
            # own (a reload would refuse it, and its file was only written because it was absent).
            if not zone.get("dynamic") and not (new and config_changed):
                yield f"rndc reload {q(zone['zone'])}"
        for zone, _change in changed_admin:
            yield f"rndc reload {q(zone['zone'])}"
    records = [rec for zone, _c in changed_admin for rec in _tlsa_of(zone["include_text"])]
    if servers and records:
        yield FunctionCommand(_served, (records, list(servers)), {})


@dataclass(frozen=True)
class _AdminChange:
    """What an admin's zone gets: its file's hash as read, and the serial's bytes and values."""

    sha256: str
    start: int
    end: int
    old: int
    new: int


def _admin_change(zone: dict[str, Any], clock: int) -> _AdminChange | None:
    """Plan time: None when pkinfra's include file of an admin's zone is current; refuses when
    the admin's file is missing, does not ``$INCLUDE`` it, or has no SOA serial to move."""
    name, path, include = zone["zone"], zone["admin_file"], zone["include_path"]
    info = host.get_fact(AdminZone, path=path, include=include)
    if info is None:
        raise OperationError(f"zone {name}: the admin's zone file {path} does not exist")
    if not isinstance(info, dict):
        raise OperationError(
            f"zone {name}: {path} is not a regular file (a symbolic link?): pkinfra renames its"
            " new serial into place; set admin_file to the file itself"
        )
    if not info["includes"]:
        raise OperationError(
            f"zone {name}: {path} does not include pkinfra's records: add the line"
            f' $INCLUDE "{include}" to it'
        )
    have = host.get_fact(FileDigest, path=include)
    if have is False:
        raise OperationError(f"zone {name}: {include} exists but is not a regular file")
    if isinstance(have, dict) and have["sha256"] == _sha256(zone["include_text"]):
        return None
    try:
        serial, start, end = soa_serial_span(base64.b64decode(info["head"]))
    except ZoneError as exc:
        raise OperationError(
            f"zone {name}: {path}: {exc} (pkinfra moves the serial on its SOA line)"
        ) from None
    today = dt.datetime.fromtimestamp(clock, dt.UTC).date()
    return _AdminChange(info["sha256"], start, end, serial, admin_serial(serial, today))


def _unchanged(path: str, sha256: str, staged: list[str]) -> str:
    """Shell: the admin's file is still what the plan read, else nothing is installed."""
    cleanup = " ".join(q(p) for p in staged)
    return (
        f'[ "$(sha256sum < {q(path)} | cut -c1-64)" = {sha256} ] || {{ echo "pkinfra: {path}'
        f' changed since this run read it; nothing was installed, run again" >&2;'
        f" rm -f {cleanup}; exit 1; }}"
    )


def _admin_staged(zone: dict[str, Any], change: _AdminChange, staged: list[str]) -> str:
    """Shell: the admin's file beside itself (same owner and mode) with only its serial's bytes
    replaced."""
    path = q(zone["admin_file"])
    new = q(run_staged(zone["admin_file"]))
    return (
        f"{_unchanged(zone['admin_file'], change.sha256, staged)} && cp -p {path} {new}"
        f" && {{ head -c {change.start} {path} && printf %s {change.new}"
        f" && tail -c +{change.end + 1} {path}; }} > {new}"
    )


def _check_config(chain: list[str], config_file: str, staged: list[str]) -> Iterator[str]:
    """Shell: ``named-checkconf`` on the admin's whole configuration with the staged file in
    place of pkinfra's: a copy of each file of the include chain, pointing at the next copy."""
    directory = config_file.rpartition("/")[0]
    copies = [run_checked(f"{directory}/check-{i}.conf") for i in range(len(chain))]
    targets = [*copies[1:], run_staged(config_file)]
    originals = [*chain[1:], config_file]
    for path, copy, original, target in zip(chain, copies, originals, targets, strict=True):
        script = f's#"{_ere(original)}"#"{target}"#'
        yield f"sed -E {q(script)} {q(path)} > {q(copy)}"
    yield _refuse(
        f"named-checkconf {q(copies[0])}",
        f"BIND's configuration with the new {config_file}",
        [*staged, *copies],
    )
    yield f"rm -f {' '.join(q(c) for c in copies)}"


def _ere(text: str) -> str:
    """``text`` as a literal in an extended regex (and a ``#``-delimited sed script)."""
    return "".join("\\" + c if c in ".[](){}*+?|^$\\#" else c for c in text)


def _tlsa_of(include_text: str) -> list[tuple[str, str]]:
    """(owner, value) of the TLSA records of an include file (as ``pkinfra.zones`` writes it)."""
    records = []
    for line in include_text.splitlines():
        fields = line.split("\t")
        if len(fields) == 5 and fields[3] == "TLSA":
            records.append((fields[0], fields[4]))
    return records


def _served(state: Any, host: Any, records: list[tuple[str, str]], servers: list[str]) -> bool:
    """Execution time, from the controller: every authoritative server serves the admin's
    zone's new TLSA records (the primary reloaded, the secondaries notified and transferred)."""
    deadline = time.monotonic() + SERVED_WAIT
    while True:
        reason = next(
            (
                why
                for owner, value in records
                if (why := served_everywhere(owner, "TLSA", value, servers))
            ),
            "",
        )
        if not reason:
            return True
        if time.monotonic() > deadline:
            host.log_styled(
                f"pkinfra: after {SERVED_WAIT} s: {reason} (is the zone transferred to it?)",
                fg="red",
                log_func=logger.error,
            )
            return False
        time.sleep(0.2)


def _wait_rndc() -> str:
    # named answers rndc once it has loaded its configuration; bounded, no endless wait.
    return (
        "for i in $(seq 1 100); do rndc status >/dev/null 2>&1 && exit 0; sleep 0.1; done;"
        f" echo 'pkinfra: named did not start within 10 s:' >&2; tail -n 20 {NAMED_LOG} >&2; exit 1"
    )
