"""The key rollover without a DANE gap, described once: state + observations -> next step, why.

RFC 7671: the TLSA RRset must always hold a record that matches the certificate being served.
So a rollover goes, for a CA-issued and an ACME certificate alike:

1. ``BEGIN``: note the current key (its record stays published until the end) and the label;
2. ``PUBLISH``: the next key exists, and every authoritative server serves the records of both
   keys; note since when;
3. ``WAIT`` until the next record has been served for at least the TTL (no cache still holds an
   RRset without it), then ``SWITCH``: check once more that it is served, and replace the live
   key and certificate by the next ones in one atomic step (``pkinfra.switch``);
4. ``DELIVER``: every service of the certificate has the new files and has been told;
5. ``RETIRE``: the old key's record goes (and what held the next key beside the live one).

Two carry it out: the controller for a CA-issued certificate (``operations/pki.py``: the CA key
is there) and the host's agent for an ACME certificate (``pkinfra/agent/rollover.py``, driven by
``operations/dane.py``). Each keeps the state in ``/etc/pkinfra/rollover/<certificate>.json``
under its own step names (``STEPS``: the files on hosts and ``pkinfra status`` know them); a
stored step names what comes next. ``plan`` turns the state and what the caller observed into
the next step and its reason; the callers only carry steps out and store ``Step.saves``.

Standard library only: the agent imports this on hosts (Debian 12 and 13 python3).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: The kinds of certificate, by who carries their rollover out.
CA, ACME = "ca", "acme"

# What comes next (``Step.action``).
NOTHING = "nothing"  # no rollover asked, or it is done: the reason says which
REFUSE = "refuse"  # the state does not allow going on: the reason says why
BEGIN = "begin"  # step 1: note the current key and the label
PUBLISH = "publish"  # step 1: the next key, both records served everywhere, noted when
WAIT = "wait"  # step 2 is not due yet (the TTL, or a service still owed the new files)
SWITCH = "switch"  # step 2: the next key and its certificate replace the live pair
DELIVER = "deliver"  # step 2: every service has the new files and has been told
RETIRE = "retire"  # step 2: the old key's record goes

#: Each kind's stored step names, and what comes next at each.
STEPS: dict[str, dict[str, str]] = {
    CA: {"issued": PUBLISH, "published": SWITCH, "switched": DELIVER},
    ACME: {
        "starting": PUBLISH,
        "published": SWITCH,
        "switching": SWITCH,
        "switched": DELIVER,
        "retiring": RETIRE,
    },
}
#: The step each kind stores once an action has been carried out.
SAVES: dict[str, dict[str, str]] = {
    CA: {BEGIN: "issued", PUBLISH: "published", SWITCH: "switched", RETIRE: "done"},
    ACME: {
        BEGIN: "starting",
        PUBLISH: "published",
        SWITCH: "switched",
        DELIVER: "retiring",
        RETIRE: "done",
    },
}
#: The step the agent stores once the last check before the switch has passed: a rerun then
#: switches without waiting and checking again (the controller switches in the same command).
GATE_PASSED: dict[str, str | None] = {CA: None, ACME: "switching"}
#: Every stored step of a rollover in progress, of either kind.
ACTIVE_STEPS: tuple[str, ...] = tuple(dict.fromkeys([*STEPS[CA], *STEPS[ACME]]))


@dataclass(frozen=True)
class Seen:
    """What the caller observed (a field it cannot know keeps its default)."""

    #: The label asked for (the inventory's ``rollover``, or ``start --label``); None: none.
    asked: str | None = None
    #: The operator asks for ``asked`` now, by a command (``pkinfra-rollover start``): an aborted
    #: rollover of that label begins again, and another one in progress is refused.
    explicit: bool = False
    #: The host's clock (unix time), the TLSA TTL, how long the caller may wait for step 2 now.
    now: float = 0.0
    ttl: float = 0.0
    wait: float = 0.0
    #: The certificate has a key to roll over from (a new host's first key comes with the run).
    old_key: bool = True
    #: The next key exists (CA: the run's ``certificate`` operation for ``next_dir`` makes it).
    next_key: bool = True
    #: Where the next key and certificate are made (CA; in the reason only).
    next_dir: str = ""
    #: The services still owed the new files; None: not known (the delivery finds out).
    pending: Sequence[str] | None = None


@dataclass(frozen=True)
class Step:
    """What comes next, why, and what to store once it is done."""

    action: str
    reason: str
    #: The rollover's label: the one in progress, or the one to begin; None when idle.
    label: str | None = None
    #: ``WAIT``: seconds until step 2; ``SWITCH``: seconds to hold before the last check.
    left: float = 0.0
    #: ``SWITCH``: check that every authoritative server serves the next record (after ``left``).
    gate: bool = False
    #: ``BEGIN``/``PUBLISH``: this run may wait out the TTL and go on with step 2.
    then_switch: bool = False
    #: The step to store once this is carried out (None: nothing to store).
    saves: str | None = None

    def text(self, certificate: str) -> str:
        """The operator's line: ``key rollover NAME[ to 'LABEL']: reason``."""
        to = f" to '{self.label}'" if self.label is not None else ""
        return f"key rollover {certificate}{to}: {self.reason}"


#: ``served_since`` is a whole second (``date +%s``, ``int(time.time())``): the next record was
#: first served everywhere up to this much later, and the TTL counts from then.
SERVED_SINCE_RESOLUTION = 1.0


def switch_due(state: Mapping[str, Any], ttl: float) -> float:
    """When step 2 may switch (a Unix time): once the next record has been served everywhere
    for the TTL, counted from the end of the second ``served_since`` names (truncated, it may be
    up to a second early; a cache that took the old set then keeps it for the whole TTL). The
    TTL is the longer of ``ttl`` and the state's ``cached_ttl``: the TTL the set was served
    with before step 1 changed it (an inventory that lowers the TTL does not shorten how long
    caches keep what they already have)."""
    return float(state.get("served_since", 0)) + SERVED_SINCE_RESOLUTION + held_ttl(state, ttl)


def held_ttl(state: Mapping[str, Any], ttl: float) -> float:
    """The TTL step 2 waits for: the longer of ``ttl`` and the state's ``cached_ttl``."""
    return max(ttl, float(state.get("cached_ttl", 0) or 0))


def at(kind: str, state: Mapping[str, Any]) -> str | None:
    """What comes next for a rollover in progress (an action); None when none is."""
    return STEPS[kind].get(str(state.get("step")))


def active(kind: str, state: Mapping[str, Any]) -> bool:
    return at(kind, state) is not None


def plan(kind: str, state: Mapping[str, Any], seen: Seen) -> Step:
    """The next step of ``kind``'s rollover from its stored ``state`` and what was ``seen``."""
    step, label = state.get("step"), state.get("label")
    if step == "unreadable":
        return Step(REFUSE, "the state file on the host is unreadable")
    now = at(kind, state)
    if now is None:
        return _idle(kind, step, label, seen)
    label = str(label)
    if seen.explicit and seen.asked is not None and seen.asked != label:
        return Step(
            REFUSE, f"a rollover to '{label}' is at step '{step}'; finish or abort it first", label
        )
    saves = SAVES[kind].get(now)
    resuming = f"resuming step 2 (it stopped at '{step}')"
    if now == PUBLISH:
        if not seen.next_key:
            return Step(NOTHING, "the next key is made by this run first", label)
        why = (
            "resuming step 1 (it was interrupted)"
            if kind == ACME
            else "checking that every authoritative server serves the next record" + _then(seen)
        )
        return Step(PUBLISH, why, label, then_switch=seen.wait >= seen.ttl, saves=saves)
    if now == SWITCH:
        if step == GATE_PASSED[kind]:
            return Step(SWITCH, resuming, label, saves=saves)
        left = max(0.0, switch_due(state, seen.ttl) - seen.now)
        if left > seen.wait:
            return Step(
                WAIT,
                f"step 2 in {math.ceil(left)} s (the next TLSA record must be served for the "
                "TTL first)",
                label,
                left=left,
            )
        return Step(SWITCH, "step 2 (switch to the next key)", label, left, gate=True, saves=saves)
    if now == DELIVER:
        if seen.pending is None:
            return Step(DELIVER, resuming, label, saves=saves)
        if seen.pending:
            return Step(
                WAIT,
                f"the old key's record stays until {', '.join(sorted(seen.pending))} has been "
                "told (notification pending)",
                label,
            )
        return Step(
            RETIRE,
            "every service has the new key; the old one is retired",
            label,
            saves=SAVES[kind][RETIRE],
        )
    return Step(RETIRE, resuming, label, saves=saves)


def _idle(kind: str, step: Any, label: Any, seen: Seen) -> Step:
    asked = seen.asked
    if asked is None:
        return Step(NOTHING, "none asked")
    if step == "done" and label == asked:
        return Step(NOTHING, f"rolled over to '{asked}'")
    if step == "aborted" and label == asked and not seen.explicit:
        return Step(NOTHING, f"'{asked}' was aborted on the host")
    if not seen.old_key:
        return Step(NOTHING, "waits for the certificate's first key")
    saves = SAVES[kind][BEGIN]
    if kind == CA:
        # The next record joins the zone with the DNS deploy of the next run: no waiting now.
        return Step(
            BEGIN,
            f"step 1: next key and certificate in {seen.next_dir}; its TLSA record joins the "
            "zone with the next run's DNS deploy",
            asked,
            saves=saves,
        )
    return Step(
        BEGIN,
        "step 1 (next key, TLSA for both keys)" + _then(seen),
        asked,
        then_switch=seen.wait >= seen.ttl,
        saves=saves,
    )


def _then(seen: Seen) -> str:
    """What a run that may wait out the TTL adds to a step 1's reason."""
    return f", then step 2 after the TTL ({int(seen.ttl)} s)" if seen.wait >= seen.ttl else ""


def abort_refusal(kind: str, state: Mapping[str, Any]) -> str:
    """'' when the rollover may still be undone (before the switch), else why not."""
    step = state.get("step")
    if at(kind, state) == PUBLISH or (at(kind, state) == SWITCH and step != GATE_PASSED[kind]):
        return ""
    return f"nothing to abort (step: {step or 'none'})"
