"""Everything, in an order that never publishes a mismatch.

DNS first (zones, keys, grants; the lab resolver), then the private PKI (CAs, host certificates)
and ACME (Pebble in the lab, certbot lineages), then the TLSA records of ACME certificates (before
any service gets a new key), then the lab daemons' configuration, the delivery of certificate
files into services (a key change waits for its TLSA record), and the daemons that must start.
The TLSA records of CA-issued certificates come from the CA store with the DNS deploy.
"""

from pyinfra import local

local.include("deploys/base.py")
local.include("deploys/dns.py")  # BIND, keys, zones; then the lab resolver (deploys/resolver.py)
local.include("deploys/pki.py")
local.include("deploys/pebble.py")  # lab only: the ACME server, before any host uses it
local.include("deploys/acme.py")
local.include("deploys/dane.py")
local.include("deploys/lab_services.py")  # lab only: daemons configured for pkinfra's files
local.include("deploys/services.py")
local.include("deploys/lab_start.py")  # lab only: daemons not running yet are started
