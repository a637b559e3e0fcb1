"""pyinfra settings for pkinfra runs.

``--diff`` is never turned on here: certificate files and configs would be printed. Secrets never
travel through a diffing upload anyway (keys are made on hosts, TSIG keys use a hashed upload).
"""

REQUIRE_PYINFRA_VERSION = ">=3.10,<4"
CONNECT_TIMEOUT = 10
