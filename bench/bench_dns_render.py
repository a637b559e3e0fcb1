"""Benchmark of the DNS rendering: every server's config and zone for a large inventory.

Prints the figures and writes them to bench/results/dns_render.json. Run from the repository
root:

    .venv/bin/python bench/bench_dns_render.py [--hosts 1000]
    .venv/bin/python -m bench dns_render

The inventory: `--hosts` hosts in example.test, each with an address, an ACME DNS-01
certificate for two names and a TLSA publication on port 25 (three delegated names each), one
primary and two secondaries. The figure is `pkinfra.zones.render_site` (named.conf pieces of
every server, the main zones with their CNAMEs, the update-policy grants, the shadow zone), the
best of five rounds; loading and validating the inventory is timed apart.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jinja2

from pkinfra import zones
from pkinfra.model import Inventory, load

RESULTS = Path(__file__).resolve().parent / "results" / "dns_render.json"
TARGET_S = 2.0


def synthetic_groups(hosts: int) -> dict[str, Any]:
    servers = [
        (f"ns{i}", {"fqdn": f"ns{i}.example.test", "address": f"10.0.0.{i}"}) for i in (1, 2, 3)
    ]
    members = []
    for i in range(hosts):
        fqdn = f"h{i}.example.test"
        members.append(
            (
                f"h{i}",
                {
                    "fqdn": fqdn,
                    "address": f"10.{1 + i // 65536}.{(i // 256) % 256}.{i % 256}",
                    "certificates": [
                        {
                            "name": "mail",
                            "names": [fqdn, f"alt{i}.example.test"],
                            "issuer": "acme",
                            "challenge": "dns-01",
                        }
                    ],
                    "tlsa": [{"port": 25, "certificate": "mail"}],
                },
            )
        )
    return {"dns": servers, "hosts": members}


SETTINGS = {
    "zones": [{"name": "example.test"}, {"name": "unsigned.test", "signed": False}],
    "shadow_zone": {"name": "shadow.test"},
    "dns": {
        "primary": "ns1.example.test",
        "secondaries": ["ns2.example.test", "ns3.example.test"],
    },
    "acme": {"directory": "https://acme.example.test/dir"},
}


def best_of(rounds: int, work: Any) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(rounds):
        start = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: Sequence[str] = ()) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(list(argv))

    groups = synthetic_groups(args.hosts)
    load_s, inventory = best_of(3, lambda: load(Path.cwd(), groups, {"all": dict(SETTINGS)}))
    assert isinstance(inventory, Inventory)
    render_s, site = best_of(5, lambda: zones.render_site(inventory))
    assert isinstance(site, zones.Site)
    delegations = len(inventory.all_delegations())
    sizes = {
        "named_conf_local_primary_bytes": len(site.primary.config[zones.Layout().config_file]),
        "main_zone_bytes": len(site.primary.zones[0].text),
        "grants": site.primary.config[zones.Layout().config_file].count("\t\tgrant "),
    }
    results: dict[str, Any] = {
        "hosts": args.hosts,
        "delegated_names": delegations,
        "render_seconds": render_s,
        "load_and_validate_seconds": load_s,
        **sizes,
        "targets": {"render_seconds_max": TARGET_S, "met": render_s < TARGET_S},
        "environment": {
            "python": platform.python_version(),
            "jinja2": jinja2.__version__,
            "machine": platform.machine(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"render_site for {args.hosts} hosts x 3 delegated names ({delegations} names, "
        f"{sizes['grants']} grants): {render_s:.3f} s (inventory load + validation "
        f"{load_s:.3f} s); main zone {sizes['main_zone_bytes'] / 1e3:.0f} kB, "
        f"primary named.conf.local {sizes['named_conf_local_primary_bytes'] / 1e3:.0f} kB"
    )
    print(f"target < {TARGET_S:g} s: {'met' if results['targets']['met'] else 'MISSED'}")
    print(f"written {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
