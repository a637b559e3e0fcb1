"""The one base of every error pkinfra raises on purpose, on the controller and on hosts.

Each layer has its own class (``CAError``, ``InventoryError``, ``DNSUpdateError``,
``DeliveryError`` ...), all derived from ``PkinfraError``: a caller that only reports (the
``pkinfra`` command, a deploy, a host agent's ``main``) catches this one class and prints one
line. The standard library only: host agents import it.
"""

from __future__ import annotations


class PkinfraError(Exception):
    """A failure worded for one line; ``context`` says what it is about.

    ``context`` holds the fields a program may act on (``host``, ``ca``, ``path``, ``zone``,
    ``rcode`` ...), those that are known only. Neither the text nor the context ever holds a
    secret (a key, a passphrase, a TSIG secret).
    """

    def __init__(self, message: str = "", **context: object) -> None:
        super().__init__(message)
        self.context: dict[str, object] = {k: v for k, v in context.items() if v is not None}
