"""The rollover planner (pkinfra.rollover): stored state + what was seen -> next step and why.

One table for both kinds: a CA-issued certificate's rollover (the controller carries it out)
and an ACME certificate's (the host's agent). Each row: the kind, the stored state, what the
caller saw, then the action, the operator's line for a certificate ``c``, and what it stores.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from pkinfra import rollover
from pkinfra.rollover import (
    ACME,
    BEGIN,
    CA,
    DELIVER,
    NOTHING,
    PUBLISH,
    REFUSE,
    RETIRE,
    SWITCH,
    WAIT,
    Seen,
)

T = 1_800_000_000
SEEN = Seen(now=T, ttl=60)
PUBLISHED = {"step": "published", "label": "k1", "served_since": T - 20}

# (id, kind, state, seen, action, text, saves)
ROWS: list[tuple[str, str, dict[str, Any], Seen, str, str, str | None]] = [
    # -- nothing to do, or something wrong
    ("none asked", CA, {}, SEEN, NOTHING, "key rollover c: none asked", None),
    (
        "done",
        ACME,
        {"step": "done", "label": "k1"},
        replace(SEEN, asked="k1"),
        NOTHING,
        "key rollover c: rolled over to 'k1'",
        None,
    ),
    (
        "aborted on the host",
        ACME,
        {"step": "aborted", "label": "k1"},
        replace(SEEN, asked="k1"),
        NOTHING,
        "key rollover c: 'k1' was aborted on the host",
        None,
    ),
    (
        "unreadable",
        ACME,
        {"step": "unreadable"},
        replace(SEEN, asked="k1"),
        REFUSE,
        "key rollover c: the state file on the host is unreadable",
        None,
    ),
    (
        "no key yet",
        CA,
        {},
        replace(SEEN, asked="k1", old_key=False),
        NOTHING,
        "key rollover c: waits for the certificate's first key",
        None,
    ),
    # -- step 1
    (
        "CA begins",
        CA,
        {"step": "done", "label": "k0"},
        replace(SEEN, asked="k1", next_dir="/etc/pkinfra/certs/c/next"),
        BEGIN,
        "key rollover c to 'k1': step 1: next key and certificate in /etc/pkinfra/certs/c/next;"
        " its TLSA record joins the zone with the next run's DNS deploy",
        "issued",
    ),
    (
        "ACME begins",
        ACME,
        {},
        replace(SEEN, asked="k1"),
        BEGIN,
        "key rollover c to 'k1': step 1 (next key, TLSA for both keys)",
        "starting",
    ),
    (
        "ACME begins and may wait for step 2",
        ACME,
        {},
        replace(SEEN, asked="k1", wait=90),
        BEGIN,
        "key rollover c to 'k1': step 1 (next key, TLSA for both keys), then step 2 after the "
        "TTL (60 s)",
        "starting",
    ),
    (
        "an aborted label asked again by the operator",
        ACME,
        {"step": "aborted", "label": "k1"},
        replace(SEEN, asked="k1", explicit=True),
        BEGIN,
        "key rollover c to 'k1': step 1 (next key, TLSA for both keys)",
        "starting",
    ),
    (
        "CA: the next key comes with this run",
        CA,
        {"step": "issued", "label": "k1"},
        replace(SEEN, asked="k1", next_key=False),
        NOTHING,
        "key rollover c to 'k1': the next key is made by this run first",
        None,
    ),
    (
        "CA checks the servers",
        CA,
        {"step": "issued", "label": "k1"},
        SEEN,
        PUBLISH,
        "key rollover c to 'k1': checking that every authoritative server serves the next record",
        "published",
    ),
    (
        "CA checks the servers, then step 2",
        CA,
        {"step": "issued", "label": "k1"},
        replace(SEEN, wait=60),
        PUBLISH,
        "key rollover c to 'k1': checking that every authoritative server serves the next "
        "record, then step 2 after the TTL (60 s)",
        "published",
    ),
    (
        "ACME step 1 interrupted (another label asked meanwhile: this one goes on)",
        ACME,
        {"step": "starting", "label": "k1"},
        replace(SEEN, asked="k2"),
        PUBLISH,
        "key rollover c to 'k1': resuming step 1 (it was interrupted)",
        "published",
    ),
    (
        "the operator asks another label while one runs",
        ACME,
        PUBLISHED,
        replace(SEEN, asked="k2", explicit=True),
        REFUSE,
        "key rollover c to 'k1': a rollover to 'k1' is at step 'published'; finish or abort it "
        "first",
        None,
    ),
    # -- step 2
    (
        "not due",
        CA,
        PUBLISHED,
        SEEN,
        WAIT,
        "key rollover c to 'k1': step 2 in 41 s (the next TLSA record must be served for the "
        "TTL first)",
        None,
    ),
    (
        # served_since is a whole second, written down truncated: the record may have been first
        # served up to a second later, so the TTL counts from the end of that second.
        "a TTL since the start of the second is not enough",
        ACME,
        {**PUBLISHED, "served_since": T - 60},
        SEEN,
        WAIT,
        "key rollover c to 'k1': step 2 in 1 s (the next TLSA record must be served for the "
        "TTL first)",
        None,
    ),
    (
        "due",
        ACME,
        {**PUBLISHED, "served_since": T - 61},
        SEEN,
        SWITCH,
        "key rollover c to 'k1': step 2 (switch to the next key)",
        "switched",
    ),
    (
        "due within the wait",
        CA,
        PUBLISHED,
        replace(SEEN, wait=41),
        SWITCH,
        "key rollover c to 'k1': step 2 (switch to the next key)",
        "switched",
    ),
    (
        "ACME switch interrupted",
        ACME,
        {**PUBLISHED, "step": "switching"},
        SEEN,
        SWITCH,
        "key rollover c to 'k1': resuming step 2 (it stopped at 'switching')",
        "switched",
    ),
    (
        "ACME deliveries not known yet",
        ACME,
        {**PUBLISHED, "step": "switched"},
        SEEN,
        DELIVER,
        "key rollover c to 'k1': resuming step 2 (it stopped at 'switched')",
        "retiring",
    ),
    (
        "CA: a service not told yet",
        CA,
        {"step": "switched", "label": "k1"},
        replace(SEEN, pending=["postgresql", "pgbouncer"]),
        WAIT,
        "key rollover c to 'k1': the old key's record stays until pgbouncer, postgresql has "
        "been told (notification pending)",
        None,
    ),
    (
        "CA: every service told",
        CA,
        {"step": "switched", "label": "k1"},
        replace(SEEN, pending=[]),
        RETIRE,
        "key rollover c to 'k1': every service has the new key; the old one is retired",
        "done",
    ),
    (
        "ACME retiring interrupted",
        ACME,
        {"step": "retiring", "label": "k1"},
        SEEN,
        RETIRE,
        "key rollover c to 'k1': resuming step 2 (it stopped at 'retiring')",
        "done",
    ),
]


@pytest.mark.parametrize(
    ("kind", "state", "seen", "action", "text", "saves"),
    [row[1:] for row in ROWS],
    ids=[row[0] for row in ROWS],
)
def test_plan(
    kind: str,
    state: dict[str, Any],
    seen: Seen,
    action: str,
    text: str,
    saves: str | None,
) -> None:
    step = rollover.plan(kind, state, seen)
    assert (step.action, step.text("c"), step.saves) == (action, text, saves)


def test_the_switch_waits_out_what_is_left_and_checks_first() -> None:
    step = rollover.plan(CA, PUBLISHED, replace(SEEN, wait=45))
    assert (step.action, step.left, step.gate) == (SWITCH, 41, True)
    resumed = rollover.plan(ACME, {**PUBLISHED, "step": "switching"}, SEEN)
    assert (resumed.action, resumed.gate) == (SWITCH, False), "checked before it stopped"
    assert rollover.GATE_PASSED[ACME] == "switching"


def test_a_run_may_go_on_to_step_two_when_its_wait_covers_the_ttl() -> None:
    assert rollover.plan(ACME, {}, replace(SEEN, asked="k", wait=60)).then_switch
    assert not rollover.plan(ACME, {}, replace(SEEN, asked="k", wait=59)).then_switch
    # A CA-issued certificate's next record joins the zone with the next run's DNS deploy.
    assert not rollover.plan(CA, {}, replace(SEEN, asked="k", wait=600)).then_switch


def test_every_stored_step_is_known_and_leads_somewhere() -> None:
    for kind, steps in rollover.STEPS.items():
        for step in steps:
            assert rollover.active(kind, {"step": step})
            planned = rollover.plan(kind, {"step": step, "label": "k"}, replace(SEEN, pending=[]))
            assert planned.action != REFUSE
            assert planned.saves is None or planned.saves in (*steps, "done")
        assert not rollover.active(kind, {"step": "done"})
    assert set(rollover.ACTIVE_STEPS) == {*rollover.STEPS[CA], *rollover.STEPS[ACME]}


@pytest.mark.parametrize(
    ("step", "refusal"),
    [
        ("starting", ""),
        ("published", ""),
        ("switching", "nothing to abort (step: switching)"),
        ("switched", "nothing to abort (step: switched)"),
        ("done", "nothing to abort (step: done)"),
        (None, "nothing to abort (step: none)"),
    ],
)
def test_only_a_rollover_before_its_switch_can_be_aborted(step: str | None, refusal: str) -> None:
    assert rollover.abort_refusal(ACME, {"step": step}) == refusal
