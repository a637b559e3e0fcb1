"""pkinfra's places on a managed host, each named once.

The controller writes these files and the host agents read them, so both import this module
(it is installed with the agents and imports nothing). ``pkinfra.model.HOST_RESERVED_DIRS``
keeps every inventory path out of the directories below.
"""

from __future__ import annotations

from typing import Final

#: pkinfra's own directories: configuration, state, cache, the agents' code.
ETC_DIR: Final = "/etc/pkinfra"
STATE_DIR: Final = "/var/lib/pkinfra"
CACHE_DIR: Final = "/var/cache/pkinfra"
LIB_DIR: Final = "/usr/local/lib/pkinfra"
#: pkinfra's programs in /usr/local/bin all start with this.
BIN_PREFIX: Final = "/usr/local/bin/pkinfra-"

#: The host's own TSIG key (0600 root): its RFC 2136 updates of its delegated names.
TSIG_KEY: Final = f"{ETC_DIR}/tsig.key"

# -- certificates --------------------------------------------------------------------------------
#: CA-issued certificates, one directory each (``<certificate>/key.pem`` ...) by default.
CERTS_DIR: Final = f"{ETC_DIR}/certs"
#: CA bundles and CRLs for services that verify clients (``<ca>.pem``).
CA_DIR: Final = f"{ETC_DIR}/ca"
CRL_DIR: Final = f"{ETC_DIR}/crl"
#: A non-public ACME server's TLS CA, in the system store (what certbot's requests use).
ACME_SERVER_TRUST: Final = "/usr/local/share/ca-certificates/pkinfra-acme-server.crt"
#: HTTP-01: pkinfra stages its nginx files here and keeps the previous ones while ``nginx -t``
#: runs (outside every directory nginx includes).
NGINX_STAGE: Final = f"{ETC_DIR}/nginx-stage"

# -- agents: programs, configuration, state ------------------------------------------------------
#: certbot's DNS-01 hook (``pkinfra.agent.certbot_hook``), its configuration, and where each
#: challenge name led last time (target and zone: public data, a hint only).
HOOK: Final = f"{BIN_PREFIX}certbot-hook"
HOOK_CONFIG: Final = f"{ETC_DIR}/acme-hook.conf"
HOOK_ZONE_CACHE: Final = f"{CACHE_DIR}/acme-hook-zones.json"
#: The TLSA publisher (``pkinfra.agent.dane_publish``), its configuration, certbot deploy hook,
#: and when each record was first served everywhere.
DANE_PUBLISH: Final = f"{BIN_PREFIX}dane-publish"
DANE_CONFIG: Final = f"{ETC_DIR}/dane.json"
DANE_DEPLOY_HOOK: Final = "/etc/letsencrypt/renewal-hooks/deploy/40-pkinfra-dane"
DANE_SEEN: Final = f"{STATE_DIR}/dane-seen.json"
#: The key rollover (``pkinfra.agent.rollover``), its configuration and per-certificate state.
ROLLOVER: Final = f"{BIN_PREFIX}rollover"
ROLLOVER_CONFIG: Final = f"{ETC_DIR}/rollover.json"
ROLLOVER_DIR: Final = f"{ETC_DIR}/rollover"
#: The delivery agent (``pkinfra.agent.delivery``; run as ``python3 DELIVERY_AGENT``), the
#: services mapping it reads, and certbot's deploy hook that runs it on renewals.
DELIVERY_AGENT: Final = f"{LIB_DIR}/delivery.py"
SERVICES_MAPPING: Final = f"{ETC_DIR}/services.json"
DELIVERY_DEPLOY_HOOK: Final = "/etc/letsencrypt/renewal-hooks/deploy/50-pkinfra-deliver"
#: ``pending/<service>``: a notification is owed; ``served/<service>.json``: what an in-place
#: service was last told about.
PENDING_DIR: Final = f"{STATE_DIR}/pending"
SERVED_DIR: Final = f"{STATE_DIR}/served"
