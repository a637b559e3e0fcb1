"""Operations for DANE publication by hosts: the TLSA records of their ACME certificates."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import OperationError, operation

from operations.context import announce
from operations.facts import DaneServed, RolloverState
from operations.util import q
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
    host's ``pkinfra-rollover`` does the work and keeps the state).

    + certificate: the certbot lineage (the inventory's certificate name)
    + label: the inventory's ``rollover`` label; None: no rollover asked (one in progress ends)
    + ttl: the TLSA records' TTL (step 2 waits that long after step 1)
    + wait: how long this run may wait for step 2; less than the time left: a later run
    + state_dir: where the host keeps rollover states

    **Example:**

    .. code:: python

        dane.key_rollover(certificate="mail", label="2026-11", ttl=60, wait=90)
    """
    found = host.get_fact(RolloverState, path=f"{state_dir}/{certificate}.json")
    state = (found or {}).get("state") or {}
    now = (found or {}).get("now", 0)
    step = state.get("step")
    have = state.get("label")
    command = f"{ROLLOVER} --config {q(ROLLOVER_CONFIG)}"
    active = step in ("starting", "published", "switching", "switched", "retiring")
    if step == "unreadable":
        raise OperationError(
            f"key rollover {certificate}: the state file on the host is unreadable"
        )

    if not active:
        if label is None or (step == "done" and have == label):
            host.noop(
                f"key rollover {certificate}: "
                + (f"rolled over to '{label}'" if label else "none asked")
            )
            return
        if step == "aborted" and have == label:
            host.noop(f"key rollover {certificate}: '{label}' was aborted on the host")
            return
        announce(
            f"key rollover {certificate} to '{label}': step 1 (next key, TLSA for both keys)"
            + (f", then step 2 after the TTL ({ttl} s)" if wait >= ttl else "")
        )
        yield f"{command} start {q(certificate)} --label {q(label)}"
        if wait >= ttl:
            yield f"{command} finish {q(certificate)} --wait {int(wait)}"
        return

    if step == "published":
        left = max(0, int(state.get("served_since", 0)) + ttl - now)
        if left > wait:
            host.noop(
                f"key rollover {certificate} to '{have}': step 2 in {left} s (the next TLSA "
                "record must be served for the TTL first)"
            )
            return
        announce(f"key rollover {certificate} to '{have}': step 2 (switch to the next key)")
    elif step == "starting":
        announce(f"key rollover {certificate} to '{have}': resuming step 1 (it was interrupted)")
        yield f"{command} start {q(certificate)} --label {q(str(have))}"
        if wait < ttl:
            return
    else:
        announce(
            f"key rollover {certificate} to '{have}': resuming step 2 (it stopped at '{step}')"
        )
    yield f"{command} finish {q(certificate)} --wait {int(max(wait, 0))}"
