"""Services that read their certificate where it lives, and the delivery's crash and pidfile
faults, on real hosts.

Two lab/tlsd.py daemons stand in for such services: on web1 one reads the ACME lineage in
certbot's ``live/`` directory and reloads on SIGUSR1; on db1 one reads pkinfra's directory of
the CA-issued ``postgres`` certificate and reloads on SIGUSR2. What each serves is read over TLS
from the controller; what each was told, from its log. The inventory is the lab's, with the two
in-place services added (a copy in a temporary directory); the lab's own services are put back
at the end.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from pkinfra.agent import delivery
from tests.lab.run import CLEAN_ENV, limits, pyinfra_output, sh
from tests.lab.tlsd_host import DB1, PROCESS, WEB1, Tlsd, in_place, inventory_with

ROOT = Path(__file__).resolve().parents[2]
CLEAN = " ".join(CLEAN_ENV)

HOSTS = {"web": WEB1, "db": DB1}

pytestmark = pytest.mark.lab


def run(inventory: Path, deploys: str, groups: tuple[str, ...], ok: bool = True) -> str:
    return pyinfra_output(
        *deploys.split(), *limits(*groups), inventory=inventory, timeout=600, ok=ok, tail=6000
    )


def renew(container: str, lineage: str, *env: str, force: bool = True) -> str:
    """certbot alone on the host, as its timer runs it (its deploy hook delivers)."""
    flag = " --force-renewal" if force else ""
    variables = "".join(f" {pair}" for pair in env)
    done = sh(container, f"{CLEAN}{variables} certbot renew --cert-name {lineage}{flag}")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    return out


@pytest.fixture(scope="module")
def inplace(site_deployed: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Both daemons running and known to the delivery agents (a run told each once)."""
    for tlsd in HOSTS.values():
        tlsd.stop(forget=True)  # never seen by the agent (an earlier session in this lab)
        tlsd.start()
    inventory = inventory_with(
        tmp_path_factory.mktemp("inplace"),
        {"web": [in_place(WEB1, "web")], "db": [in_place(DB1, "postgres")]},
    )
    out = run(inventory, "deploys/services.py", ("web", "db"))
    # The first sighting tells the service once (README: it cannot know what was loaded).
    for tlsd in HOSTS.values():
        assert tlsd.wait_reloads(1) == 1, f"{tlsd.lines()}\n{out[-5000:]}"
    yield inventory
    for tlsd in HOSTS.values():
        tlsd.stop(forget=True)
    run(ROOT / "inventory.py", "deploys/pki.py deploys/services.py", ("web", "db"))


def test_acme_certificate_read_in_place_follows_certbot_alone(inplace: Path) -> None:
    before = WEB1.served().serial_number
    assert before == WEB1.file_serial()
    told = WEB1.reloads()

    renew("pkinfra-web1", "web")
    renewed = WEB1.file_serial()
    assert renewed != before
    WEB1.wait_serving(renewed)
    assert WEB1.reloads() == told + 1, WEB1.lines()
    assert all("USR1" in line for line in WEB1.lines()), WEB1.lines()

    # Nothing new: certbot renews nothing, a run finds nothing to tell.
    out = renew("pkinfra-web1", "web", force=False)
    assert "not yet due" in out or "No renewals" in out, out[-2000:]
    run(inplace, "deploys/services.py", ("web",))
    time.sleep(0.5)
    assert WEB1.reloads() == told + 1, WEB1.lines()
    assert WEB1.served().serial_number == renewed


def test_ca_certificate_read_in_place_follows_a_reissue(inplace: Path, tmp_path: Path) -> None:
    before = DB1.served().serial_number
    assert before == DB1.file_serial()
    told = DB1.reloads()
    # One more name: the run reissues the certificate (same key) into pkinfra's directory.
    inventory = inventory_with(tmp_path, {"db": [in_place(DB1, "postgres")]})
    original = '{"name": "postgres", "names": ["db1.example.test"], "issuer": "duckcorp"}'
    text = inventory.read_text()
    assert original in text
    inventory.write_text(
        text.replace(original, original.replace('["db1.example.test"]', NAMES_WITH_ALIAS))
    )
    out = run(inventory, "deploys/pki.py deploys/services.py", ("db",))
    assert "names changed" in out, out[-3000:]
    reissued = DB1.file_serial()
    assert reissued != before
    DB1.wait_serving(reissued)
    assert DB1.reloads() == told + 1, DB1.lines()
    names = DB1.served().extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert "postgres.example.test" in names.value.get_values_for_type(x509.DNSName)

    run(inventory, "deploys/pki.py deploys/services.py", ("db",))
    time.sleep(0.5)
    assert DB1.reloads() == told + 1, "a run that changes nothing tells nobody"
    assert all("USR2" in line for line in DB1.lines()), DB1.lines()


NAMES_WITH_ALIAS = '["db1.example.test", "postgres.example.test"]'


def served_by_nginx() -> int:
    return Tlsd("pkinfra-web1", "172.29.53.20", 443, "", "", "HUP").served().serial_number


def pair_matches(container: str, cert: str, key: str) -> bool:
    check = sh(
        container,
        f'[ "$(openssl x509 -in {cert} -noout -pubkey | openssl pkey -pubin -outform DER'
        f' | sha256sum)" = "$(openssl pkey -in {key} -pubout -outform DER | sha256sum)" ]',
    )
    return check.returncode == 0


#: The steps of a renewal's copy to nginx on web1: the renewal keeps the key (DANE), so only the
#: certificate file changes and is renamed (the key's switch is the rollover tests' part).
NGINX_STEPS = ["staged", "marked", "renamed-1", "checked", "notified", "cleared"]


def test_a_kill_at_every_step_of_a_renewal_delivery_is_made_good(inplace: Path) -> None:
    """certbot's deploy hook is killed (-9, by the agent's test-only fault hook) at each step
    of delivering web1's renewed certificate to nginx: the files are never a key without its
    certificate, and the next run tells nginx, which then serves the renewed certificate."""
    crt, key = "/etc/nginx/tls/web.crt", "/etc/nginx/tls/web.key"
    for step in NGINX_STEPS:
        out = renew("pkinfra-web1", "web", f"{delivery.CRASH_VARIABLE}=test-only:{step}")
        renewed = WEB1.file_serial()
        assert pair_matches("pkinfra-web1", crt, key), f"{step}: key and certificate differ"
        assert "reported error code 137" in out, f"{step}: the hook was not killed: {out[-2000:]}"
        pending = sh("pkinfra-web1", "ls /var/lib/pkinfra/pending/ 2>/dev/null").stdout.split()
        copied = WEB1.file_serial(crt)
        if copied == renewed and step not in ("cleared",):
            assert "nginx" in pending, f"{step}: new files, nginx not told, nothing pending"
        again = run(inplace, "deploys/services.py", ("web",))
        assert WEB1.file_serial(crt) == renewed, f"{step}: {again[-2000:]}"
        assert pair_matches("pkinfra-web1", crt, key)
        assert "nginx" not in sh("pkinfra-web1", "ls /var/lib/pkinfra/pending/").stdout.split()
        deadline = time.monotonic() + 10
        while served_by_nginx() != renewed and time.monotonic() < deadline:
            time.sleep(0.2)
        assert served_by_nginx() == renewed, f"{step}: nginx was not told"
    WEB1.wait_serving(WEB1.file_serial())


def test_a_fifo_or_a_foreign_pid_as_pidfile_neither_hangs_nor_signals(
    inplace: Path, tmp_path: Path
) -> None:
    """A FIFO as pidfile, and a pidfile naming another process (a pid reused by ``sleep``):
    certbot's hook and the run end in bounded time, say why for each, send nothing, and the
    other services on the host are still told."""
    fifo, foreign = "/run/lab-fifo.pid", "/run/lab-foreign.pid"
    made = sh(
        "pkinfra-web1",
        f"rm -f {fifo} {foreign} && mkfifo -m 0600 {fifo}"
        f" && (setsid sleep 600 >/dev/null 2>&1 & echo $! > {foreign}) && cat {foreign}",
    )
    assert made.returncode == 0, made.stderr
    sleeper = made.stdout.strip()
    bad: list[dict[str, object]] = [
        {"name": "fifo", "certificate": "web", "notify": {"signal": "HUP", "pidfile": fifo}},
        {
            "name": "foreign",
            "certificate": "web",
            "notify": {"signal": "HUP", "pidfile": foreign, "process": PROCESS},
        },
    ]
    inventory = inventory_with(tmp_path, {"web": [in_place(WEB1, "web"), *bad]})
    try:
        began = time.monotonic()
        out = run(inventory, "deploys/services.py", ("web",), ok=False)
        assert time.monotonic() - began < 120
        assert fifo in out and "regular file" in out, out[-3000:]
        assert foreign in out and f"pid {sleeper}" in out, out[-3000:]

        told = WEB1.reloads()
        began = time.monotonic()
        renew("pkinfra-web1", "web")
        assert time.monotonic() - began < 120
        WEB1.wait_serving(WEB1.file_serial())
        assert WEB1.reloads() == told + 1
        alive = sh("pkinfra-web1", f"kill -0 {sleeper}")
        assert alive.returncode == 0, "the foreign process was signalled (SIGHUP ends sleep)"
        pending = sh("pkinfra-web1", "ls /var/lib/pkinfra/pending/").stdout.split()
        assert {"fifo", "foreign"} <= set(pending), pending
    finally:
        sh("pkinfra-web1", f"kill {sleeper}; rm -f {fifo} {foreign}")
        sh(
            "pkinfra-web1",
            "rm -f /var/lib/pkinfra/pending/fifo /var/lib/pkinfra/pending/foreign"
            " /var/lib/pkinfra/served/fifo.json /var/lib/pkinfra/served/foreign.json",
        )
