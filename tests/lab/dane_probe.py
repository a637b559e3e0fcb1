"""A continuous DANE probe for lab tests: checks services as a remote client would, all along.

While a test changes things (forced renewals, a key rollover), ``DaneProbe`` runs pkinfra's
checker (``pkinfra.dane.check``) against each target every ``interval`` seconds, each target in
its own background thread, through the lab's caching, validating resolver: what a remote MTA
or browser would see, cache included. Every result is recorded (time, target, phase, verdict,
detail); a check that is not VALID is a failure. The summary comes back when the ``with`` block
ends.

**Example:**

    with DaneProbe() as probe:
        with probe.phase("renew mx1"):
            renew("pkinfra-mx1", "mail")
    summary = probe.summary
    print(summary.describe())
    assert summary.failures == []
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType

from pkinfra import dane

RESOLVER = "172.29.53.53"


@dataclass(frozen=True)
class Target:
    """A published service: where to connect, the TLSA base name, STARTTLS dialect."""

    host: str
    port: int
    name: str
    starttls: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name}:{self.port}"


MX1_SMTP = Target("172.29.53.25", 25, "mx1.example.test", "smtp")
WEB1_HTTPS = Target("172.29.53.20", 443, "web1.example.test")
DB1_POSTGRES = Target("172.29.53.30", 5432, "db1.example.test", "postgres")
ACME_TARGETS = (MX1_SMTP, WEB1_HTTPS)


@dataclass(frozen=True)
class Result:
    """One check: seconds since the probe started, what, during which phase, and the answer."""

    at: float
    target: str
    phase: str
    verdict: dane.Verdict
    detail: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.verdict is dane.Verdict.VALID

    def describe(self) -> str:
        return (
            f"{self.at:7.2f}s {self.target} [{self.phase}] {self.verdict.name}"
            f" ({self.seconds:.2f}s): {self.detail}"
        )


@dataclass
class Summary:
    """What the probe saw: every result, the counts by target and verdict, the failures."""

    results: list[Result]
    elapsed: float
    #: per target: number of checks by verdict name
    counts: dict[str, Counter[str]] = field(default_factory=dict)
    failures: list[Result] = field(default_factory=list)
    #: per phase: number of checks
    phases: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, results: Sequence[Result], elapsed: float) -> Summary:
        summary = cls(list(results), elapsed)
        for result in results:
            summary.counts.setdefault(result.target, Counter())[result.verdict.name] += 1
            summary.phases[result.phase] += 1
            if not result.ok:
                summary.failures.append(result)
        return summary

    @property
    def total(self) -> int:
        return len(self.results)

    def checks(self, target: str) -> int:
        return sum(self.counts.get(target, Counter()).values())

    def describe(self) -> str:
        lines = [f"DANE probe: {self.total} checks in {self.elapsed:.1f} s"]
        for target, counts in sorted(self.counts.items()):
            by_verdict = ", ".join(f"{v} {n}" for v, n in sorted(counts.items()))
            lines.append(f"  {target}: {sum(counts.values())} ({by_verdict})")
        lines += [f"  phase {phase}: {n} checks" for phase, n in self.phases.items()]
        lines += [f"  FAILED {r.describe()}" for r in self.failures]
        return "\n".join(lines)


class DaneProbe:
    """Check ``targets`` every ``interval`` seconds in background threads while the block runs.

    + targets: the services to check (default: mx1's SMTP and web1's HTTPS)
    + interval: seconds between the starts of two checks of one target (a check that takes
      longer delays the next one, it is never run twice at once)
    + resolver: the validating resolver the checker asks (the lab's caching unbound)
    + timeout: the checker's timeout per step, seconds

    ``summary`` is set when the block ends; ``snapshot()`` gives one while it runs. The probe
    never raises for a failed check: it records it. ``phase(name)`` labels the results of the
    checks that start inside it, so a failure says what the test was doing.
    """

    def __init__(
        self,
        targets: Sequence[Target] = ACME_TARGETS,
        *,
        interval: float = 0.5,
        resolver: str = RESOLVER,
        timeout: float = 5.0,
    ) -> None:
        if not targets:
            raise ValueError("DaneProbe: no targets")
        if interval <= 0:
            raise ValueError(f"DaneProbe: interval must be positive, not {interval}")
        self.targets = tuple(targets)
        self.interval = interval
        self.resolver = resolver
        self.timeout = timeout
        self.summary: Summary | None = None
        self._results: list[Result] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._phase = "start"
        self._started = 0.0

    def __enter__(self) -> DaneProbe:
        self._started = time.monotonic()
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._run, args=(t,), name=f"dane-probe {t.label}", daemon=True)
            for t in self.targets
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        for thread in self._threads:
            # A check in flight ends within the checker's own timeouts (TLSA lookup + handshake).
            thread.join(timeout=3 * self.timeout + 5)
        self.summary = self.snapshot()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Label the checks that start inside the block with ``name``; ``between`` after it."""
        self._phase = name
        try:
            yield
        finally:
            self._phase = "between"

    def snapshot(self) -> Summary:
        with self._lock:
            results = list(self._results)
        return Summary.of(results, time.monotonic() - self._started)

    def _run(self, target: Target) -> None:
        next_start = time.monotonic()
        while not self._stop.is_set():
            result = self._check(target)
            with self._lock:
                self._results.append(result)
            next_start += self.interval
            delay = next_start - time.monotonic()
            if delay < 0:
                next_start = time.monotonic()  # late: start again now, do not burst to catch up
                delay = 0
            self._stop.wait(delay)

    def _check(self, target: Target) -> Result:
        phase, begin = self._phase, time.monotonic()
        try:
            report = dane.check(
                target.host,
                target.port,
                name=target.name,
                starttls=target.starttls,
                resolver=self.resolver,
                timeout=self.timeout,
            )
        except Exception as exc:  # check() should never raise: record it if it does
            verdict, detail = dane.Verdict.FAILURE, f"the checker raised {exc!r}"
        else:
            verdict, detail = report.verdict, report.summary
            if verdict is not dane.Verdict.VALID and report.lookup is not None:
                records = ", ".join(r.to_text() for r in report.lookup.records) or "none"
                detail += f"; TLSA {report.lookup.status}: {records}"
        seconds = time.monotonic() - begin
        return Result(begin - self._started, target.label, phase, verdict, detail, seconds)
