"""Operations for DANE publication by hosts: the TLSA records of their ACME certificates."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import operation

from operations.context import announce
from operations.facts import DaneServed
from operations.util import q
from pkinfra.acme import DANE_CONFIG, DANE_PUBLISH


@operation()
def tlsa_published(config_changed: bool = False, after_change: bool = False):
    """
    Ensure every authoritative server serves the TLSA records of the host's ACME certificates
    (the host's agent publishes them with its own TSIG key, following the CNAME chain).

    + config_changed: the publisher's configuration changes in this run (publish after it)
    + after_change: only publish (for ``_if=certificate_changed()``: a certificate of this run)

    **Example:**

    .. code:: python

        dane.tlsa_published(config_changed=config.will_change)
    """
    command = f"{DANE_PUBLISH} --config {q(DANE_CONFIG)}"
    if after_change:
        yield command
        return
    state = (
        None
        if config_changed
        else host.get_fact(DaneServed, publisher=DANE_PUBLISH, config=DANE_CONFIG)
    )
    if state == "served":
        host.noop("TLSA records served by every authoritative server")
        return
    why = {
        None: "publisher or its configuration installed by this run",
        "stale": "the records do not match the certificates (or not on every server)",
    }.get(state, str(state))
    announce(f"TLSA: will publish ({why})")
    yield command
