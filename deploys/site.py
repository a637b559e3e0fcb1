"""Everything, in an order that never publishes a mismatch: base, then (as they land) DNS, PKI,
ACME, services and DANE.
"""

from pyinfra import local

local.include("deploys/base.py")
local.include("deploys/dns.py")  # BIND, keys, zones; then the lab resolver (deploys/resolver.py)
local.include("deploys/pki.py")
