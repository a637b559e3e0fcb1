"""A host's TSIG key rotated in the lab: both keys valid while the host switches, then only the
new one; the host can update at every step."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from lab.topology import pyinfra_name
from pkinfra import tsig
from pkinfra.dnsupdate import DNSUpdateError, RFC2136Client, TSIGKey
from tests.lab.run import docker, limits, pyinfra, pyinfra_command
from tests.lab.test_dns import RESOLVER

ROOT = Path(__file__).resolve().parents[2]
SECRETS = ROOT / "pki" / "secrets"
HOST = "web1.example.test"
OWNER = "_443._tcp.web1.example.test"
LIMIT = limits(*[pyinfra_name(h) for h in ("ns1", "ns2", "resolver", "web1")])

pytestmark = pytest.mark.lab


def deploy() -> None:
    run = pyinfra("deploys/dns.py", *LIMIT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def rotate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pkinfra.cli", "dns", "rotate-key", HOST, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def can_update(key: TSIGKey) -> str:
    """'OK', or the rcode the primary answered (a TLSA at web1's own delegated name)."""
    client = RFC2136Client(key, resolvers=[RESOLVER], timeout=2)
    target, _ = client.follow_cnames(OWNER)
    value = "3 1 1 " + uuid.uuid4().hex * 2
    try:
        client.add(target, "TLSA", value, 5)
    except DNSUpdateError as exc:
        return exc.rcode or str(exc)
    client.delete(target, "TLSA", value)
    return "OK"


def host_key_name() -> str:
    # Only the key's name line is read back; the secret stays in the container.
    first = docker("pkinfra-web1", "head -n 1 /etc/pkinfra/tsig.key")
    return first.split('"')[1]


def test_rotation_keeps_the_host_able_to_update(site_deployed: str) -> None:
    deploy()
    before = tsig.host_keys(SECRETS, HOST)
    old_key = TSIGKey.from_file(before.current.path)
    assert host_key_name() == before.current.name
    assert can_update(old_key) == "OK"

    started = rotate()
    assert started.returncode == 0, started.stderr
    nxt = tsig.host_keys(SECRETS, HOST).next
    assert nxt is not None
    refused = rotate("--finish")
    assert refused.returncode == 1 and "not on the host yet" in refused.stderr

    deploy()  # the primary learns the next key, then the host switches to it
    assert host_key_name() == nxt.name
    new_key = TSIGKey.from_file(nxt.path)
    assert can_update(new_key) == "OK"
    assert can_update(old_key) == "OK", "the old key stays valid until the rotation finishes"

    finished = rotate("--finish")
    assert finished.returncode == 0, finished.stderr
    deploy()  # the primary forgets the old key
    assert host_key_name() == nxt.name
    assert can_update(new_key) == "OK"
    assert can_update(old_key) in ("BADKEY", "REFUSED", "NOTAUTH")
    on_primary = docker("pkinfra-ns1", "ls /etc/bind/pkinfra/keys").split()
    assert f"{nxt.name}.key" in on_primary and f"{before.current.name}.key" not in on_primary


def digest(container: str, path: str) -> str:
    # The secret stays where it is: only its file's SHA-256 comes back.
    return docker(container, f"sha256sum {path}").split()[0]


def test_two_runs_making_a_new_key_at_once_agree_on_it(site_deployed: str) -> None:
    """web1's key is gone from the controller (a lost secrets directory, a new host) and two
    runs start at once: each makes a key, the first writer wins, and the primary, the host and
    the controller end with the same one, which the primary accepts."""
    deploy()
    keys = tsig.host_keys(SECRETS, HOST)
    assert keys.next is None, "no rotation in progress"
    keys.current.path.unlink()
    commands = [
        pyinfra_command("deploys/dns.py", *LIMIT, inventory="inventory.py") for _ in range(2)
    ]
    runs = [
        subprocess.Popen(c, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for c in commands
    ]
    outs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    made = tsig.host_keys(SECRETS, HOST).current
    assert made.name == HOST, "a key made anew is named after the host"
    assert not list(SECRETS.glob(f".{HOST}.key.tmp-*")), "the loser's file is cleaned away"
    controller = tsig.sha256_file(made.path)
    assert digest("pkinfra-web1", "/etc/pkinfra/tsig.key") == controller
    assert digest("pkinfra-ns1", f"/etc/bind/pkinfra/keys/{made.name}.key") == controller
    assert can_update(TSIGKey.from_file(made.path)) == "OK"
    # The old key (rotated to another name) is gone from the primary with its file.
    on_primary = docker("pkinfra-ns1", "ls /etc/bind/pkinfra/keys").split()
    assert [k for k in on_primary if HOST in k] == [f"{HOST}.key"], on_primary
