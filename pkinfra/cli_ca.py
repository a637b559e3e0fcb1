"""``pkinfra ca``: list the CAs and what they issued, revoke a certificate, issue a CRL.

The CA store and the passphrases come from the inventory (``pki_dir``, ``cas.<name>.passphrase``),
so the command works on the same state as the deploys. Passphrases are read from their source,
never asked for on the command line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from typing import TextIO

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


def _days(when: dt.datetime, now: dt.datetime) -> str:
    left = (when - now).days
    return f"{left} days" if left >= 0 else f"{-left} days ago"


def list_command(args: argparse.Namespace) -> int:
    out = sys.stdout
    inventory, store = _open(args)
    names = store.names()
    if args.ca is not None:
        _known_ca(inventory, store, args.ca)
        names = [args.ca]
    now = dt.datetime.now(dt.UTC)
    rows = [("CA", "PARENT", "KEY", "NOT AFTER", "LEFT", "CRL NEXT UPDATE")]
    for name in names:
        info = store.ca(name)
        crl = store.current_crl(name)
        next_update = "none"
        if crl is not None:
            when = x509.load_pem_x509_crl(crl).next_update_utc
            next_update = f"{when:%Y-%m-%d %H:%M}" if when else "?"
        rows.append(
            (
                name,
                info.parent or "-",
                info.key_type,
                f"{info.not_after:%Y-%m-%d}",
                _days(info.not_after, now),
                next_update,
            )
        )
    _table(rows, out)
    print(file=out)
    certs = [("CA", "SERIAL", "HOST", "CERT", "NAMES", "NOT AFTER", "LEFT", "STATUS")]
    issued = [r for r in store.list_issued() if r.ca in names and r.kind == "leaf"]
    # A renewal leaves the previous certificate valid until it expires: say which is current.
    newest = {(r.host, r.cert_name): r.serial for r in issued if r.status_at(now) == "valid"}
    for record in issued:
        status = record.status_at(now)
        if status == "valid" and newest[(record.host, record.cert_name)] != record.serial:
            status = "valid (superseded)"
        if args.valid and status != "valid":
            continue
        certs.append(
            (
                record.ca,
                record.serial_hex,
                record.host,
                record.cert_name,
                ",".join(record.names),
                f"{record.not_after:%Y-%m-%d}",
                _days(record.not_after, now),
                status if status != "revoked" else f"revoked ({record.revocation_reason})",
            )
        )
    _table(certs, out)
    removed = issue.removed_certificates(store, inventory)
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
