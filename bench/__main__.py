"""Run every benchmark (``python -m bench [NAME ...]``); each prints its figures and writes
``bench/results/<name>.json``.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = argv or sorted(p.stem.removeprefix("bench_") for p in here.glob("bench_*.py"))
    failed = []
    for name in names:
        print(f"== bench {name}", flush=True)
        start = time.monotonic()
        module = importlib.import_module(f"bench.bench_{name}")
        try:
            module.main()
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            print(f"bench {name}: failed: {exc}", file=sys.stderr)
            failed.append(name)
        print(f"== bench {name}: {time.monotonic() - start:.1f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
