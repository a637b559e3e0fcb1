"""Operations for DANE publication by hosts: the TLSA records of their ACME certificates."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import OperationError, operation

from operations.context import announce
from operations.facts import DaneServed, RolloverState
from operations.util import q
from pkinfra import rollover
from pkinfra.agent.paths import DANE_CONFIG, DANE_PUBLISH, ROLLOVER, ROLLOVER_CONFIG, ROLLOVER_DIR


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


@operation()
def key_rollover(
    certificate: str,
    label: str | None,
    ttl: int,
    wait: int = 0,
    state_dir: str = ROLLOVER_DIR,
):
    """
    Ensure the key of an ACME certificate has been rolled over to ``label`` (two steps; the
    host's ``pkinfra-rollover`` does the work and keeps the state; ``pkinfra.rollover`` says
    which step comes next).

    + certificate: the certbot lineage (the inventory's certificate name)
    + label: the inventory's ``rollover`` label; None: no rollover asked (one in progress ends)
    + ttl: the TLSA records' TTL (step 2 waits that long after step 1)
    + wait: how long this run may wait for step 2; less than the time left: a later run
    + state_dir: where the host keeps rollover states

    **Example:**

    .. code:: python

        dane.key_rollover(certificate="mail", label="2026-11", ttl=60, wait=90)
    """
    found = host.get_fact(RolloverState, path=f"{state_dir}/{certificate}.json") or {}
    seen = rollover.Seen(asked=label, now=found.get("now", 0), ttl=ttl, wait=wait)
    step = rollover.plan(rollover.ACME, found.get("state") or {}, seen)
    if step.action == rollover.REFUSE:
        raise OperationError(step.text(certificate))
    if step.action in (rollover.NOTHING, rollover.WAIT):
        host.noop(step.text(certificate))
        return
    announce(step.text(certificate))
    command = f"{ROLLOVER} --config {q(ROLLOVER_CONFIG)}"
    if step.action in (rollover.BEGIN, rollover.PUBLISH):
        yield f"{command} start {q(certificate)} --label {q(str(step.label))}"
        if not step.then_switch:
            return
    yield f"{command} finish {q(certificate)} --wait {int(max(wait, 0))}"
