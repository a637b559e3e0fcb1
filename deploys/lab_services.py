"""The lab's own daemons, configured to use the files pkinfra delivers (a real site configures
its daemons its own way; pkinfra only places files and notifies).

- db1: PostgreSQL with TLS, client certificates of the monitoring sub-CA (``cert`` auth, mapped
  by CN), the CRLs of every CA in that chain; and a stand-in backup agent that has to be
  restarted to read a new certificate (``openssl s_server`` on port 9102).
- mx1: Postfix with STARTTLS on port 25, DANE-ready (DNSSEC lookups, validating resolver).

Runs after deploys/services.py: on a first run the files are in place before a daemon starts.
"""

from io import StringIO

from pyinfra import host
from pyinfra.facts.server import Command
from pyinfra.operations import files, server

from operations.context import this_host
from operations.util import q

spec = this_host()
services = {s.name for s in spec.services}

PG_DIR = "/etc/postgresql/15/main"
PG_CONF = """# pkinfra lab: TLS from the files pkinfra delivers (see inventory.py, db1)
listen_addresses = '*'
ssl = on
ssl_cert_file = '/etc/postgresql/tls/server.crt'
ssl_key_file = '/etc/postgresql/tls/server.key'
ssl_ca_file = '/etc/postgresql/tls/clients.pem'
ssl_crl_file = '/etc/postgresql/tls/clients.crl'
"""
PG_HBA = """# pkinfra lab: local admin by peer; the monitoring role only over TLS with a client
# certificate (cert implies clientcert=verify-full), its CN mapped by pg_ident.conf
local   all         postgres                    peer
local   all         all                         peer
hostssl all         monitoring  172.29.53.0/24  cert map=pkinfra
"""
PG_IDENT = """# pkinfra lab: certificate CN -> database role
pkinfra  mon1.monitoring.example.test  monitoring
"""
MONITORING_ROLE = (
    "DO $$BEGIN CREATE ROLE monitoring LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$"
)

BACKUP_AGENT = """#!/bin/sh
# pkinfra lab: a TLS service that reads its certificate only when it starts.
set -e
case "$1" in
  restart|start)
    pkill -f '^openssl s_server -accept 9102' || true
    while pgrep -f '^openssl s_server -accept 9102' >/dev/null; do sleep 0.1; done
    nohup openssl s_server -accept 9102 -cert /etc/backup-agent/tls.pem -quiet \\
      </dev/null >/var/log/backup-agent.log 2>&1 &
    ;;
  *) echo "usage: $0 start|restart" >&2; exit 2 ;;
esac
"""

POSTFIX = {
    "inet_interfaces": "all",
    "myhostname": spec.fqdn,
    "mydestination": "$myhostname, localhost",
    "smtpd_tls_cert_file": "/etc/postfix/tls/mail.crt",
    "smtpd_tls_key_file": "/etc/postfix/tls/mail.key",
    "smtpd_tls_security_level": "may",
    "smtp_dns_support_level": "dnssec",
    "smtp_tls_security_level": "dane",
    "maillog_file": "/var/log/postfix.log",
}


def running(pattern: str) -> bool:
    return host.get_fact(Command, f"pgrep -x {q(pattern)} >/dev/null && echo yes || echo no") == (
        "yes"
    )


if "postgresql" in services:
    changed = [
        files.put(
            name="PostgreSQL TLS settings",
            src=StringIO(PG_CONF),
            dest=f"{PG_DIR}/conf.d/pkinfra-tls.conf",
            user="postgres",
            group="postgres",
            mode="644",
        ),
        files.put(
            name="PostgreSQL client authentication",
            src=StringIO(PG_HBA),
            dest=f"{PG_DIR}/pg_hba.conf",
            user="postgres",
            group="postgres",
            mode="640",
        ),
        files.put(
            name="PostgreSQL certificate name map",
            src=StringIO(PG_IDENT),
            dest=f"{PG_DIR}/pg_ident.conf",
            user="postgres",
            group="postgres",
            mode="640",
        ),
    ]
    if running("postgres"):
        server.shell(
            name="Reload PostgreSQL",
            commands=["pg_ctlcluster 15 main reload"],
            _if=lambda: any(op.did_change() for op in changed),
        )
    else:
        server.shell(
            name="Start PostgreSQL",
            commands=[
                "pg_ctlcluster 15 main start >/var/log/postgresql/pkinfra-start.log 2>&1"
                " || { cat /var/log/postgresql/pkinfra-start.log; exit 1; }",
                f"su postgres -c {q('psql -q -c ' + q(MONITORING_ROLE))}",
            ],
        )

if "backup-agent" in services:
    files.put(
        name="Backup agent (lab stand-in)",
        src=StringIO(BACKUP_AGENT),
        dest="/usr/local/sbin/lab-backup-agent",
        mode="755",
    )
    if (
        host.get_fact(
            Command, "pgrep -f '^openssl s_server -accept 9102' >/dev/null && echo yes || echo no"
        )
        != "yes"
    ):
        server.shell(
            name="Start the backup agent", commands=["/usr/local/sbin/lab-backup-agent start"]
        )

if "postfix" in services:
    keys = list(POSTFIX)
    current = host.get_fact(Command, "postconf -h " + " ".join(keys)).splitlines()
    differ = {
        k: v for k, v, have in zip(keys, POSTFIX.values(), current, strict=False) if have != v
    }
    if len(current) != len(keys):
        differ = dict(POSTFIX)
    if differ:
        server.shell(
            name="Postfix TLS settings",
            commands=["postconf -e " + " ".join(q(f"{k}={v}") for k, v in differ.items())],
        )
    if host.get_fact(Command, "postfix status >/dev/null 2>&1 && echo yes || echo no") == "yes":
        if differ:
            server.shell(name="Reload Postfix", commands=["postfix reload"])
    else:
        server.shell(
            name="Start Postfix",
            commands=[
                "postfix start >/dev/null 2>&1 || { tail -n 5 /var/log/postfix.log; exit 1; }"
            ],
        )
