"""The lab's hosts. Managed hosts are reached as production hosts are: over SSH, as a non-root
user with passwordless sudo (``_sudo``); only the lab's own infrastructure (the validating
resolver, the ACME server) is reached with ``@docker/``.

A production inventory has the same shape: hosts in groups, each with its ``fqdn`` and its
pkinfra fields, settings in ``group_data/all.py``. The last line validates all of it before
pyinfra connects to anything. A group's name must not start with ``_`` (pyinfra ignores such a
group; pkinfra refuses it).
"""

from pathlib import Path

from pkinfra.model import load_or_exit

_here = Path(__file__).resolve().parent
_lab = _here / ".lab"


def _ssh(address: str) -> dict[str, object]:
    """How pyinfra reaches a lab host: SSH as ``ops`` (strict host keys), then sudo."""
    return {
        "address": address,
        "ssh_hostname": address,
        "ssh_user": "ops",
        "ssh_key": str(_lab / "ssh" / "id_ed25519"),
        "ssh_known_hosts_file": str(_lab / "ssh" / "known_hosts"),
        "ssh_strict_host_key_checking": "yes",
        "_sudo": True,
    }


dns = [
    ("ns1.example.test", {"fqdn": "ns1.example.test", **_ssh("172.29.53.10")}),
    ("ns2.example.test", {"fqdn": "ns2.example.test", **_ssh("172.29.53.11")}),
]

# Lab-only infrastructure: the validating resolver every lab host uses, and Pebble (ACME).
resolvers = [
    ("@docker/pkinfra-resolver", {"fqdn": "resolver.example.test", "address": "172.29.53.53"}),
]
acme_servers = [
    ("@docker/pkinfra-acme", {"fqdn": "acme.example.test", "address": "172.29.53.14"}),
]

web = [
    (
        "web1.example.test",
        {
            "fqdn": "web1.example.test",
            **_ssh("172.29.53.20"),
            "records": [
                {"name": "www.example.test", "type": "CNAME", "value": "web1.example.test."}
            ],
            "certificates": [
                {
                    "name": "web",
                    "names": ["web1.example.test", "www.example.test"],
                    "issuer": "acme",
                    "challenge": "http-01",
                    "webroot": "/var/www/acme",
                },
            ],
            "services": [
                {
                    "name": "nginx",
                    "certificate": "web",
                    "files": [
                        {"path": "/etc/nginx/tls/web.crt", "content": "fullchain"},
                        {"path": "/etc/nginx/tls/web.key", "content": "key"},
                    ],
                    "notify": {"signal": "HUP", "pidfile": "/run/nginx.pid"},
                },
            ],
            "tlsa": [{"port": 443, "certificate": "web"}],
        },
    ),
]

mail = [
    (
        "mx1.example.test",
        {
            "fqdn": "mx1.example.test",
            **_ssh("172.29.53.25"),
            "records": [{"name": "example.test", "type": "MX", "value": "10 mx1.example.test."}],
            "certificates": [
                {
                    "name": "mail",
                    "names": ["mx1.example.test", "mail.example.test"],
                    "issuer": "acme",
                    "challenge": "dns-01",
                },
            ],
            "services": [
                {
                    "name": "postfix",
                    "certificate": "mail",
                    "files": [
                        {"path": "/etc/postfix/tls/mail.crt", "content": "fullchain"},
                        {"path": "/etc/postfix/tls/mail.key", "content": "key"},
                    ],
                    # try-: a stopped Postfix reads the files when it starts.
                    "notify": {"command": "systemctl try-reload-or-restart postfix"},
                },
            ],
            "tlsa": [{"port": 25, "certificate": "mail"}],
        },
    ),
]

db = [
    (
        "db1.example.test",
        {
            "fqdn": "db1.example.test",
            **_ssh("172.29.53.30"),
            "certificates": [
                {"name": "postgres", "names": ["db1.example.test"], "issuer": "duckcorp"},
                {
                    "name": "backup",
                    "names": ["db1.backup.example.test"],
                    "issuer": "duckcorp-backup",
                    "usages": ["client", "server"],
                },
            ],
            "services": [
                {
                    "name": "postgresql",
                    "certificate": "postgres",
                    "files": [
                        {
                            "path": "/etc/postgresql/tls/server.crt",
                            "content": "fullchain",
                            "owner": "postgres",
                            "group": "postgres",
                        },
                        {
                            "path": "/etc/postgresql/tls/server.key",
                            "content": "key",
                            "owner": "postgres",
                            "group": "postgres",
                            "mode": "0600",
                        },
                        {
                            "path": "/etc/postgresql/tls/clients.pem",
                            "content": "ca_bundle",
                            "ca": "duckcorp-monitoring",
                            "owner": "postgres",
                            "group": "postgres",
                        },
                        {
                            "path": "/etc/postgresql/tls/clients.crl",
                            "content": "crl",
                            "ca": "duckcorp-monitoring",
                            "owner": "postgres",
                            "group": "postgres",
                        },
                    ],
                    "notify": {
                        "signal": "HUP",
                        "pidfile": "/var/run/postgresql/15-main.pid",
                        "process": "postgres",
                    },
                },
                {
                    # Stands in for a backup agent that reads its certificate only at start.
                    "name": "backup-agent",
                    "certificate": "backup",
                    "files": [{"path": "/etc/backup-agent/tls.pem", "content": "combined"}],
                    "notify": {"restart": "systemctl restart lab-backup-agent"},
                },
            ],
            "tlsa": [
                {"port": 5432, "certificate": "postgres"},
                # In the zone the admin keeps by hand (group_data/all.py): pkinfra's include.
                {"port": 5432, "certificate": "postgres", "name": "db1.unsigned.test"},
            ],
        },
    ),
]

monitoring = [
    (
        "mon1.example.test",
        {
            "fqdn": "mon1.example.test",
            **_ssh("172.29.53.40"),
            "certificates": [
                {
                    "name": "monitoring",
                    "names": ["mon1.monitoring.example.test"],
                    "issuer": "duckcorp-monitoring",
                    "usages": ["client"],
                },
            ],
        },
    ),
]

# pkinfra finds the groups above as pyinfra does (module-level lists of hosts): one declaration.
_inventory = load_or_exit(__file__, globals())
