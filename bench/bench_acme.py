"""Benchmark: DNS-01 issuance wall time in the lab, pkinfra's hook against stock certbot.

Prints the figures and writes them to bench/results/acme.json. Needs the lab deployed
(deploys/site.py). Run from the repository root:

    .venv/bin/python bench/bench_acme.py [--runs 5] [--stock-runs 1]

Each run is one complete ``certbot certonly --force-renewal`` on mx1 against the lab's Pebble,
in a throw-away certbot configuration (its account registered once, untimed), so mx1's own
lineage is untouched:

- pkinfra: ``mx1.example.test`` + ``mail.example.test`` through their ``_acme-challenge`` CNAMEs
  into the shadow zone, with pkinfra's hook (CNAME following, RFC 2136 with mx1's TSIG key, wait
  for every authoritative server and the host's resolver);
- stock: ``certbot --dns-rfc2136`` at its default settings (60 s propagation sleep) for
  ``mx1.example.test.shadow.test``, a name whose challenge owner mx1's key may update directly
  (stock certbot cannot follow a CNAME). The lab has no separate benchmark zone: the shadow zone
  stands in for it. The plugin's credentials file is written on mx1 from mx1's key file, 0600,
  and removed afterwards; the secret is never printed. It uses the account the pkinfra series
  registered, so its first run is timed too; its runs are spaced by 125 s (its TXT TTL is a
  fixed 120 s: sooner, the ACME server's resolver still has the previous value and the
  validation fails).

Runs are spaced by ``--gap`` seconds (untimed). The figure is the wall time of the ``docker
exec``, certbot's start-up included; the host's load average is recorded beside it (the lab
shares the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Untimed pause between runs: the challenge TTL (5 s in the lab) plus one. Back to back, a
#: run's hook would wait for the resolver to drop the previous run's value (correct, and what
#: the renewal test exercises), which a real issuance, weeks after the last, never does.
GAP = 6.0
#: Between stock runs: the plugin publishes its TXT with a fixed TTL of 120 s, so a second
#: issuance sooner than that is validated against the first one's cached value and fails.
STOCK_GAP = 125.0
RESULTS = Path(__file__).resolve().parent / "results" / "acme.json"
CONTAINER = "pkinfra-mx1"
SERVER = "https://acme.example.test:14000/dir"
PRIMARY = "172.29.53.10"
HOOK = "/usr/local/bin/pkinfra-certbot-hook"
BASE = "/tmp/pkinfra-bench-acme"
COMMON = (
    "certbot certonly --non-interactive --agree-tos --register-unsafely-without-email"
    f" --config-dir {BASE}/etc --work-dir {BASE}/work --logs-dir {BASE}/log --server {SERVER}"
    " --key-type ecdsa --force-renewal"
)
PKINFRA = (
    f"{COMMON} --cert-name bench --manual --preferred-challenges dns"
    f" --manual-auth-hook '{HOOK} auth' --manual-cleanup-hook '{HOOK} cleanup'"
    " -d mx1.example.test -d mail.example.test"
)
STOCK = (
    f"{COMMON} --cert-name bench-stock --dns-rfc2136"
    f" --dns-rfc2136-credentials {BASE}/rfc2136.ini -d mx1.example.test.shadow.test"
)
# The plugin's credentials from mx1's key file, written 0600 on the host; nothing is printed.
CREDENTIALS = (
    f"umask 077 && mkdir -p {BASE} && k=/etc/pkinfra/tsig.key"
    " && s=$(sed -n 's/.*secret \"\\(.*\\)\".*/\\1/p' $k)"
    " && n=$(sed -n 's/key \"\\(.*\\)\".*/\\1/p' $k)"
    f" && printf 'dns_rfc2136_server = {PRIMARY}\\ndns_rfc2136_port = 53\\n"
    "dns_rfc2136_name = %s\\ndns_rfc2136_secret = %s\\ndns_rfc2136_algorithm = HMAC-SHA256\\n'"
    f' "$n" "$s" > {BASE}/rfc2136.ini'
)


def sh(command: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "exec", CONTAINER, "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def timed(command: str, what: str) -> float:
    started = time.monotonic()
    run = sh(command)
    took = time.monotonic() - started
    if run.returncode != 0:
        tail = "\n".join((run.stdout + run.stderr).splitlines()[-8:])
        raise RuntimeError(f"{what} failed after {took:.1f} s:\n{tail}")
    return took


def series(command: str, runs: int, what: str, gap: float, warm_up: bool) -> list[float]:
    if warm_up:  # registers the account; untimed
        timed(command, f"{what} (warm-up)")
    result = []
    for i in range(runs):
        if warm_up or i:
            time.sleep(gap)
        took = timed(command, f"{what} run {i + 1}")
        result.append(round(took, 2))
        print(f"  {what} run {i + 1}: {took:.1f} s", flush=True)
    return result


def main(argv: Sequence[str] = ()) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stock-runs", type=int, default=1)
    parser.add_argument("--gap", type=float, default=GAP)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(list(argv))

    results: dict[str, Any] = {
        "load_before": os.getloadavg(),
        "gap_s": args.gap,
        "stock_gap_s": STOCK_GAP,
    }
    sh(f"rm -rf {BASE}")
    try:
        ours = series(PKINFRA, args.runs, "pkinfra hook", args.gap, warm_up=True)
        results["pkinfra"] = {"runs": ours, "median_s": statistics.median(ours)}
        if args.stock_runs > 0:
            if sh(CREDENTIALS).returncode != 0:
                raise RuntimeError("cannot write the rfc2136 credentials on mx1")
            try:
                stock = series(
                    STOCK, args.stock_runs, "stock certbot --dns-rfc2136", STOCK_GAP, False
                )
            except RuntimeError as exc:
                # Reported beside our figure rather than hiding it.
                results["stock_rfc2136"] = {"error": str(exc).splitlines()[0]}
                print(f"  {exc}", flush=True)
            else:
                median = statistics.median(stock)
                results["stock_rfc2136"] = {"runs": stock, "median_s": median}
                results["ratio_stock_to_pkinfra"] = round(median / statistics.median(ours), 1)
    finally:
        sh(f"rm -rf {BASE}")
    results["load_after"] = os.getloadavg()
    print(f"DNS-01 issuance, pkinfra hook: median {results['pkinfra']['median_s']:.1f} s")
    if "ratio_stock_to_pkinfra" in results:
        print(
            f"DNS-01 issuance, stock certbot --dns-rfc2136: median"
            f" {results['stock_rfc2136']['median_s']:.1f} s"
            f" (x{results['ratio_stock_to_pkinfra']})"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
