"""Everything a site runs, in an order that never publishes a mismatch.

DNS first (BIND, TSIG keys, zones and grants), then the private PKI (CAs, host certificates) and
ACME (certbot lineages), then the TLSA records of ACME certificates (before any service gets a
new key), then the delivery of certificate files into services (a key change waits for its
TLSA record). The TLSA records of CA-issued certificates come from the CA store with the DNS
deploy. Nothing here is lab-only: the lab runs ``lab/site.py``, which adds its own steps
(resolver, ACME server, the daemons' configuration) between these.
"""

from pyinfra import local

# One include per line: pyinfra orders operations by the line that made them (a loop would
# give the operations of every step the same line, and a cycle).
local.include("deploys/base.py")
local.include("deploys/dns.py")
local.include("deploys/pki.py")
local.include("deploys/acme.py")
local.include("deploys/dane.py")
local.include("deploys/services.py")
