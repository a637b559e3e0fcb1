"""The lab's own daemons, configured to use the files pkinfra delivers (a real site configures
its daemons its own way; pkinfra only places files and notifies).

- db1: PostgreSQL with TLS, client certificates of the monitoring sub-CA (``cert`` auth, mapped
  by CN), the CRLs of every CA in that chain; and a stand-in backup agent that has to be
  restarted to read a new certificate (``openssl s_server`` on port 9102).
- mx1: Postfix with STARTTLS on port 25, DANE-ready (DNSSEC lookups, validating resolver).
- web1: nginx on 443 with its ACME certificate: see lab/deploys/start.py (port 80 and the
  challenges: deploys/acme.py).

Runs before deploys/services.py (configuration, and the backup agent's unit that a notification
restarts); lab/deploys/start.py starts what is not running once the files are in place.
"""

from io import StringIO

from pyinfra import host
from pyinfra.facts.server import Command
from pyinfra.operations import files, server, systemd

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

BACKUP_AGENT_UNIT = """# pkinfra lab: a TLS service that reads its certificate only when it starts.
[Unit]
Description=Lab backup agent (stand-in: openssl s_server on 9102)
After=network.target

[Service]
ExecStart=/usr/bin/openssl s_server -accept 9102 -cert /etc/backup-agent/tls.pem -quiet
StandardInput=null
StandardOutput=append:/var/log/backup-agent.log
StandardError=inherit

[Install]
WantedBy=multi-user.target
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
    server.shell(
        name="Reload PostgreSQL (configuration changed)",
        commands=["systemctl try-reload-or-restart postgresql"],
        _if=lambda: any(op.did_change() for op in changed),
    )

if "backup-agent" in services:
    unit = files.put(
        name="Backup agent unit (lab stand-in)",
        src=StringIO(BACKUP_AGENT_UNIT),
        dest="/etc/systemd/system/lab-backup-agent.service",
        mode="644",
    )
    systemd.daemon_reload(name="systemd: units changed", _if=unit.did_change)

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
        server.shell(
            name="Reload Postfix (settings changed)",
            commands=["systemctl try-reload-or-restart postfix"],
        )
