"""``pkinfra ca``: list the CAs and what they issued, revoke a certificate, issue a CRL.

The CA store and the passphrases come from the inventory (``pki_dir``, ``cas.<name>.passphrase``),
so the command works on the same state as the deploys. Passphrases are read from their source,
never asked for on the command line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from cryptography import x509

from pkinfra import issue
from pkinfra.ca import REVOCATION_REASONS, CAStore, PassphraseSource
from pkinfra.model import Inventory, load_inventory_file


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("ca", help="the private CAs: list, revoke, CRL")
    sub = parser.add_subparsers(dest="ca_command", required=True, metavar="ACTION")

    listing = sub.add_parser("list", help="CAs and the certificates they issued, with expiry")
    listing.add_argument("ca", nargs="?", help="only this CA")
    listing.add_argument(
        "--valid", action="store_true", help="only certificates that are still valid"
    )
    listing.add_argument("--json", action="store_true", help="print the listing as JSON")
    listing.set_defaults(handler=list_command)

    revoke = sub.add_parser("revoke", help="revoke a certificate (the next run publishes the CRL)")
    revoke.add_argument("ca")
    revoke.add_argument("serial", help="the serial in hex, as `pkinfra ca list` shows it")
    revoke.add_argument(
        "--reason",
        default="unspecified",
        choices=REVOCATION_REASONS,
        help="the CRL reason code (default: unspecified)",
    )
    revoke.set_defaults(handler=revoke_command)

    crl = sub.add_parser("crl", help="issue the CA's CRL now and print where it is")
    crl.add_argument("ca")
    crl.set_defaults(handler=crl_command)


def _open(args: argparse.Namespace) -> tuple[Inventory, CAStore]:
    inventory = load_inventory_file(args.inventory)
    return inventory, issue.store_for(inventory.pki_dir)


def _known_ca(inventory: Inventory, store: CAStore, name: str) -> None:
    from pkinfra.cli import CLIError

    if name not in store.names():
        known = ", ".join(store.names()) or "none yet: run the deploy first"
        raise CLIError(f"no CA '{name}' in {store.directory} (known: {known})")
    if name not in inventory.settings.cas:
        raise CLIError(f"CA '{name}' is in the store but not in the inventory")


def _passphrase(inventory: Inventory, name: str) -> PassphraseSource | None:
    spec = issue.passphrase_spec(inventory, name)
    return PassphraseSource.parse(spec) if spec else None


def _iso(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _left(days: int) -> str:
    return f"{days} days" if days >= 0 else f"{-days} days ago"


def list_command(args: argparse.Namespace) -> int:
    out = sys.stdout
    inventory, store = _open(args)
    names = store.names()
    if args.ca is not None:
        _known_ca(inventory, store, args.ca)
        names = [args.ca]
    now = dt.datetime.now(dt.UTC)
    cas: list[dict[str, Any]] = []
    for name in names:
        info = store.ca(name)
        crl = store.current_crl(name)
        when = x509.load_pem_x509_crl(crl).next_update_utc if crl is not None else None
        cas.append(
            {
                "name": name,
                "parent": info.parent,
                "key_type": info.key_type,
                "not_after": _iso(info.not_after),
                "days_left": (info.not_after - now).days,
                "crl": crl is not None,
                "crl_next_update": _iso(when) if when else None,
            }
        )
    issued = [r for r in store.list_issued() if r.ca in names and r.kind == "leaf"]
    # A renewal leaves the previous certificate valid until it expires: say which is current.
    newest = {(r.host, r.cert_name): r.serial for r in issued if r.status_at(now) == "valid"}
    certificates: list[dict[str, Any]] = []
    for record in issued:
        state = record.status_at(now)
        if state == "valid" and newest[(record.host, record.cert_name)] != record.serial:
            state = "valid (superseded)"
        if args.valid and state != "valid":
            continue
        certificates.append(
            {
                "ca": record.ca,
                "serial": record.serial_hex,
                "host": record.host,
                "certificate": record.cert_name,
                "names": list(record.names),
                "not_after": _iso(record.not_after),
                "days_left": (record.not_after - now).days,
                "status": state,
                "revocation_reason": record.revocation_reason if state == "revoked" else None,
            }
        )
    removed = issue.removed_certificates(store, inventory)
    if args.json:
        document = {
            "schema": 1,
            "cas": cas,
            "certificates": certificates,
            "removed": [
                {"ca": r.ca, "serial": r.serial_hex, "host": r.host, "certificate": r.cert_name}
                for r in removed
            ],
        }
        print(json.dumps(document, indent=2), file=out)
        return 0
    rows = [("CA", "PARENT", "KEY", "NOT AFTER", "LEFT", "CRL NEXT UPDATE")]
    for ca in cas:
        next_update = "none"
        if ca["crl"]:
            when_text = ca["crl_next_update"]
            next_update = when_text[:16].replace("T", " ") if when_text else "?"
        rows.append(
            (
                ca["name"],
                ca["parent"] or "-",
                ca["key_type"],
                ca["not_after"][:10],
                _left(ca["days_left"]),
                next_update,
            )
        )
    _table(rows, out)
    print(file=out)
    certs = [("CA", "SERIAL", "HOST", "CERT", "NAMES", "NOT AFTER", "LEFT", "STATUS")]
    for c in certificates:
        state = c["status"]
        certs.append(
            (
                c["ca"],
                c["serial"],
                c["host"],
                c["certificate"],
                ",".join(c["names"]),
                c["not_after"][:10],
                _left(c["days_left"]),
                state if state != "revoked" else f"revoked ({c['revocation_reason']})",
            )
        )
    _table(certs, out)
    if removed:
        print(file=out)
        for record in removed:
            print(
                f"not in the inventory any more, still valid: {record.ca} {record.serial_hex} "
                f"({record.host}/{record.cert_name}); revoke it with "
                f"`pkinfra ca revoke {record.ca} {record.serial_hex}`",
                file=out,
            )
    return 0


def revoke_command(args: argparse.Namespace) -> int:
    out = sys.stdout
    inventory, store = _open(args)
    _known_ca(inventory, store, args.ca)
    before = store.get_record(args.ca, args.serial)
    record = store.revoke(args.ca, args.serial, args.reason)
    again = " (already revoked)" if before.revoked_at is not None else ""
    print(
        f"revoked {record.ca} {record.serial_hex} ({record.host}/{record.cert_name}){again}; "
        f"the next run issues the CRL and reissues the certificate "
        f"(or now: pkinfra ca crl {record.ca})",
        file=out,
    )
    return 0


def crl_command(args: argparse.Namespace) -> int:
    out = sys.stdout
    inventory, store = _open(args)
    _known_ca(inventory, store, args.ca)
    days = inventory.settings.cas[args.ca].crl_days
    pem = store.crl(args.ca, _passphrase(inventory, args.ca), next_update_days=days)
    crl = x509.load_pem_x509_crl(pem)
    print(
        f"CRL of {args.ca}: {len(list(crl))} revoked, next update "
        f"{crl.next_update_utc:%Y-%m-%d %H:%M} UTC, in {store.directory / args.ca / 'crl.pem'}",
        file=out,
    )
    return 0


def _table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out
        )
