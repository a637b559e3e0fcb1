"""Settings every host shares: zones, DNS servers, CAs and the ACME server (the lab's values).

pkinfra validates this file together with inventory.py before pyinfra contacts any host.
"""

# The controller-side state to back up: CA store and TSIG secrets (relative to inventory.py).
pki_dir = "pki"
secrets_dir = "pki/secrets"

zones = [
    # Short TLSA TTLs keep the lab's key rollover tests quick (step 2 waits one TTL); a site
    # keeps the defaults (300 s here, 60 s in the shadow zone) or longer.
    {"name": "example.test", "tlsa_ttl": 5},
    # Unsigned on purpose: the DANE checker's "no DANE" case. Kept by hand by the site's admin
    # (lab/deploys/bind_admin.py writes its first version): pkinfra only writes its include file.
    # Its TLSA TTL as short as example.test's: a rollover waits for the longest of its records.
    {
        "name": "unsigned.test",
        "signed": False,
        "admin_file": "/etc/bind/db.unsigned.test",
        "tlsa_ttl": 5,
    },
]

# Receives ACME challenges and host-managed TLSA records by RFC 2136 (CNAMEs point here).
shadow_zone = {"name": "shadow.test", "tlsa_ttl": 5, "challenge_ttl": 5, "negative_ttl": 1}

dns = {"primary": "ns1.example.test", "secondaries": ["ns2.example.test"]}

# The lab's passphrase file is made by `make` (lab/ca-passphrase); production uses a file or an
# environment variable that only the controller has.
_passphrase = {"file": ".lab/ca-passphrase"}

cas = {
    "duckcorp": {
        "key_type": "ec-p384",
        "validity_days": 3650,
        "path_length": 1,
        "organization": "DuckCorp",
        "passphrase": _passphrase,
    },
    "duckcorp-backup": {
        "parent": "duckcorp",
        "key_type": "ec-p256",
        "validity_days": 1825,
        "path_length": 0,
        "permitted": ["backup.example.test"],
        "organization": "DuckCorp",
        "passphrase": _passphrase,
    },
    "duckcorp-monitoring": {
        "parent": "duckcorp",
        "key_type": "ec-p256",
        "validity_days": 1825,
        "path_length": 0,
        "permitted": ["monitoring.example.test"],
        "organization": "DuckCorp",
        "passphrase": _passphrase,
    },
}

acme = {
    # Pebble in the lab; https://acme-v02.api.letsencrypt.org/directory in production.
    "directory": "https://acme.example.test:14000/dir",
    "ca_bundle": ".lab/pebble-ca.pem",
}
