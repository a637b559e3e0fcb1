"""The lab's site: ``deploys/site.py``'s steps, in its order, with the lab's own between them.

A real site has these already: BIND options and local zones its admin keeps (here
``lab/deploys/bind_admin.py``, before the DNS deploy), a validating resolver (here
``lab/deploys/resolver.py``, after the DNS deploy whose keys it trusts), an ACME server (Let's
Encrypt; here Pebble, before any host asks it), and daemons configured by their admin to read
the files pkinfra places (here ``lab/deploys/services.py`` before the delivery, and
``lab/deploys/start.py`` after it). ``make demo`` runs this file; a test checks that the
product steps are exactly those of ``deploys/site.py``, in the same order.
"""

from pyinfra import local

# One include per line: pyinfra orders operations by the line that made them (a loop would
# give the operations of every step the same line, and a cycle).
local.include("deploys/base.py")
local.include("lab/deploys/bind_admin.py")
local.include("deploys/dns.py")
local.include("lab/deploys/resolver.py")
local.include("deploys/pki.py")
local.include("lab/deploys/pebble.py")
local.include("deploys/acme.py")
local.include("deploys/dane.py")
local.include("lab/deploys/services.py")
local.include("deploys/services.py")
local.include("lab/deploys/start.py")
