"""The status probe: everything ``pkinfra status`` needs from one host, read in one command.

The controller sends this file on stdin to the host's ``python3`` (``sudo -n python3 -`` over
SSH, or ``docker exec -i``) with the request appended as one literal (``REQUEST``); it prints
one JSON document and changes nothing. It reads public data only: certificates and CRLs (dates,
names, key fingerprints), certbot's renewal settings (a fixed list of keys), the delivery
agent's marks and records, rollover states (a fixed list of keys) and DANE first-seen times.
A private key is loaded only to hash its public half (SubjectPublicKeyInfo SHA-256): no byte
of a key, and no error text of a key parser, is ever printed. Whether a service's copy is
current is decided here (bytes compared with its sources) and printed as a yes or no.

Every absolute path of the request is read below ``root`` (``/`` on a host; a temporary
directory in the tests). It is one file on purpose, with no import of pkinfra: the host may
have none of pkinfra's agents yet. Standard library and cryptography 38+ (Debian 12) only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

PROBE_VERSION = 1
_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
_KEY = re.compile(rb"-----BEGIN ([A-Z ]*PRIVATE KEY)-----.+?-----END \1-----", re.S)
#: certbot renewal settings worth showing (the file holds no secret, but an account id and
#: hook commands are nobody's business in a status report).
RENEWAL_KEYS = ("renew_before_expiry", "authenticator", "server", "key_type", "reuse_key")
#: Rollover state fields: steps, labels, times and key fingerprints (all public).
ROLLOVER_KEYS = (
    "step",
    "label",
    "started",
    "served_since",
    "cached_ttl",
    "updated",
    "finished",
    "old",
    "new",
    "next_record",
)
#: Pending marks are one line of the agent's own text; never read past this.
MARK_MAX = 512


class Reader:
    """Paths of the request, read below ``root``."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def path(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def read(self, path: str, limit: int | None = None) -> bytes | None:
        try:
            with self.path(path).open("rb") as f:
                return f.read(limit) if limit else f.read()
        except FileNotFoundError:
            return None


def _time(value: dt.datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp())


def _not_after(cert: x509.Certificate) -> dt.datetime:
    # cryptography 42 added the *_utc properties; Debian 12 has 38.
    return getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after


def _not_before(cert: x509.Certificate) -> dt.datetime:
    return getattr(cert, "not_valid_before_utc", None) or cert.not_valid_before


def key_type(public: Any) -> str:
    if isinstance(public, ec.EllipticCurvePublicKey):
        return {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}.get(
            public.curve.name, f"ec-{public.curve.name}"
        )
    if isinstance(public, rsa.RSAPublicKey):
        return f"rsa-{public.key_size}"
    if isinstance(public, ed25519.Ed25519PublicKey):
        return "ed25519"
    return type(public).__name__


def spki_sha256(public: Any) -> str:
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _cn(name: x509.Name) -> str:
    found = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(found[0].value) if found else name.rfc4514_string()


def cert_info(data: bytes | None) -> dict[str, Any]:
    """The first certificate of a PEM file: dates, names, issuer, key; ``present`` False if
    there is no file."""
    if data is None:
        return {"present": False}
    found = _CERT.search(data)
    if not found:
        return {"present": True, "error": "no certificate in the file"}
    try:
        cert = x509.load_pem_x509_certificate(found.group(0))
    except ValueError:
        return {"present": True, "error": "unreadable certificate"}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    public = cert.public_key()
    return {
        "present": True,
        "serial": format(cert.serial_number, "x"),
        "subject": _cn(cert.subject),
        "issuer": _cn(cert.issuer),
        "names": list(names),
        "not_before": _time(_not_before(cert)),
        "not_after": _time(_not_after(cert)),
        "key_type": key_type(public),
        "spki_sha256": spki_sha256(public),
        "sha256": hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
    }


def key_info(data: bytes | None) -> dict[str, Any]:
    """The fingerprint of a private key's public half (the key itself goes nowhere)."""
    if data is None:
        return {"present": False}
    found = _KEY.search(data)
    if not found:
        return {"present": True, "error": "no private key in the file"}
    try:
        key = serialization.load_pem_private_key(found.group(0), password=None)
    except (ValueError, TypeError):
        # The parser's message is not passed on: it is about the key's bytes.
        return {"present": True, "error": "unreadable or encrypted key"}
    return {"present": True, "spki_sha256": spki_sha256(key.public_key())}


def crl_info(data: bytes | None) -> dict[str, Any]:
    if data is None:
        return {"present": False}
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError:
        return {"present": True, "error": "unreadable CRL"}
    try:
        number: int | None = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    next_update = getattr(crl, "next_update_utc", None) or crl.next_update
    last_update = getattr(crl, "last_update_utc", None) or crl.last_update
    return {
        "present": True,
        "issuer": _cn(crl.issuer),
        "number": number,
        "this_update": _time(last_update),
        "next_update": _time(next_update),
        "revoked": len(list(crl)),
    }


def renewal_info(data: bytes | None) -> dict[str, str] | None:
    """The chosen ``key = value`` settings of a certbot renewal configuration."""
    if data is None:
        return None
    found: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        key = key.strip()
        if sep and key in RENEWAL_KEYS and key not in found:
            found[key] = value.strip()
    return found


def _json_file(reader: Reader, path: str) -> Any:
    data = reader.read(path)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return {"error": f"{path} is not JSON"}


def rollover_info(reader: Reader, path: str) -> dict[str, Any] | None:
    state = _json_file(reader, path)
    if not isinstance(state, dict):
        return None
    if "error" in state:
        return {"step": "unreadable"}
    return {k: state[k] for k in ROLLOVER_KEYS if k in state}


def _public_of(data: bytes, kind: str) -> str | None:
    """SPKI SHA-256 of what a service file holds: its key (``key``; ``combined`` starts with
    the key) or its first certificate."""
    if kind in ("key", "combined"):
        found = key_info(data).get("spki_sha256")
        if found is not None or kind == "key":
            return found
    return cert_info(data).get("spki_sha256")


def service_info(reader: Reader, service: dict[str, Any], state_dir: str) -> dict[str, Any]:
    """One service of the delivery mapping: pending mark, copies current?, served record."""
    name = service["name"]
    result: dict[str, Any] = {"pending": None}
    # The delivery agent's marks: a notification owed, a new key its gate holds back. Each is
    # a first line of text; the file's time is since when.
    for kind, default in (("pending", "notification owed"), ("held", "held by the service's gate")):
        path = f"{state_dir}/{kind}/{name}"
        mark = reader.read(path, MARK_MAX)
        if mark is not None:
            text = mark.decode("utf-8", "replace").strip().splitlines()
            result[kind] = text[0] if text else default
            result[f"{kind}_since"] = int(reader.path(path).stat().st_mtime)
    files = []
    for f in service.get("files", []):
        have = reader.read(f["path"])
        entry: dict[str, Any] = {"path": f["path"], "content": f["content"]}
        if have is None:
            entry["present"] = False
            files.append(entry)
            continue
        parts = [reader.read(src) for src in f.get("sources", [])]
        entry["present"] = True
        entry["current"] = (
            None
            if any(p is None for p in parts)
            else have == b"".join(p for p in parts if p is not None)
        )
        if f["content"] in ("cert", "fullchain", "combined", "key"):
            entry["spki_sha256"] = _public_of(have, f["content"])
        files.append(entry)
    result["files"] = files
    if service.get("in_place") and not service.get("files"):
        record = _json_file(reader, f"{state_dir}/served/{name}.json")
        if isinstance(record, dict) and "sha256" in record:
            result["served"] = {
                "sha256": record.get("sha256"),
                "spki_sha256": record.get("spki_sha256"),
            }
        else:
            result["served"] = None
    return result


def probe(request: dict[str, Any]) -> dict[str, Any]:
    reader = Reader(request.get("root", "/"))
    state_dir = request.get("state_dir", "/var/lib/pkinfra")
    certificates = {}
    for cert in request.get("certificates", []):
        files = cert["files"]
        entry: dict[str, Any] = {
            "cert": cert_info(reader.read(files["cert"])),
            "key": key_info(reader.read(files["key"])),
        }
        if cert.get("renewal"):
            entry["renewal"] = renewal_info(reader.read(cert["renewal"]))
        if cert.get("next_cert"):
            nxt = cert_info(reader.read(cert["next_cert"]))
            entry["next"] = nxt if nxt["present"] else None
        if cert.get("rollover"):
            entry["rollover"] = rollover_info(reader, cert["rollover"])
        certificates[cert["name"]] = entry
    services = {s["name"]: service_info(reader, s, state_dir) for s in request.get("services", [])}
    crls = {ca: crl_info(reader.read(path)) for ca, path in request.get("crls", {}).items()}
    seen = _json_file(reader, request["dane_seen"]) if request.get("dane_seen") else None
    return {
        "probe": PROBE_VERSION,
        "hostname": socket.getfqdn(),
        "now": int(time.time()),
        "uid": os.geteuid(),
        "certificates": certificates,
        "services": services,
        "crls": crls,
        "dane_seen": seen if isinstance(seen, dict) and "error" not in seen else {},
    }


def main(request: dict[str, Any]) -> int:
    try:
        report = probe(request)
    except OSError as exc:
        # Permission problems and the like: the path is useful, no content is involved.
        report = {"probe": PROBE_VERSION, "error": f"{exc.filename or ''}: {exc.strerror}"}
    json.dump(report, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0 if "error" not in report else 1


def script(request: dict[str, Any]) -> str:
    """This file as one program for ``python3 -``: the request rides along as a literal."""
    source = Path(__file__).read_text(encoding="utf-8")
    return f"{source}\nREQUEST = {json.dumps(request)!r}\nsys.exit(main(json.loads(REQUEST)))\n"


if __name__ == "__main__" and sys.argv[1:]:
    # By hand on a host: python3 status_probe.py request.json
    sys.exit(main(json.loads(Path(sys.argv[1]).read_text())))
