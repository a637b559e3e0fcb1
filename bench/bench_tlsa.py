"""TLSA records of CA-issued certificates from a CA store of 10,000 certificates.

Prints the figures and writes bench/results/tlsa.json. Target: < 1 s for the records of every
TLSA publication (one per certificate) from a 10,000-certificate store.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from bench.bench_ca import PASS, build_large_store
from pkinfra import ca
from pkinfra.model import load
from pkinfra.publication import ca_tlsa_records

RECORDS = 10_000
HOSTS = 500
OUT = Path(__file__).parent / "results" / "tlsa.json"


def inventory_for(base: Path) -> object:
    """500 hosts, each with the 20 certificates of the store and a TLSA publication for each."""
    hosts = []
    for h in range(HOSTS):
        certs = [
            {"name": f"c{i}", "names": [f"h{i}.example.test"], "issuer": "bench"}
            for i in range(h, RECORDS, HOSTS)
        ]
        tlsa = [
            {"port": 443, "name": f"h{c['name'][1:]}.example.test", "certificate": c["name"]}
            for c in certs
        ]
        hosts.append((f"h{h}", {"fqdn": f"h{h}", "certificates": certs, "tlsa": tlsa}))
    settings = {
        "zones": [{"name": "example.test"}],
        "shadow_zone": {"name": "shadow.test"},
        "dns": {"primary": "h0"},
        "cas": {"bench": {"passphrase": {"env": "UNUSED"}}},
    }
    return load(base, {"bench": hosts}, {"all": settings})


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        store = ca.CAStore(base / "pki")
        store.create_root("bench", key_type="ec-p256", passphrase=PASS)
        built = build_large_store(store, "bench", RECORDS)
        start = time.perf_counter()
        inventory = inventory_for(base)
        loaded = time.perf_counter() - start
        timings = []
        for _ in range(3):
            start = time.perf_counter()
            records, missing = ca_tlsa_records(inventory, ca.CAStore(base / "pki"))  # type: ignore[arg-type]
            timings.append(time.perf_counter() - start)
        assert len(records) == RECORDS and not missing, (len(records), len(missing))
    result = {
        "certificates": RECORDS,
        "publications": RECORDS,
        "store_build_s": round(built, 2),
        "inventory_load_s": round(loaded, 2),
        "tlsa_records_s": [round(t, 3) for t in timings],
        "target_s": 1.0,
    }
    print(
        f"TLSA 3 1 1 for {RECORDS} publications from a {RECORDS}-certificate store: "
        f"best {min(timings):.3f} s (runs {', '.join(f'{t:.3f}' for t in timings)}; "
        f"target < 1 s); inventory of {HOSTS} hosts loaded in {loaded:.2f} s"
    )
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
