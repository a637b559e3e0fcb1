"""Everything, in an order that never publishes a mismatch: base, then (as they land) DNS, PKI,
ACME, services and DANE.
"""

from pyinfra import local

local.include("deploys/base.py")
# DNS master and secondaries; it includes the lab resolver itself (after named runs).
local.include("deploys/dns.py")
