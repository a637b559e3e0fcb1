"""Every inventory mistake pkinfra refuses: the README's table, proven case by case.

``MISTAKES`` and the table "Inventory mistakes pkinfra refuses" in README.md are the same list
(``test_the_readme_table_is_this_list``). Each case edits a copy of the lab's ``inventory.py`` or
``group_data/all.py`` (on field values, never on host connection names, which change) and proves:

- at load level: running the copied ``inventory.py`` stops while the inventory loads with exactly
  that one line, naming the host (or settings file) and the field;
- with the real CLI: ``pyinfra -y inventory.py deploys/site.py`` on the copy exits non-zero
  printing that line, no host is contacted (``docker`` and ``ssh`` on PATH log any call, and a
  ``sitecustomize`` logs any TCP/UDP connect, which is how pyinfra's SSH connector reaches hosts),
  and no file of the copy (``pki/`` included) changed.
"""

from __future__ import annotations

import hashlib
import os
import re
import runpy
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).parent / "pyinfra"
SECTION = "## Inventory mistakes pkinfra refuses"
INV = "inventory.py"
G = "group_data/all.py"
ACME_DIR = '"directory": "https://acme.example.test:14000/dir"'
HEAD = "pkinfra: the inventory has 1 problem; no host was contacted:"


@dataclass(frozen=True)
class Mistake:
    #: The table's first column.
    kind: str
    #: The line pkinfra prints, exactly.
    message: str
    #: (file, text, replacement): each text occurs exactly once in the lab's file.
    edits: tuple[tuple[str, str, str], ...]


def mistake(kind: str, message: str, *edits: tuple[str, str, str]) -> Mistake:
    return Mistake(kind, message, edits)


def certbot_args(args: str) -> tuple[str, str, str]:
    return (G, f"{ACME_DIR},", f"{ACME_DIR},\n    {args},")


MISTAKES = [
    # -- groups: pyinfra skips a group whose name starts with '_' -------------------------------
    mistake(
        "group whose name starts with `_` (pyinfra would never contact its hosts)",
        "mon1.example.test: groups: group '_monitoring' starts with '_', which pyinfra ignores: "
        "this host would never be contacted (rename the group)",
        (INV, "\nmonitoring = [", "\n_monitoring = ["),
    ),
    # -- record values go into zone files as written --------------------------------------------
    mistake(
        "record value with a second line (another record, `$INCLUDE`)",
        "web1.example.test: records[0].value: holds a control character ('\\n'): one record "
        "per entry",
        (
            INV,
            '"value": "web1.example.test."}',
            '"value": "web1.example.test.\\n_25._tcp.mx1.example.test. IN TLSA 3 1 1 ab"}',
        ),
    ),
    mistake(
        "record value followed by more text",
        "web1.example.test: records[0].value: 'web1.example.test. $INCLUDE /etc/passwd' is more "
        "than one CNAME value",
        (
            INV,
            '"value": "web1.example.test."}',
            '"value": "web1.example.test. $INCLUDE /etc/passwd"}',
        ),
    ),
    mistake(
        "record value that opens a parenthesis",
        "mx1.example.test: records[0].value: not a valid MX value (unbalanced parentheses)",
        (INV, '"value": "10 mx1.example.test."', '"value": "10 mx1.example.test. ("'),
    ),
    mistake(
        "record value with a relative name",
        "web1.example.test: records[0].value: 'web1' is not one CNAME value as written: it reads "
        "back as 'web1.' (write that; names end with a dot)",
        (INV, '"value": "web1.example.test."}', '"value": "web1"}'),
    ),
    mistake(
        "CNAME beside other records of the same name",
        "web1.example.test: records[0].name: 'www.example.test' has a CNAME and other data: "
        "web1.example.test records[1] (A)",
        (
            INV,
            '{"name": "www.example.test", "type": "CNAME", "value": "web1.example.test."}',
            '{"name": "www.example.test", "type": "CNAME", "value": "web1.example.test."},\n'
            '{"name": "www.example.test", "type": "A", "value": "192.0.2.1"}',
        ),
    ),
    mistake(
        "CNAME at a zone apex",
        "web1.example.test: records[0].type: a CNAME at the apex of zone 'example.test'",
        (
            INV,
            '{"name": "www.example.test", "type": "CNAME"',
            '{"name": "example.test", "type": "CNAME"',
        ),
        # Without mx1's MX at the apex, so that the apex is the one mistake.
        (INV, '{"name": "example.test", "type": "MX", "value": "10 mx1.example.test."}', ""),
    ),
    mistake(
        "record at a delegated name",
        "mx1.example.test: records[0].name: '_acme-challenge.mx1.example.test' is delegated to "
        "mx1.example.test (a CNAME into the shadow zone): it can hold no other record",
        (
            INV,
            '{"name": "example.test", "type": "MX"',
            '{"name": "_acme-challenge.mx1.example.test", "type": "TXT"',
        ),
    ),
    mistake(
        "CAA record in a zone whose `caa` pkinfra renders",
        "mx1.example.test: records[0].type: zone 'example.test' has 'caa' in group_data/all.py, "
        "which renders its CAA records",
        (
            G,
            '{"name": "example.test", "tlsa_ttl": 5}',
            '{"name": "example.test", "tlsa_ttl": 5, "caa": ["letsencrypt.org"]}',
        ),
        (
            INV,
            '{"name": "example.test", "type": "MX", "value": "10 mx1.example.test."}',
            '{"name": "example.test", "type": "CAA", "value": "0 issue \\"other.example\\""}',
        ),
    ),
    mistake(
        "record outside every managed zone",
        "web1.example.test: records[0].name: 'www.example.org' is outside every managed zone "
        "(example.test, unsigned.test)",
        (
            INV,
            '{"name": "www.example.test", "type": "CNAME"',
            '{"name": "www.example.org", "type": "CNAME"',
        ),
    ),
    # -- paths ----------------------------------------------------------------------------------
    mistake(
        "webroot that would end nginx's `root` directive",
        "web1.example.test: certificates[0].webroot: path '/var/www/acme; } server { listen "
        "8080; root /etc; autoindex on' holds ';' (allowed: letters, digits and / . _ - + @ : , =)",
        (
            INV,
            '"webroot": "/var/www/acme"',
            '"webroot": "/var/www/acme; } server { listen 8080; root /etc; autoindex on"',
        ),
    ),
    mistake(
        "path with a space",
        "db1.example.test: services[1].files[0].path: path '/etc/backup-agent/tls .pem' holds a "
        "space (allowed: letters, digits and / . _ - + @ : , =)",
        (INV, '"/etc/backup-agent/tls.pem"', '"/etc/backup-agent/tls .pem"'),
    ),
    mistake(
        "path not in normal form",
        "web1.example.test: services[0].files[0].path: path '/etc/nginx//tls/web.crt' is not in "
        "normal form (no '//', '/./' or trailing '/'): write '/etc/nginx/tls/web.crt'",
        (INV, '"/etc/nginx/tls/web.crt"', '"/etc/nginx//tls/web.crt"'),
    ),
    mistake(
        "path with `..`",
        "web1.example.test: services[0].files[1].path: path '/etc/nginx/tls/../../shadow' holds "
        "'..'",
        (INV, '"/etc/nginx/tls/web.key"', '"/etc/nginx/tls/../../shadow"'),
    ),
    mistake(
        "relative path (here a pidfile)",
        "web1.example.test: services[0].notify.pidfile: must be an absolute path, got "
        "'run/nginx.pid'",
        (INV, '"pidfile": "/run/nginx.pid"', '"pidfile": "run/nginx.pid"'),
    ),
    mistake(
        "service file among pkinfra's own files",
        "web1.example.test: services[0].files[1].path: '/etc/pkinfra/tsig.key' is pkinfra's own "
        "(/etc/pkinfra/)",
        (INV, '"/etc/nginx/tls/web.key"', '"/etc/pkinfra/tsig.key"'),
    ),
    mistake(
        "service file in certbot's tree",
        "mx1.example.test: services[0].files[0].path: '/etc/letsencrypt/live/mail/fullchain.pem' "
        "is pkinfra's own (/etc/letsencrypt/)",
        (INV, '"/etc/postfix/tls/mail.crt"', '"/etc/letsencrypt/live/mail/fullchain.pem"'),
    ),
    mistake(
        "service file in a webroot",
        "web1.example.test: services[0].files[0].path: '/var/www/acme/web.crt' is in the webroot "
        "of certificates[0] ('/var/www/acme'), which nginx serves",
        (INV, '"/etc/nginx/tls/web.crt"', '"/var/www/acme/web.crt"'),
    ),
    mistake(
        "service file in a certificate's directory",
        "db1.example.test: services[1].files[0].path: '/etc/backup-agent/tls.pem' is in the "
        "directory of certificates[1] ('/etc/backup-agent'), which pkinfra writes",
        (
            INV,
            '"issuer": "duckcorp-backup",',
            '"issuer": "duckcorp-backup",\n"directory": "/etc/backup-agent",',
        ),
    ),
    mistake(
        "one file written by two services",
        "db1.example.test: services[1].files[0].path: '/etc/postgresql/tls/server.crt' is also "
        "written by services[0].files[0]",
        (INV, '"/etc/backup-agent/tls.pem"', '"/etc/postgresql/tls/server.crt"'),
    ),
    mistake(
        "two certificates sharing one directory",
        "db1.example.test: certificates[1].directory: '/srv/tls' is also the directory of "
        "certificates[0]",
        (INV, '"issuer": "duckcorp"}', '"issuer": "duckcorp", "directory": "/srv/tls"}'),
        (
            INV,
            '"issuer": "duckcorp-backup",',
            '"issuer": "duckcorp-backup",\n"directory": "/srv/tls",',
        ),
    ),
    mistake(
        "certificate directory among pkinfra's own files",
        "db1.example.test: certificates[0].directory: '/etc/letsencrypt/postgres' is pkinfra's "
        "own (/etc/letsencrypt/)",
        (
            INV,
            '"issuer": "duckcorp"}',
            '"issuer": "duckcorp", "directory": "/etc/letsencrypt/postgres"}',
        ),
    ),
    # -- names ----------------------------------------------------------------------------------
    mistake(
        "DNS name with a newline inside",
        "mx1.example.test: certificates[0].names[0]: DNS name 'mx1\\n.example.test' holds a space "
        "or control character",
        (
            INV,
            '"names": ["mx1.example.test", "mail.example.test"]',
            '"names": ["mx1\\n.example.test", "mail.example.test"]',
        ),
    ),
    mistake(
        "CA subtree with a newline inside",
        "group_data/all.py: cas.duckcorp-backup.permitted[0]: DNS name 'backup\\n.example.test' "
        "holds a space or control character",
        (G, '"permitted": ["backup.example.test"]', '"permitted": ["backup\\n.example.test"]'),
    ),
    mistake(
        "invalid DNS label",
        "mon1.example.test: certificates[0].names[0]: DNS name 'mon1_x.monitoring.example.test': "
        "label 'mon1_x' may only hold letters, digits and inner hyphens",
        (
            INV,
            '"names": ["mon1.monitoring.example.test"]',
            '"names": ["mon1_x.monitoring.example.test"]',
        ),
    ),
    mistake(
        "wildcard with http-01",
        "web1.example.test: certificates[0].names[1]: wildcard '*.www.example.test' is not "
        "allowed with http-01 (ACME needs dns-01)",
        (
            INV,
            '"names": ["web1.example.test", "www.example.test"]',
            '"names": ["web1.example.test", "*.www.example.test"]',
        ),
    ),
    mistake(
        "name outside the CA's permitted subtrees",
        "mon1.example.test: certificates[0].names[0]: 'mon1.example.test' is outside the "
        "permitted subtrees of CA 'duckcorp-monitoring' (monitoring.example.test)",
        (INV, '"names": ["mon1.monitoring.example.test"]', '"names": ["mon1.example.test"]'),
    ),
    mistake(
        "DNS-01 name another host already holds",
        "mx1.example.test: certificates[0].names[1]: _acme-challenge.mail.example.test TXT is "
        "already web1.example.test's (certificates[0].names[1]): a name and type belong to one "
        "host",
        (
            INV,
            '"names": ["web1.example.test", "www.example.test"]',
            '"names": ["web1.example.test", "mail.example.test"]',
        ),
        (
            INV,
            '"challenge": "http-01",\n                    "webroot": "/var/www/acme",',
            '"challenge": "dns-01",',
        ),
    ),
    mistake(
        "TLSA owner another host already publishes",
        "mx1.example.test: tlsa[0].certificate: _25._tcp.mx1.example.test TLSA is already "
        "web1.example.test's (tlsa[0].name): a name and type belong to one host (an HA pair "
        "says shared: true on each publication)",
        (
            INV,
            '"tlsa": [{"port": 443, "certificate": "web"}]',
            '"tlsa": [{"port": 25, "name": "mx1.example.test", "certificate": "web"}]',
        ),
    ),
    mistake(
        "TLSA owner shared by one of its hosts only",
        "mx1.example.test: tlsa[0].certificate: _25._tcp.mx1.example.test TLSA is also "
        "web1.example.test's (tlsa[0].name) and web1.example.test's says shared, this one does "
        "not: every publication at a shared owner says shared: true",
        (
            INV,
            '"tlsa": [{"port": 443, "certificate": "web"}]',
            '"tlsa": [{"port": 25, "name": "mx1.example.test", "certificate": "web", '
            '"shared": True}]',
        ),
    ),
    mistake(
        "TLSA owner shared by hosts with ACME certificates",
        "mx1.example.test: tlsa[0].certificate: _25._tcp.mx1.example.test TLSA is shared, but "
        "an ACME certificate's record is published by its host's agent into the host's own "
        "shadow name: an owner several hosts share needs CA-issued certificates",
        (
            INV,
            '"tlsa": [{"port": 443, "certificate": "web"}]',
            '"tlsa": [{"port": 25, "name": "mx1.example.test", "certificate": "web", '
            '"shared": True}]',
        ),
        (
            INV,
            '"tlsa": [{"port": 25, "certificate": "mail"}]',
            '"tlsa": [{"port": 25, "certificate": "mail", "shared": True}]',
        ),
    ),
    mistake(
        "host named like the TSIG transfer key",
        "pkinfra-transfer: fqdn: 'pkinfra-transfer' is the name of pkinfra's transfer key",
        (INV, '"fqdn": "resolver.example.test"', '"fqdn": "pkinfra-transfer"'),
    ),
    mistake(
        "host named like another host's rotated TSIG key",
        "k2.mx1.example.test: fqdn: 'k2.mx1.example.test' is the name mx1.example.test's TSIG "
        "key takes after rotation",
        (INV, '"fqdn": "acme.example.test"', '"fqdn": "k2.mx1.example.test"'),
    ),
    mistake(
        "host named like another host's next TSIG key file",
        "mx1.example.test.next: fqdn: 'mx1.example.test.next.key' is the file of "
        "mx1.example.test's next TSIG key during a rotation",
        (INV, '"fqdn": "acme.example.test"', '"fqdn": "mx1.example.test.next"'),
    ),
    mistake(
        "certificate named like a rollover's `-next` lineage",
        "mon1.example.test: certificates[0].name: 'monitoring-next' ends with '-next', which names "
        "a key rollover's second lineage",
        (INV, '"name": "monitoring",', '"name": "monitoring-next",'),
    ),
    # -- ACME -----------------------------------------------------------------------------------
    mistake(
        "ACME directory URL with `..`",
        "group_data/all.py: acme.directory: 'https://acme.example.test:14000/../../dir': the path "
        "is not in normal form (no '..', '.' or '//')",
        (G, ACME_DIR, '"directory": "https://acme.example.test:14000/../../dir"'),
    ),
    mistake(
        "ACME directory URL with `//`",
        "group_data/all.py: acme.directory: 'https://acme.example.test:14000//dir': the path is "
        "not in normal form (no '..', '.' or '//')",
        (G, ACME_DIR, '"directory": "https://acme.example.test:14000//dir"'),
    ),
    mistake(
        "certbot argument that turns verification off",
        "group_data/all.py: acme.certbot_args[0]: '--no-verify-ssl' turns off TLS verification "
        "of the ACME server: remove it",
        certbot_args('"certbot_args": ["--no-verify-ssl"]'),
    ),
    mistake(
        "certbot argument that adds a hook",
        "group_data/all.py: acme.certbot_args[0]: '--deploy-hook' adds a hook (pkinfra's hooks "
        "are the only ones that run): remove it",
        certbot_args('"certbot_args": ["--deploy-hook", "sh -c id"]'),
    ),
    mistake(
        "certbot argument abbreviating a refused one",
        "group_data/all.py: acme.certbot_args[0]: '--manual-auth=/tmp/x' adds a hook (pkinfra's "
        "hooks are the only ones that run): remove it",
        certbot_args('"certbot_args": ["--manual-auth=/tmp/x"]'),
    ),
    mistake(
        "certbot argument that overrides the server",
        "group_data/all.py: acme.certbot_args[0]: '--server' overrides what pkinfra derives from "
        "the inventory: remove it",
        certbot_args('"certbot_args": ["--server", "https://acme.example.org/dir"]'),
    ),
    mistake(
        "certbot argument that adds names",
        "group_data/all.py: acme.certbot_args[0]: '-d' (--domains) overrides what pkinfra "
        "derives from the inventory: remove it",
        certbot_args('"certbot_args": ["-d", "other.example.org"]'),
    ),
    mistake(
        "ACME certificate without a challenge",
        "mx1.example.test: certificates[0].challenge: an ACME certificate needs 'http-01' or "
        "'dns-01'",
        (INV, '"challenge": "dns-01",', ""),
    ),
    mistake(
        "http-01 without a webroot",
        "web1.example.test: certificates[0].webroot: http-01 needs a webroot (the directory nginx "
        "serves)",
        (INV, '"webroot": "/var/www/acme",', ""),
    ),
    mistake(
        "ACME certificate with an ed25519 key",
        "web1.example.test: certificates[0].key_type: ACME servers do not issue for ed25519 keys",
        (INV, '"challenge": "http-01",', '"challenge": "http-01", "key_type": "ed25519",'),
    ),
    # -- CAs, certificates, services ------------------------------------------------------------
    mistake(
        "unknown CA",
        "db1.example.test: certificates[0].issuer: unknown CA 'duckcorp-bakup' (known: acme, "
        "duckcorp, duckcorp-backup, duckcorp-monitoring)",
        (INV, '"issuer": "duckcorp"}', '"issuer": "duckcorp-bakup"}'),
    ),
    mistake(
        "unknown key type",
        "group_data/all.py: cas.duckcorp.key_type: unknown key type 'rsa-1024' (known: ec-p256, "
        "ec-p384, rsa-2048, rsa-3072, rsa-4096, ed25519)",
        (G, '"key_type": "ec-p384",', '"key_type": "rsa-1024",'),
    ),
    mistake(
        "zero or negative duration",
        "group_data/all.py: cas.duckcorp.validity_days: must be a positive number of days, got 0",
        (G, '"validity_days": 3650,', '"validity_days": 0,'),
    ),
    mistake(
        "certificate outliving its CA",
        "mon1.example.test: certificates[0].validity_days: 4000 days outlives CA "
        "'duckcorp-monitoring' (1825 days)",
        (INV, '"usages": ["client"],', '"usages": ["client"], "validity_days": 4000,'),
    ),
    mistake(
        "renewal window as long as the validity",
        "mon1.example.test: certificates[0].renew_before_days: 90 days is not shorter than the "
        "validity (90 days): it would renew on every run",
        (INV, '"usages": ["client"],', '"usages": ["client"], "renew_before_days": 90,'),
    ),
    mistake(
        "unknown field (typo)",
        "mon1.example.test: certificates[0].usage: unknown field",
        (INV, '"usages": ["client"],', '"usage": ["client"],'),
    ),
    mistake(
        "key file readable by others",
        "db1.example.test: services[0].files[1].mode: key file mode 0644 is readable by others "
        "(use 0600 or 0640)",
        (INV, '"mode": "0600",', '"mode": "0644",'),
    ),
    mistake(
        "service using an unknown certificate",
        "web1.example.test: services[0].certificate: unknown certificate 'wbe' (known: web)",
        (INV, '"certificate": "web",', '"certificate": "wbe",'),
    ),
    mistake(
        "two services of one name",
        "db1.example.test: services[1].name: duplicate service name 'postgresql'",
        (INV, '"name": "backup-agent",', '"name": "postgresql",'),
    ),
    mistake(
        "more than one way to notify",
        "web1.example.test: services[0].notify: give exactly one of 'signal' (with 'pidfile'), "
        "'command', 'restart'",
        (
            INV,
            '"notify": {"signal": "HUP", "pidfile": "/run/nginx.pid"}',
            '"notify": {"signal": "HUP", "pidfile": "/run/nginx.pid", "command": "reload"}',
        ),
    ),
    mistake(
        "TLSA for a certificate the host does not have",
        "mx1.example.test: tlsa[0].certificate: host has no certificate 'mial' (known: mail)",
        (
            INV,
            '"tlsa": [{"port": 25, "certificate": "mail"}]',
            '"tlsa": [{"port": 25, "certificate": "mial"}]',
        ),
    ),
    # -- settings -------------------------------------------------------------------------------
    mistake(
        "zone listed twice",
        "group_data/all.py: zones[1].name: zone 'example.test' listed twice",
        (
            G,
            '"name": "unsigned.test",\n        "signed": False,',
            '"name": "example.test",\n        "signed": False,',
        ),
        # Not the admin's (example.test has host records), without db1's record in
        # unsigned.test: the double zone is the one mistake.
        (G, '"admin_file": "/etc/bind/db.unsigned.test",\n', ""),
        (INV, '"name": "db1.unsigned.test"', '"name": "db1.example.test"'),
    ),
    mistake(
        "shadow zone that is also a main zone",
        "group_data/all.py: shadow_zone.name: the shadow zone must not also be a main zone",
        (G, 'shadow_zone = {"name": "shadow.test"', 'shadow_zone = {"name": "unsigned.test"'),
    ),
    mistake(
        "DNS primary as its own secondary",
        "group_data/all.py: dns.secondaries: the primary cannot be its own secondary",
        (G, '"secondaries": ["ns2.example.test"]', '"secondaries": ["ns1.example.test"]'),
    ),
]


def readme_rows() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        match = re.fullmatch(r"\| (.+) \| `(.+)` \|", line)
        if match:
            rows.append((match.group(1), match.group(2)))
    return rows


def test_the_readme_table_is_this_list() -> None:
    assert len(MISTAKES) >= 30
    assert len({m.message for m in MISTAKES}) == len(MISTAKES)
    assert readme_rows() == [(m.kind, m.message) for m in MISTAKES]


def make_site(base: Path, case: Mistake) -> Path:
    """A copy of what ``pyinfra inventory.py deploys/site.py`` reads, with the mistake in it."""
    site = base / "site"
    site.mkdir()
    for name in ("inventory.py", "config.py"):
        shutil.copy(ROOT / name, site / name)
    for name in ("group_data", "deploys", "operations"):
        shutil.copytree(ROOT / name, site / name, ignore=shutil.ignore_patterns("__pycache__"))
    # Controller state must stay as it is too: a CA store and a TSIG secret stand-in.
    (site / "pki" / "secrets").mkdir(parents=True, mode=0o700)
    (site / "pki" / "secrets" / "mx1.example.test.key").write_text("stand-in\n")
    for file, old, new in case.edits:
        text = (site / file).read_text()
        assert text.count(old) == 1, f"{file}: {old!r} occurs {text.count(old)} times"
        (site / file).write_text(text.replace(old, new))
    return site


def snapshot(tree: Path) -> dict[str, tuple[str, int]]:
    """Every file and directory below ``tree``: content hash (files) and mode."""
    result = {}
    for path in sorted(tree.rglob("*")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        result[str(path.relative_to(tree))] = (digest, path.stat().st_mode)
    return result


def check_message(case: Mistake, site: Path) -> None:
    """The line names the host (an FQDN of the inventory) or the settings file, and a field."""
    where, field, _ = case.message.split(": ", 2)
    inventory = (site / "inventory.py").read_text()
    assert where == "group_data/all.py" or f'"fqdn": "{where}"' in inventory, where
    assert re.fullmatch(r"[a-z_]+(\[\d+\])?([.][a-z_.-]+(\[\d+\])?)*", field), field


@pytest.mark.parametrize("case", MISTAKES, ids=[m.kind for m in MISTAKES])
def test_refused_when_the_inventory_loads(case: Mistake, tmp_path: Path) -> None:
    site = make_site(tmp_path, case)
    before = snapshot(site)
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(site / "inventory.py"))
    assert str(info.value.code).splitlines() == [HEAD, f"  {case.message}"]
    check_message(case, site)
    assert snapshot(site) == before


@pytest.fixture(scope="module")
def guarded_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path]:
    """An environment in which any docker or ssh call, and any network connect, is logged."""
    base = tmp_path_factory.mktemp("guard")
    log = base / "calls.log"
    bin_dir = base / "bin"
    bin_dir.mkdir()
    for tool in ("docker", "ssh"):
        wrapper = bin_dir / tool
        wrapper.write_text(f'#!/bin/sh\necho {tool} "$@" >> {log}\nexit 1\n')
        wrapper.chmod(0o755)
    guard = base / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(
        "import socket\n"
        "_connect = socket.socket.connect\n"
        "def _logged(self, address):\n"
        "    if self.family in (socket.AF_INET, socket.AF_INET6):\n"
        f"        with open({str(log)!r}, 'a') as log:\n"
        "            log.write(f'connect {address}\\n')\n"
        "        raise OSError('no connections in this test')\n"
        "    return _connect(self, address)\n"
        "socket.socket.connect = _logged\n"
        "socket.socket.connect_ex = _logged\n"
    )
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": f"{guard}:{ROOT}",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    # The guard works: a connect from a process started this way is logged.
    probe = (
        "import socket\n"
        "try: socket.create_connection(('192.0.2.1', 22), timeout=1)\n"
        "except OSError: pass"
    )
    subprocess.run([sys.executable, "-c", probe], env=env, check=True, timeout=30)
    assert log.read_text() == "connect ('192.0.2.1', 22)\n"
    log.unlink()
    return env, log


@pytest.mark.parametrize("case", MISTAKES, ids=[m.kind for m in MISTAKES])
def test_pyinfra_refuses_before_any_host_is_contacted(
    case: Mistake, tmp_path: Path, guarded_env: tuple[dict[str, str], Path]
) -> None:
    env, log = guarded_env
    site = make_site(tmp_path, case)
    before = snapshot(site)
    run = subprocess.run(
        [str(PYINFRA), "-y", "inventory.py", "deploys/site.py"],
        cwd=site,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    assert f"{HEAD}\n  {case.message}\n" in output
    assert output.count(case.message) == 1, output
    assert not log.exists(), log.read_text()
    assert snapshot(site) == before
