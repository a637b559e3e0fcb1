"""``kill -9`` at every step of a key rollover's switch on the lab hosts: the live key and
certificate always belong together, and a rerun completes the switch.

The switch kills itself at a named step (``PKINFRA_SWITCH_CRASH_AT=test-only:<step>``, the
test-only fault hook of ``pkinfra.switch``). The kills come one after the other, each run
resuming what the one before left and dying one step further. After each kill a lab/tlsd.py
daemon that reads the live files in place is told to reload (as a service restarted at that
moment would): it must load them and serve the live certificate. A DANE probe watches the
service that gets copies all along; not one check may fail.

- web1, ACME lineage ``web``: ``pkinfra-rollover finish`` killed at each step, then run to the
  end; certbot then renews the lineage as its own (the new key kept).
- db1, CA-issued ``postgres``: the command the rollover operation yields for the switch
  (``pkinfra.install.switch_command``) killed at each step, then the operation's runs to the end.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pkinfra import switch
from pkinfra.agent import paths
from pkinfra.install import switch_command
from pkinfra.model import load_inventory_file
from tests.helpers import lab_inventory_copy
from tests.lab.dane_probe import DB1_POSTGRES, DaneProbe
from tests.lab.run import CLEAN_ENV, sh, site_run
from tests.lab.test_dane import LINEAGES
from tests.lab.test_rollover import authoritative, record_of, state
from tests.lab.tlsd_host import Tlsd

CLEAN = " ".join(CLEAN_ENV)
KILLED = 128 + 9
#: The steps of a lineage's switch and of a directory's, in the order one run reaches them.
ACME_STEPS = [
    *(f"archived-{kind}" for kind in switch.LINEAGE_KINDS),
    "copied",
    "built",
    "checked",
    "exchanged",
    "hooks-run",
]
CA_STEPS = ["copied", "built", "checked", "exchanged"]

pytestmark = pytest.mark.lab


def crash(step: str) -> str:
    return f"{switch.CRASH_VARIABLE}=test-only:{step}"


def pair_matches(container: str, key: str, *certs: str) -> bool:
    """Every certificate file (its first certificate) is for the key, read on the host."""
    spki = "openssl pkey -pubin -outform DER | sha256sum"
    want = sh(container, f"openssl pkey -in {key} -pubout | {spki}")
    assert want.returncode == 0, want.stderr
    for cert in certs:
        have = sh(container, f"openssl x509 -in {cert} -noout -pubkey | {spki}")
        if have.returncode != 0 or have.stdout != want.stdout:
            return False
    return True


def reload_serves(reader: Tlsd) -> int:
    """Tell the in-place reader to load the live files now; the serial it then serves."""
    before = reader.reloads()
    sent = sh(reader.container, f"kill -{reader.signal} $(cat {reader.pidfile})")
    assert sent.returncode == 0, sent.stderr
    deadline = time.monotonic() + 10
    while reader.reloads() == before and time.monotonic() < deadline:
        assert not any("reload failed" in line for line in reader.lines()), reader.lines()
        time.sleep(0.2)
    assert reader.reloads() == before + 1, reader.lines()
    serial = reader.file_serial()
    reader.wait_serving(serial)
    return serial


def leftovers(container: str, parent: str) -> list[str]:
    out = sh(container, f"ls -A {parent}").stdout.split()
    return [name for name in out if name.endswith(".pkinfra-switch")]


def test_a_kill_at_every_step_of_an_acme_switch_is_made_good(site_deployed: str) -> None:
    container, lineage, target = next(x for x in LINEAGES if x[1] == "web")
    live = f"/etc/letsencrypt/live/{lineage}"
    owner = "_443._tcp.web1.example.test.shadow.test"
    nginx = ("/etc/nginx/tls/web.key", "/etc/nginx/tls/web.crt")
    live_pair = [f"{live}/{kind}.pem" for kind in ("privkey", "cert", "fullchain")]
    reader = Tlsd(container, "172.29.53.20", 8444, live_pair[2], live_pair[0], "USR1")
    reader.start()
    finish = f"{paths.ROLLOVER} finish {lineage}"
    label = f"kill{int(time.time())}"
    try:
        started = sh(container, f"{CLEAN} {paths.ROLLOVER} start {lineage} --label {label}")
        assert started.returncode == 0, started.stdout + started.stderr
        old = record_of(container, f"{live}/cert.pem")
        new = str(state(container, lineage)["next_record"])
        with DaneProbe([target]) as probe:
            for step in ACME_STEPS:
                with probe.phase(f"killed at {step}"):
                    # The first run waits out the TTL (in the agent), passes the gate, and dies.
                    # (``env -i`` first: the fault variable must come after it.)
                    run = sh(container, f"{CLEAN} {crash(step)} {finish} --wait 90")
                    assert run.returncode == KILLED, f"{step}: {run.stdout}{run.stderr}"
                    assert state(container, lineage)["step"] == "switching", step
                    assert pair_matches(container, *live_pair), step
                    now = record_of(container, f"{live}/cert.pem")
                    assert now == (new if step in ("exchanged", "hooks-run") else old), step
                    assert all(now in rrset for rrset in authoritative(owner)), step
                    assert reload_serves(reader) == reader.file_serial(f"{live}/cert.pem")
                    assert pair_matches(container, *nginx), f"{step}: nginx's copies"
            with probe.phase("finish"):
                done = sh(container, f"{CLEAN} {finish}")
                assert done.returncode == 0, done.stdout + done.stderr
                assert "rolled over" in done.stdout
            time.sleep(2)  # a few checks against the final state
        summary = probe.summary
        assert summary is not None
        print(summary.describe())
        assert summary.failures == [], summary.describe()

        assert record_of(container, f"{live}/privkey.pem") == new
        assert record_of(container, nginx[1]) == new, "nginx has the new files"
        assert reload_serves(reader) == reader.file_serial(f"{live}/cert.pem")
        assert authoritative(owner) == [{new}, {new}]
        assert state(container, lineage)["step"] == "done"
        assert sh(container, f"test -e {live}-next").returncode == 1
        assert leftovers(container, "/etc/letsencrypt/live") == []

        # certbot reads the lineage as one of its own: a renewal goes on from the new
        # generation and keeps the new key.
        renew = f"{CLEAN} certbot renew --cert-name {lineage} --force-renewal"
        renewed = sh(container, renew)
        out = renewed.stdout + renewed.stderr
        assert renewed.returncode == 0, out[-3000:]
        assert "not linked to in /live/" not in out, out[-3000:]
        assert record_of(container, f"{live}/cert.pem") == new
        listed = sh(container, f"{CLEAN} certbot certificates --cert-name {lineage}")
        assert "INVALID" not in listed.stdout and "Certificate Path" in listed.stdout, listed
    finally:
        reader.stop()
        sh(container, f"{CLEAN} {paths.ROLLOVER} abort {lineage}")


def _sha256s(container: str, directory: str) -> dict[str, str]:
    out = sh(container, f"cd {directory} && sha256sum {' '.join(switch.CA_FILES)}")
    assert out.returncode == 0, out.stderr
    return {line.split()[1]: line.split()[0] for line in out.stdout.splitlines()}


def test_a_kill_at_every_step_of_a_ca_switch_is_made_good(
    site_deployed: str, tmp_path: Path
) -> None:
    container, directory = "pkinfra-db1", "/etc/pkinfra/certs/postgres"
    next_dir, owner = f"{directory}/next", "_5432._tcp.db1.example.test"
    label = f"cakill{int(time.time())}"
    lab_inventory_copy(tmp_path)
    inventory = tmp_path / "inventory.py"
    original = '{"name": "postgres", "names": ["db1.example.test"], "issuer": "duckcorp"}'
    text = inventory.read_text()
    assert original in text
    inventory.write_text(text.replace(original, original[:-1] + f', "rollover": "{label}"}}'))
    settings = tmp_path / "group_data" / "all.py"
    # No rollover_wait: a run does step 2 only once the TTL has passed, which this test waits
    # for itself before it runs the switch by hand.

    site_run(inventory)  # step 1: the next key and certificate
    for _ in range(3):  # the next record joins the zone, and once every server serves it: noted
        out = site_run(inventory)
        assert "checking that every authoritative server serves the next record" in out
        if state(container, "postgres")["step"] == "published":
            break
    assert state(container, "postgres")["step"] == "published"
    old, new = _sha256s(container, directory), _sha256s(container, next_dir)
    old_record = record_of(container, f"{directory}/cert.pem")
    new_record = record_of(container, f"{next_dir}/cert.pem")
    assert authoritative(owner) == [{old_record, new_record}] * 2
    # The TTL passes before anything is switched (what the operation's gate waits for).
    served_since = int(str(state(container, "postgres")["served_since"]))
    ttl = max(zone.tlsa_ttl for zone in load_inventory_file(inventory).settings.zones)
    while int(sh(container, "date +%s").stdout) < served_since + ttl + 1:
        time.sleep(1)

    program = switch_command(directory, next_dir)
    live_pair = [f"{directory}/{name}" for name in ("key.pem", "cert.pem", "fullchain.pem")]
    reader = Tlsd(container, "172.29.53.30", 8444, live_pair[2], live_pair[0], "USR2")
    reader.start()
    try:
        with DaneProbe([DB1_POSTGRES]) as probe:
            for step in CA_STEPS:
                with probe.phase(f"killed at {step}"):
                    run = sh(container, program, env=[crash(step)])
                    assert run.returncode == KILLED, f"{step}: {run.stdout}{run.stderr}"
                    files = _sha256s(container, directory)
                    assert files == (new if step == "exchanged" else old), f"{step}: a mix"
                    assert pair_matches(container, *live_pair), step
                    assert reload_serves(reader) == reader.file_serial(), step
            with probe.phase("rerun"):
                again = sh(container, program)
                assert again.returncode == 0 and "switched already" in again.stdout, again
                assert leftovers(container, "/etc/pkinfra/certs") == []
            # The operation's own step 2 then finds the new key live: it signs that key's
            # certificate under the certificate's name and switches to it, atomically again.
            with settings.open("a") as added:
                added.write("\nrollover_wait = 60\n")
            with probe.phase("run: step 2"):
                out = site_run(inventory)
            assert "step 2 (switch to the next key)" in out, out[-3000:]
            assert state(container, "postgres")["step"] == "switched"
            assert reload_serves(reader) == reader.file_serial()
            with probe.phase("runs: retire"):
                site_run(inventory)
                site_run(inventory)
            time.sleep(1)
        summary = probe.summary
        assert summary is not None
        print(summary.describe())
        assert summary.failures == [], summary.describe()
    finally:
        reader.stop()

    assert state(container, "postgres")["step"] == "done"
    assert record_of(container, f"{directory}/key.pem") == new_record
    assert record_of(container, "/etc/postgresql/tls/server.crt") == new_record
    assert authoritative(owner) == [{new_record}] * 2
    assert sh(container, f"test -e {next_dir}").returncode == 1
