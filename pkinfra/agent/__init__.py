"""What runs on a managed host: the host agents and every module they share with the controller.

Everything here, and every pkinfra module it imports, is installed under /usr/local/lib/pkinfra
(``pkinfra.install`` derives the list from the imports) and runs on the host's python3 with the
standard library and Debian's python3-dnspython (12: 2.3, 13: 2.7) and python3-cryptography
(12: 38, 13: 43) only. The controller imports from here, never the other way round.
"""
