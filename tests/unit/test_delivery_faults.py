"""``kill -9`` at every step of a delivery, then a normal run: nothing is lost or told too early.

The agent (run as the host runs it: the one file, in its own process) kills itself with SIGKILL
at a named step (``PKINFRA_DELIVERY_CRASH_AT=test-only:<step>``, the test-only fault hook).
After each crash the live files must be consistent as the agent defines it:

- every file is whole and has its final owner and mode: old content or new, nothing else;
- a file with new content means the pending mark is on disk (the service is owed a notification),
  unless the service has been told about the new files already;
- keys and certificates may disagree only between the renames of one delivery, with the mark on
  disk and the service not told;
- the service was only ever told about keys that match their certificates.

Then a run without the fault leaves every file new, the mark gone and the service told about the
new files: once, or twice when the crash came after the notification and before the mark was
cleared. A further run tells nobody.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pkinfra.agent import delivery
from tests.helpers import self_signed
from tests.unit.test_delivery import run_agent
from tests.unit.test_delivery_inplace import Lineage, sha256_of

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="changes file owners: needs root")

FILES = [
    ("cert.pem", "fullchain", "0644"),
    ("key.pem", "key", "0600"),
    ("both.pem", "combined", "0640"),
]
COPY_STEPS = [
    "staged",
    "marked",
    "renamed-1",
    "renamed-2",
    "renamed-3",
    "checked",
    "notified",
    "cleared",
]
#: The only steps at which a key and a certificate in two files may disagree.
BETWEEN_RENAMES = {"renamed-1", "renamed-2"}
IN_PLACE_STEPS = ["marked", "recorded", "checked", "notified", "cleared"]


def public_id(pem: bytes, *, cert: bool) -> str:
    """A short id of the public key of a certificate or private key."""
    public = serialization.load_der_public_key(delivery._public_key(pem))
    text = public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)  # as openssl's
    return hashlib.sha256(text).hexdigest()[:16]


@dataclass
class Copies:
    out: Path
    state: Path
    told: Path
    mapping: dict[str, Any]
    old: dict[str, bytes]
    new: dict[str, bytes]
    new_id: str

    @property
    def mark(self) -> Path:
        return self.state / "pending" / "svc"

    def notifications(self) -> list[str]:
        return self.told.read_text().splitlines() if self.told.exists() else []


def notify_script(tmp_path: Path, out: Path, told: Path) -> str:
    """A notification that writes down what the service would load: its key's and its
    certificates' public key ids (as ``public_id``), one line per notification."""
    script = tmp_path / "reload.sh"
    script.write_text(
        f"""set -e
k=$(openssl pkey -pubout -in {out}/key.pem | sha256sum | cut -c1-16)
c=$(openssl x509 -noout -pubkey -in {out}/cert.pem | sha256sum | cut -c1-16)
b=$(openssl x509 -noout -pubkey -in {out}/both.pem | sha256sum | cut -c1-16)
bk=$(openssl pkey -pubout -in {out}/both.pem | sha256sum | cut -c1-16)
echo "$k $c $b $bk" >> {told}
"""
    )
    return f"sh {script}"


@pytest.fixture
def copies(tmp_path: Path) -> Copies:
    src, out, told = tmp_path / "src", tmp_path / "svc", tmp_path / "told"
    src.mkdir()
    pairs = {}
    for gen in ("old", "new"):
        self_signed(src / f"{gen}.key", src / f"{gen}.crt", f"/CN={gen}")
        key, cert = (src / f"{gen}.key").read_bytes(), (src / f"{gen}.crt").read_bytes()
        pairs[gen] = {"cert.pem": cert, "key.pem": key, "both.pem": key + cert}

    def service(gen: str) -> dict[str, Any]:
        sources = {
            "fullchain": [f"{src}/{gen}.crt"],
            "key": [f"{src}/{gen}.key"],
            "combined": [f"{src}/{gen}.key", f"{src}/{gen}.crt"],
        }
        files = [
            {"path": str(out / name), "content": content, "sources": sources[content],
             "owner": "root", "group": "nogroup", "mode": mode}
            for name, content, mode in FILES
        ]  # fmt: skip
        notify = {"command": notify_script(tmp_path, out, told)}
        return {"name": "svc", "certificate": "c", "lineage": "c", "files": files, "notify": notify}

    site = Copies(out, tmp_path / "state", told, {}, pairs["old"], pairs["new"], "")
    site.mapping = {"services": [service("old")]}
    first = run_agent(site.mapping, site.state)
    assert first.returncode == 0, first.stderr
    assert len(site.notifications()) == 1
    site.mapping = {"services": [service("new")]}
    site.new_id = public_id(pairs["new"]["key.pem"], cert=False)
    return site


def assert_consistent(site: Copies, step: str) -> None:
    generation = {}
    for name, _, mode in FILES:
        path = site.out / name
        data = path.read_bytes()
        assert data in (site.old[name], site.new[name]), f"{name} is neither old nor new"
        generation[name] = "new" if data == site.new[name] else "old"
        assert oct(path.stat().st_mode & 0o7777) == oct(int(mode, 8))
    told = site.notifications()
    if "new" in generation.values() and not (told and told[-1].split()[0] == site.new_id):
        assert site.mark.exists(), f"new files, not told, no mark after a crash at {step}"
    if len(set(generation.values())) > 1:
        # A combined file is always one generation: only two files can disagree.
        assert step in BETWEEN_RENAMES, f"mixed files after a crash at {step}: {generation}"
        assert site.mark.exists()
    for line in told:
        k, c, b, bk = line.split()
        assert k == c == b == bk, f"told about a key without its certificate: {line}"


@pytest.mark.parametrize("step", COPY_STEPS)
def test_kill_at_every_step_of_a_copy_is_recovered(copies: Copies, step: str) -> None:
    crashed = run_agent(
        copies.mapping, copies.state, env={delivery.CRASH_VARIABLE: f"test-only:{step}"}
    )
    assert crashed.returncode == -9, f"step {step} not reached: {crashed.stderr}"
    assert_consistent(copies, step)
    told_before = len(copies.notifications())
    assert told_before == (2 if step in ("notified", "cleared") else 1)

    # The pyinfra run's fact tells the truth about what the crash left.
    plan = json.loads(run_agent(copies.mapping, copies.state, "--plan").stdout)
    [svc] = plan["services"]
    paths = [copies.out / name for name, _, _ in FILES]
    stale = [str(p) for p in paths if p.read_bytes() != copies.new[p.name]]
    assert svc["changed"] == stale and svc["pending"] == copies.mark.exists()

    recovered = run_agent(copies.mapping, copies.state)
    assert recovered.returncode == 0, recovered.stderr
    for name, _, _ in FILES:
        assert (copies.out / name).read_bytes() == copies.new[name]
    assert not copies.mark.exists()
    assert sorted(p.name for p in copies.out.iterdir()) == sorted(n for n, _, _ in FILES)
    told = copies.notifications()
    assert_consistent(copies, "recovered")
    assert told[-1].split()[0] == copies.new_id, "the last notification was about the new files"
    # Told once about the new files; twice only if the crash hit between telling and clearing.
    assert len(told) == 1 + (2 if step == "notified" else 1)

    again = run_agent(copies.mapping, copies.state)
    assert again.returncode == 0 and len(copies.notifications()) == len(told)


def test_the_fault_hook_needs_its_test_only_prefix(copies: Copies) -> None:
    done = run_agent(copies.mapping, copies.state, env={delivery.CRASH_VARIABLE: "marked"})
    assert done.returncode == 0, done.stderr
    assert len(copies.notifications()) == 2 and not copies.mark.exists()


@pytest.mark.parametrize("step", IN_PLACE_STEPS)
def test_kill_at_every_step_of_an_in_place_change_is_recovered(tmp_path: Path, step: str) -> None:
    lineage = Lineage(tmp_path / "le")
    lineage.renew()
    told, state = tmp_path / "told", tmp_path / "state"
    mark, record = state / "pending" / "inplace", state / "served" / "inplace.json"
    # The notification writes down the certificate the service would load.
    notify = f"openssl x509 -noout -fingerprint -sha256 -in {lineage.cert} >> {told}"
    mapping = {
        "services": [
            {
                "name": "inplace",
                "certificate": "web",
                "lineage": "web",
                "files": [],
                "in_place": {"cert": str(lineage.cert), "key": str(lineage.key)},
                "notify": {"command": notify},
            }
        ]
    }

    def notifications() -> list[str]:
        lines = told.read_text().splitlines() if told.exists() else []
        return [line.split("=")[1].replace(":", "").lower() for line in lines]

    assert run_agent(mapping, state).returncode == 0
    lineage.renew()
    new = sha256_of(lineage.cert)
    crashed = run_agent(mapping, state, env={delivery.CRASH_VARIABLE: f"test-only:{step}"})
    assert crashed.returncode == -9, f"step {step} not reached: {crashed.stderr}"
    recorded = json.loads(record.read_text())["sha256"]
    if recorded == new and step != "cleared":
        assert mark.exists(), "the new certificate is recorded, and the service still owed"
    assert len(notifications()) == (2 if step in ("notified", "cleared") else 1)

    plan = json.loads(run_agent(mapping, state, "--plan").stdout)["services"][0]
    assert bool(plan["change"]) == (recorded != new) and plan["pending"] == mark.exists()

    assert run_agent(mapping, state).returncode == 0
    told_new = notifications()
    assert told_new[-1] == new and not mark.exists()
    assert json.loads(record.read_text())["sha256"] == new
    assert len(told_new) == 1 + (2 if step == "notified" else 1)
    assert run_agent(mapping, state).returncode == 0 and notifications() == told_new


def test_no_crash_step_is_left_untested() -> None:
    source = Path(delivery.__file__).read_text()
    named = set(COPY_STEPS) | set(IN_PLACE_STEPS)
    in_code = {
        line.split('_step("')[1].split('"')[0]
        for line in source.splitlines()
        if '_step("' in line and "def " not in line
    }
    in_code.add("renamed-1")  # _step(f"renamed-{n}")
    assert in_code <= named, f"steps without a crash test: {in_code - named}"
