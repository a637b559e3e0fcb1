"""pkinfra on hosts no one prepared for it: a Debian 13 and a Debian 12 host as a site has them
(systemd as PID 1, sshd, a sudo user with the controller's key, nothing of the lab's deploys),
reached over SSH with sudo. ``deploys/site.py`` gives each a CA-issued certificate and places
its files for a service; every path on the host is listed before and after, and what changed
must be pkinfra's own files, the files the inventory names, or the trust store that pkinfra
rebuilds from its anchors as ``update-ca-certificates`` would (Debian's script, run after, changes
nothing). A second run changes nothing at all.
"""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import lab
from lab import containers, images, ssh
from lab.topology import LABEL_LAB, NETWORK
from pkinfra import truststore
from pkinfra.model import reserved_host_path
from tests.helpers import lab_inventory_copy
from tests.lab import run as lab_run
from tests.lab.run import docker_exec, limits, pyinfra_output
from tests.lab.test_pki import totals

pytestmark = pytest.mark.lab

sh = partial(lab_run.sh, timeout=120)

ROOT = Path(__file__).resolve().parents[2]
#: container -> (Debian release, address, FQDN): hosts outside the lab's topology.
STRANGERS = {
    "pkinfra-new13": ("trixie", "172.29.53.61", "new13.example.test"),
    "pkinfra-new12": ("bookworm", "172.29.53.62", "new12.example.test"),
}
#: The service files the inventory names on each stranger (their directory does not exist yet).
APP_FILES = ("/etc/app/tls/cert.pem", "/etc/app/tls/key.pem")
#: What the system itself writes for any SSH login with sudo, with or without pkinfra: the
#: journal and the login records.
SYSTEM_KEEPS = ("/var/log/",)
#: Rebuilt (``pkinfra.truststore``) when pkinfra adds its anchors under
#: /usr/local/share/ca-certificates/pkinfra-* (the system's trust store, on purpose): only the
#: bundle, pkinfra's anchors and the hash links to them may change there.
TRUST_STORE = "/etc/ssl/certs/"
HASH_LINK = re.compile(r"[0-9a-f]{8}\.[0-9]+")
BUNDLE = f"{TRUST_STORE}ca-certificates.crt"
TRUST_ANCHOR = "/usr/local/share/ca-certificates/pkinfra-duckcorp.crt"

# Every path of the host's root file system (the kernel's and the runtime's trees aside): type,
# mode, owner, group, and for a file its size and modification time, for a link its target.
MANIFEST = r"""
import json, os, stat, sys
skip = {"/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp"}
out = {}
for top, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(top, d) not in skip]
    for name in dirs + files:
        path = os.path.join(top, name)
        st = os.lstat(path)
        entry = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid]
        if stat.S_ISREG(st.st_mode):
            entry += [st.st_size, st.st_mtime_ns]
        elif stat.S_ISLNK(st.st_mode):
            entry.append(os.readlink(path))
        out[path] = entry
json.dump(out, sys.stdout)
"""


def manifest(container: str) -> dict[str, list[object]]:
    run = docker_exec(container, "python3", "-c", MANIFEST, timeout=120)
    assert run.returncode == 0, run.stderr
    loaded: dict[str, list[object]] = json.loads(run.stdout)
    return loaded


def changed(before: dict[str, list[object]], after: dict[str, list[object]]) -> set[str]:
    """Paths added, removed, or different in type, mode, owner, size or time."""
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


def path_is_file(listing: dict[str, list[object]], path: str) -> bool:
    return path in listing and listing[path][0] == stat.S_IFREG


def allowed(path: str, after: dict[str, list[object]]) -> bool:
    if reserved_host_path(path) is not None:  # pkinfra's own
        return True
    if path in APP_FILES or path in ("/etc/app", "/etc/app/tls"):  # what the inventory names
        return True
    if path.startswith(TRUST_STORE):
        # The bundle, pkinfra's anchors, and the hash links that its rehash recomputes for the
        # whole directory (a certificate another tool put there without a link gets one too).
        name = path.removeprefix(TRUST_STORE)
        return (
            name == "ca-certificates.crt"
            or name.startswith("pkinfra-")
            or (HASH_LINK.fullmatch(name) is not None and not path_is_file(after, path))
        )
    return path.startswith(SYSTEM_KEEPS)


@pytest.fixture(scope="module")
def strangers(lab_up: lab.LabStatus, docker_client: Any) -> Iterator[dict[str, str]]:
    """The two hosts, made as an admin would before pkinfra arrives; container -> known_hosts
    line. Removed afterwards (and by any later `lab up`: they carry the lab's label)."""
    public_key = ssh.ensure_keypair()
    api = docker_client.api
    made: list[Any] = []
    lines: dict[str, str] = {}
    try:
        for name, (suite, address, fqdn) in STRANGERS.items():
            old = containers.get_container(docker_client, name)
            if old is not None:
                containers.remove_container(old)
            created = api.create_container(
                images.lab_spec(suite).tag,
                command=containers.SYSTEMD_COMMAND,
                stop_signal=containers.SYSTEMD_STOP_SIGNAL,
                name=name,
                hostname=fqdn,
                labels={LABEL_LAB: "1"},
                host_config=api.create_host_config(
                    network_mode=NETWORK,
                    tmpfs=containers.SYSTEMD_TMPFS,
                    binds=containers.SYSTEMD_BINDS,
                ),
                networking_config=api.create_networking_config(
                    {NETWORK: api.create_endpoint_config(ipv4_address=address)}
                ),
                detach=True,
            )
            api.start(created["Id"])
            container = docker_client.containers.get(created["Id"])
            made.append(container)
            # sshd, the sudo user's key, resolv.conf: no daemon of the lab's, no lab deploy.
            prepared = containers.prepare(container, "stranger", public_key)
            assert prepared.host_key is not None
            lines[name] = ssh.known_hosts_text({address: prepared.host_key})
        for _suite, address, _fqdn in STRANGERS.values():
            ssh.wait_for_ssh(address)
        yield lines
    finally:
        for container in made:
            containers.remove_container(container)


def stranger_inventory(directory: Path, known_hosts: Path) -> Path:
    """The lab inventory with the strangers in a group of their own, and a CA store of its own
    (the lab's store and secrets stay untouched)."""
    inventory = lab_inventory_copy(directory)
    (directory / "pki").unlink()
    (directory / "pki").mkdir()
    hosts = ",\n".join(
        f"""    ("{fqdn}", {{
        "fqdn": "{fqdn}",
        **_ssh("{address}"),
        "ssh_known_hosts_file": "{known_hosts}",
        "certificates": [{{"name": "app", "names": ["{fqdn}"], "issuer": "duckcorp"}}],
        "services": [{{
            "name": "app",
            "certificate": "app",
            "files": [
                {{"path": "{APP_FILES[0]}", "content": "fullchain"}},
                {{"path": "{APP_FILES[1]}", "content": "key"}},
            ],
            "notify": {{"command": "systemctl try-reload-or-restart nginx"}},
        }}],
    }})"""
        for _suite, address, fqdn in STRANGERS.values()
    )
    text = inventory.read_text()
    marker = "# pkinfra finds the groups above"
    assert text.count(marker) == 1
    inventory.write_text(text.replace(marker, f"strangers = [\n{hosts},\n]\n\n{marker}"))
    return inventory


def site_run(inventory: Path) -> str:
    hosts = limits(*[fqdn for *_, fqdn in STRANGERS.values()])
    return pyinfra_output("deploys/site.py", *hosts, inventory=inventory, timeout=600, tail=6000)


def test_a_run_on_hosts_no_one_prepared_changes_only_pkinfras_files(
    strangers: dict[str, str], tmp_path: Path
) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("".join(strangers.values()))
    inventory = stranger_inventory(tmp_path, known_hosts)
    before = {name: manifest(name) for name in STRANGERS}

    out = site_run(inventory)
    for *_, fqdn in STRANGERS.values():
        assert f"[{fqdn}]" in out, out[-3000:]
    for name in STRANGERS:
        after = manifest(name)
        outside = sorted(p for p in changed(before[name], after) if not allowed(p, after))
        assert outside == [], f"{name}: changed outside pkinfra's own files: {outside[:40]}"
        # The certificate is there, its key root's only, and the stage of the run is gone.
        assert sh(name, f"stat -c '%U %a' {APP_FILES[1]}").stdout.split() == ["root", "600"]
        check = sh(
            name,
            f"openssl x509 -in {APP_FILES[0]} -noout -pubkey | openssl pkey -pubin -outform DER"
            f" | sha256sum; openssl pkey -in {APP_FILES[1]} -pubout -outform DER | sha256sum",
        ).stdout.split()
        assert len(check) == 4 and check[0] == check[2], check
        assert sh(name, "ls -A /tmp | grep -i pkinfra").stdout == ""
        before[name] = after

    again = site_run(inventory)
    assert totals(again)[1] == "-", "a second run changed something:\n" + again[-4000:]
    for name in STRANGERS:
        moved = sorted(
            p for p in changed(before[name], manifest(name)) if not p.startswith(SYSTEM_KEEPS)
        )
        assert moved == [], f"{name}: a second run changed {moved[:40]}"

    # pkinfra brought the trust store up to date itself (pkinfra.truststore: the host's script
    # is one it was checked against, and there are no hooks): Debian's own script, run now,
    # finds nothing to change, and the bundle holds pkinfra's root.
    for name in STRANGERS:
        script = sh(name, f"sha256sum {truststore.SCRIPT}").stdout.split()[0]
        assert script in truststore.VERIFIED_SCRIPTS, f"{name}: {script}"
        store = f"find {TRUST_STORE} -printf '%p %l\\n' | sort; sha256sum {BUNDLE}"
        ours = sh(name, store).stdout
        assert f"{TRUST_STORE}pkinfra-duckcorp.pem " in ours, ours[-2000:]
        assert sh(name, "update-ca-certificates").returncode == 0
        assert sh(name, store).stdout == ours, f"{name}: update-ca-certificates changed the store"
        anchor = sh(name, f"cat {TRUST_ANCHOR}").stdout
        assert anchor.strip() and anchor in sh(name, f"cat {BUNDLE}").stdout
