"""Which lab test modules run in the twin lab (``lab/twin.py``) during ``make test``.

The lab modules run in two labs side by side: the modules of ``TWIN`` in the twin, every other
one in the first lab. Each lab is a whole lab (its own DNS primary, ACME server and hosts), so a
module may go to either; the split only balances the time. A module's time is mostly its waits
(DNS propagation, certbot, TTLs), so two labs on two cores take about half as long as one.

The first lab keeps the down/up round trip (``test_lab.py``), which must come first in it.
Within a lab the modules run in name order, and the first lab's keep the order they had in the
one lab: ``test_acme.py`` reissues web1's certificate with ``deploys/acme.py`` alone (a new key,
its TLSA record not yet published, nginx not yet given it) and ``test_http01_admin.py``'s
deploy converges web1 again before ``test_inplace.py`` and ``test_site.py`` expect it converged
(moving ``test_http01_admin.py`` to the twin made both fail).
Figures: seconds per module with the whole suite in one lab, from ``pytest -m lab
--durations=0`` (issue 13's notes); the modules left in the first lab add up to about 320 s,
these to about 260 s. Each lab's first module also pays for ``lab/site.py``'s first deploy
(about 40 s), and the twin starts later when it must first copy the images (about 35 s).

``python -m tests.lab.shards main|twin`` prints one lab's module files, for scripts/test.sh.
"""

from __future__ import annotations

import sys
from pathlib import Path

LAB_TESTS = Path(__file__).resolve().parent

#: Modules for the twin lab, with their measured seconds.
TWIN = {
    "test_rollover.py": 109,
    "test_rollover_kills.py": 63,
    "test_coexist.py": 36,
    "test_dns_rotation.py": 17,
    "test_stranger.py": 13,
    "test_pki_import.py": 10,
    "test_ha_pair.py": 9,
}


def modules() -> list[str]:
    """Every lab test module, by file name."""
    return sorted(path.name for path in LAB_TESTS.glob("test_*.py"))


def shard(name: str) -> list[str]:
    """The module files (relative to the repository root) of one lab: ``main`` or ``twin``."""
    if name not in ("main", "twin"):
        raise ValueError(f"no shard {name!r}: main or twin")
    chosen = [m for m in modules() if (m in TWIN) == (name == "twin")]
    return [f"tests/lab/{m}" for m in chosen]


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("main", "twin"):
        print("usage: python -m tests.lab.shards main|twin", file=sys.stderr)
        sys.exit(2)
    print(" ".join(shard(sys.argv[1])))
