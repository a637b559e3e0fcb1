"""Operations that put certificate files into services and notify them (through the host's
delivery agent, ``pkinfra.agent.delivery``, which certbot's deploy hook runs on renewals too;
``system.agent`` installs it).
"""

from __future__ import annotations

import hashlib

from pyinfra import host
from pyinfra.api import operation

from operations import system
from operations.context import announce
from operations.facts import DeliveryPlan, FileDigest
from operations.util import q, upload_atomic
from pkinfra.agent import paths

HOOK_SCRIPT = (
    "#!/bin/sh\n# pkinfra: deliver renewed certificates into services (certbot deploy hook)\n"
    f"exec python3 {paths.DELIVERY_AGENT} --mapping {paths.SERVICES_MAPPING}\n"
).encode()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _upload(path: str, data: bytes, mode: str):
    """Upload a (non-secret) file written beside then renamed, when its hash or mode differ."""
    have = host.get_fact(FileDigest, path=path)
    if isinstance(have, dict) and have["sha256"] == _sha(data) and have["mode"] == mode:
        return False, []
    return True, upload_atomic(path, data, mode, "root", "root")


@operation()
def delivered(mapping: str, deploy_hook: bool = False, after_change: bool = False):
    """
    Ensure every service of the host has its certificate files, then notify each changed one.

    + mapping: the host's mapping (``pkinfra.services.mapping_json``): paths, owners, modes,
      sources and how to notify; no secret
    + deploy_hook: also install certbot's deploy hook, so renewals deliver by themselves
    + after_change: only run the delivery (no uploads, no plan): for use with
      ``_if=certificate_changed()``, when an earlier operation of this run changed a
      certificate that the plan, read before the run, could not see

    **Example:**

    .. code:: python

        services.delivered(mapping=mapping_json(inventory, spec), deploy_hook=True)
    """
    if after_change:
        announce("services: a certificate changed in this run; delivering it")
        yield f"python3 {q(paths.DELIVERY_AGENT)} --mapping {q(paths.SERVICES_MAPPING)}"
        return
    commands = []
    reasons = []
    # system.agent (earlier in the run) installs it: the plan would run the old agent.
    agent_changed = bool(system.agent_changes()[0])
    if agent_changed:
        reasons.append("delivery agent installed or updated")
    map_changed, cmds = _upload(paths.SERVICES_MAPPING, mapping.encode(), "0644")
    commands += cmds
    if map_changed:
        reasons.append("mapping changed")
    if deploy_hook:
        hook_changed, cmds = _upload(paths.DELIVERY_DEPLOY_HOOK, HOOK_SCRIPT, "0755")
        commands += cmds
        if hook_changed:
            reasons.append("certbot deploy hook installed")

    plan = (
        None
        if agent_changed
        else host.get_fact(DeliveryPlan, agent=paths.DELIVERY_AGENT, mapping=mapping)
    )
    deliver = agent_changed or plan is None
    for svc in (plan or {}).get("services", []):
        if svc.get("changed"):
            reasons.append(f"{svc['name']}: {len(svc['changed'])} file(s) to write")
            deliver = True
        if svc.get("change"):
            # Held: the delivery asks the gate, which may let it through.
            then = "" if svc.get("held") else "; will notify"
            reasons.append(f"{svc['name']}: {svc['change']}{then}")
            deliver = True
        if svc.get("pending"):
            reasons.append(f"{svc['name']}: notification pending from an earlier run")
            deliver = True
        if svc.get("held"):
            reasons.append(f"{svc['name']}: held ({svc['held']})")
        if svc.get("error"):
            reasons.append(f"{svc['name']}: {svc['error']}")
            deliver = True
    if plan is None and not agent_changed:
        reasons.append("delivery agent missing")
    if agent_changed:
        reasons.append("every service is checked after the agent install")

    if not commands and not deliver:
        host.noop("services: every file in place, nothing pending")
        return
    if reasons:
        announce("services: " + "; ".join(reasons))
    yield from commands
    if deliver:
        yield f"python3 {q(paths.DELIVERY_AGENT)} --mapping {q(paths.SERVICES_MAPPING)}"
