"""DANE TLSA records of ACME certificates, published by their host: ``pkinfra-dane-publish``.

Run by certbot's deploy hook on a renewal (``RENEWED_LINEAGE``), by the pyinfra run, or by
hand. For each publication of the configuration it follows the CNAME chain from the TLSA owner
in the main zone (``_25._tcp.mx1.example.test``) to wherever it ends (the shadow zone: found,
never configured), makes the TLSA RRset there exactly "3 1 1" of every certificate listed that
exists (the current lineage, and the next one during a key rollover) with the host's TSIG key,
in one update, and waits until every authoritative server serves the new set.

``--check`` changes nothing: it exits 0 when every authoritative server serves exactly the
wanted records, 1 otherwise (the pyinfra run's fact: publish or not). ``--gate`` is the delivery
gate (a new key must not reach a service before its record is out): it exits 0 once every
wanted record has been served by every authoritative server for at least the TTL, so that no
resolver still caches a set without it, waiting for that up to the TTL and a margin; 1 if it
does not happen. When each record was first seen everywhere is kept in ``seen_file``.

The wanted records are those of the listed certificates that exist, those a rollover keeps,
and those of the certificate files the services of the lineage have now (from the services
mapping; for a service that reads the lineage in place, the certificate the delivery agent last
told it of): a service still on an older key (its delivery held or pending) keeps its record.

The configuration (``/etc/pkinfra/dane.json``, written by the deploy)::

    {"tsig_key": "/etc/pkinfra/tsig.key", "ttl": 60, "timeout": 60,
     "rollover_dir": "/etc/pkinfra/rollover",
     "services_mapping": "/etc/pkinfra/services.json",
     "seen_file": "/var/lib/pkinfra/dane-seen.json",
     "publications": [{"owner": "_25._tcp.mx1.example.test", "lineage": "mail",
                       "lineages": ["mail", "mail-next"],
                       "certificates": ["/etc/letsencrypt/live/mail/cert.pem",
                                        "/etc/letsencrypt/live/mail-next/cert.pem"]}]}

``lineages``: a renewal of any of them (``RENEWED_LINEAGE``) republishes. During a key rollover
(``pkinfra.agent.rollover``) the next lineage exists and its record joins the set, and the
rollover's state file (``<rollover_dir>/<lineage>.json``) lists in ``keep`` the old key's record,
published until every service has switched.

Standard library, dnspython 2.3 and cryptography 38 only: this runs on Debian 12 hosts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pkinfra import tlsa
from pkinfra.agent import paths
from pkinfra.agent.errors import PkinfraError
from pkinfra.dnsupdate import DNSUpdateError, RFC2136Client, TSIGKey

CONFIG = "/etc/pkinfra/dane.json"


class PublishError(PkinfraError):
    """One line for the operator: what could not be published, and why."""


def lineages(publication: dict[str, Any]) -> list[str]:
    """The lineages whose renewal changes this publication (the first is the served one)."""
    return list(publication.get("lineages") or [publication["lineage"]])


def kept(publication: dict[str, Any], rollover_dir: str | None) -> set[str]:
    """Records a key rollover keeps published (the old key's, until every service switched)."""
    if not rollover_dir:
        return set()
    path = Path(rollover_dir) / f"{publication['lineage']}.json"
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return set()
    except (OSError, ValueError) as exc:
        raise PublishError(f"cannot read the rollover state {path}: {exc}") from None
    return {tlsa.canonical(v) for v in state.get("keep", [])}


def in_service(publication: dict[str, Any], mapping: str | None) -> set[str]:
    """3 1 1 of the certificates the services of the publication's lineages have now: their
    copies, or for a service that reads the lineage in place, the certificate it was told of."""
    if not mapping or not Path(mapping).exists():
        return set()
    try:
        data = json.loads(Path(mapping).read_text())
    except (OSError, ValueError) as exc:
        raise PublishError(f"cannot read the services mapping {mapping}: {exc}") from None
    services = data.get("services", [])
    # Where the delivery agent records what each in-place service was last told.
    served_dir = Path(data.get("served_dir", paths.SERVED_DIR))
    values = set()
    names = set(lineages(publication))
    for service in services:
        if service.get("lineage") not in names:
            continue
        if not service.get("files"):
            # In place: the service serves what it was last told (a held or pending change
            # has not reached it yet), which the delivery agent wrote down.
            record = served_dir / f"{service['name']}.json"
            try:
                spki = json.loads(record.read_text()).get("spki_sha256")
            except FileNotFoundError:
                continue  # never told: it reads the certificate when it starts
            except (OSError, ValueError) as exc:
                raise PublishError(f"{record}: {exc}") from None
            if spki:
                values.add(tlsa.canonical(f"3 1 1 {spki}"))
            continue
        for f in service.get("files", []):
            if f.get("content") not in ("cert", "fullchain", "combined"):
                continue
            try:
                pem = Path(f["path"]).read_bytes()
            except FileNotFoundError:
                continue  # not delivered yet
            except OSError as exc:
                raise PublishError(f"{f['path']}: {exc.strerror}") from None
            # combined: the key comes first; its public half is the served key as well.
            values.add(tlsa.TLSARecord.from_pem(pem).to_text())
    return values


def wanted(
    publication: dict[str, Any], rollover_dir: str | None = None, mapping: str | None = None
) -> set[str]:
    """3 1 1 of every listed certificate that exists (a next lineage may not exist yet), the
    records a rollover keeps, and those of what the lineage's services have now."""
    values = kept(publication, rollover_dir) | in_service(publication, mapping)
    for path in publication["certificates"]:
        try:
            pem = Path(path).read_bytes()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise PublishError(f"{path}: {exc.strerror}") from None
        values.add(tlsa.TLSARecord.from_pem(pem).to_text())
    if not values:
        raise PublishError(f"{publication['owner']}: none of its certificates exists yet")
    return values


class Seen:
    """When each record was first served by every authoritative server (a JSON file), and for
    a record added to a set that was served with a longer TTL than the configured one, that TTL
    (under ``HELD``): caches may keep the set without it that long."""

    HELD = "@held"

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self.data: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.exists():
            try:
                self.data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.data = {}  # only a cache of times: start again

    def since(self, owner: str, value: str) -> float | None:
        found = self.data.get(owner, {}).get(value)
        return float(found) if isinstance(found, int | float) else None

    def held(self, owner: str, value: str) -> float:
        """The TTL a cache may keep the set without ``value`` for (0: the configured one)."""
        found = self.data.get(self.HELD, {}).get(owner, {}).get(value, 0)
        return float(found) if isinstance(found, int | float) else 0.0

    def note(self, owner: str, values: set[str], now: float, held: float = 0.0) -> None:
        """Record ``now`` for values not seen before (and ``held``, the TTL the set was served
        with before they came); forget values no longer wanted."""
        old = self.data.get(owner, {})
        self.data[owner] = {v: old.get(v, now) for v in values}
        holds = self.data.get(self.HELD, {})
        kept = {v: t for v, t in holds.get(owner, {}).items() if v in values}
        kept |= {v: held for v in values if held and v not in old}
        holds = {o: h for o, h in holds.items() if o != owner} | ({owner: kept} if kept else {})
        if holds:
            self.data[self.HELD] = holds
        else:
            self.data.pop(self.HELD, None)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.new")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


def _sets(
    client: RFC2136Client,
    publication: dict[str, Any],
    rollover_dir: str | None,
    mapping: str | None,
) -> tuple[Any, set[str], set[str]]:
    """(where the owner's CNAME chain ends, the wanted records, the primary's records)."""
    want = wanted(publication, rollover_dir, mapping)
    target, _ = client.follow_cnames(publication["owner"])
    return target, want, {tlsa.canonical(v) for v in client.values(target, "TLSA")}


def publish(
    client: RFC2136Client,
    publication: dict[str, Any],
    ttl: int,
    timeout: float,
    rollover_dir: str | None = None,
    mapping: str | None = None,
    seen: Seen | None = None,
) -> str:
    """Make the RRset exactly the wanted records; return what was done."""
    owner = publication["owner"]
    target, want, have = _sets(client, publication, rollover_dir, mapping)
    if have == want:
        if seen is not None:
            seen.note(owner, want, time.time())
        return f"{owner}: {len(want)} record(s) current"
    # A record joins a set caches may keep without it for the TTL it was served with: longer
    # than ``ttl`` when the inventory lowered it. The delivery gate waits for that one then.
    held = client.served_ttl(target, "TLSA") if want - have and have else 0
    client.replace(target, "TLSA", sorted(want), ttl)
    for value in want - have:
        client.wait_visible(target, "TLSA", value, timeout=timeout)
    for value in have - want:
        client.wait_visible(target, "TLSA", value, present=False, timeout=timeout)
    if seen is not None:
        seen.note(owner, want, time.time(), held=held if held > ttl else 0)
    return (
        f"{owner}: published {len(want)} record(s) (+{len(want - have)} "
        f"-{len(have - want)}), served by every authoritative server"
    )


def exact(
    client: RFC2136Client,
    publication: dict[str, Any],
    rollover_dir: str | None = None,
    mapping: str | None = None,
) -> str:
    """'' when the primary's RRset is exactly the wanted records and every authoritative
    server serves each of them, else why not (the pyinfra run's question: publish?)."""
    owner = publication["owner"]
    _, want, have = _sets(client, publication, rollover_dir, mapping)
    if have != want:
        return f"{owner}: {len(have - want)} record(s) to remove, {len(want - have)} to add"
    return visible(client, publication, 2.0, rollover_dir, mapping)


def gate(
    client: RFC2136Client,
    publication: dict[str, Any],
    ttl: float,
    seen: Seen,
    rollover_dir: str | None = None,
    mapping: str | None = None,
    sleep: Any = time.sleep,
    clock: Any = time.time,
) -> str:
    """'' once every wanted record has been served everywhere for ``ttl`` (waiting for that
    up to ``ttl`` plus a margin), else why not."""
    owner = publication["owner"]
    started = clock()
    while True:
        why = visible(client, publication, 5.0, rollover_dir, mapping)
        if why:
            return why
        want = wanted(publication, rollover_dir, mapping)
        now = clock()
        for value in want:
            if seen.since(owner, value) is None:
                seen.note(owner, want, now)  # first seen now: a cache may hold the old set
        # Each record's TTL: the configured one, or the longer one its set was served with.
        held = {v: max(ttl, seen.held(owner, v)) for v in want}
        left = max(held[v] - (now - (seen.since(owner, v) or now)) for v in want)
        longest = max(held.values())
        if left <= 0:
            return ""
        if now + left > started + longest + 15:
            return (
                f"{owner}: the record for the new key has been served for "
                f"{int(longest - left)} s of the TTL ({int(longest)} s); a later delivery "
                "sends it"
            )
        sleep(left)


def visible(
    client: RFC2136Client,
    publication: dict[str, Any],
    timeout: float,
    rollover_dir: str | None = None,
    mapping: str | None = None,
) -> str:
    """'' when every authoritative server serves the wanted records, else why not."""
    owner = publication["owner"]
    target, _ = client.follow_cnames(owner)
    for value in sorted(wanted(publication, rollover_dir, mapping)):
        try:
            client.wait_visible(target, "TLSA", value, timeout=timeout)
        except DNSUpdateError as exc:
            return f"{owner}: the record for the new key is not served everywhere yet ({exc})"
    return ""


def load(path: str) -> dict[str, Any]:
    try:
        config: dict[str, Any] = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise PublishError(f"cannot read {path}: {exc}") from None
    return config


def client_for(config: dict[str, Any]) -> RFC2136Client:
    key = TSIGKey.from_file(config.get("tsig_key", "/etc/pkinfra/tsig.key"))
    options: dict[str, Any] = {"timeout": float(config.get("query_timeout", 3.0))}
    for name in ("resolvers", "port", "primary", "server_addresses"):
        if name in config:
            options[name] = config[name]
    return RFC2136Client(key, **options)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pkinfra-dane-publish", description="Publish TLSA records of ACME certificates."
    )
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument(
        "--lineage",
        help="only this lineage's publications "
        "(default: RENEWED_LINEAGE's name when certbot runs the hook)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 1 unless every server serves exactly the wanted records",
    )
    parser.add_argument(
        "--gate",
        action="store_true",
        help="change nothing; exit 0 once every server has served the records for the TTL "
        "(waits for that), 1 otherwise",
    )
    args = parser.parse_args(argv)
    lineage = args.lineage
    if lineage is None and os.environ.get("RENEWED_LINEAGE"):
        lineage = Path(os.environ["RENEWED_LINEAGE"]).name
    try:
        config = load(args.config)
        pubs = [
            p for p in config.get("publications", []) if lineage is None or lineage in lineages(p)
        ]
        rollover_dir = config.get("rollover_dir")
        mapping = config.get("services_mapping")
        seen = Seen(config.get("seen_file"))
        ttl = int(config.get("ttl", 60))
        if not pubs:
            print(
                f"pkinfra-dane-publish: no TLSA publication for lineage '{lineage}'; nothing to do"
            )
            return 0
        client = client_for(config)
        timeout = float(config.get("timeout", 60))
        for pub in pubs:
            if args.check or args.gate:
                why = (
                    gate(client, pub, ttl, seen, rollover_dir, mapping)
                    if args.gate
                    else exact(client, pub, rollover_dir, mapping)
                )
                if why:
                    print(f"pkinfra-dane-publish: {why}", file=sys.stderr)
                    return 1
                print(f"{pub['owner']}: served by every authoritative server")
            else:
                print(publish(client, pub, ttl, timeout, rollover_dir, mapping, seen))
    except (PublishError, DNSUpdateError, tlsa.TLSAError) as exc:
        print(f"pkinfra-dane-publish: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
