"""The Docker lab: test hosts for pkinfra on one internal network (`python -m lab up|down|status`).

`up()`, `down()` and `status()` are the whole API; addresses, names and paths live in
`lab.topology`.
"""

from __future__ import annotations

from lab.engine import LabError
from lab.lifecycle import HostStatus, LabStatus, down, status, up

__all__ = ["HostStatus", "LabError", "LabStatus", "down", "status", "up"]
