"""The lab itself: topology, isolation, resolv.conf, SSH to mon1, idempotent `up`, restarts.

Tests marked `lab` need dockerd; the others check the lab's logic with stand-in objects.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import paramiko
import pytest

import lab
from lab import containers, images, ssh
from lab.topology import (
    GATEWAY,
    HOSTS,
    KNOWN_HOSTS,
    LABEL_IMAGE,
    LABEL_LAB,
    LABEL_SPEC,
    NETWORK,
    REPO_ROOT,
    SSH_KEY,
    SSH_ROLES,
    SSH_USER,
    SUBNET,
    SUITES,
    container_name,
    hostname,
    resolv_conf,
)

MON1 = HOSTS["mon1"]


def run_in(client: Any, role: str, command: str) -> tuple[int, str]:
    """Run a shell command in a lab container: (exit code, combined output)."""
    code, output = client.containers.get(container_name(role)).exec_run(["sh", "-c", command])
    return code, output.decode("utf-8", errors="replace")


def ssh_mon1(*command: str) -> subprocess.CompletedProcess[str]:
    """OpenSSH to mon1 with the lab key and strict host key checking against the lab's file."""
    options = {
        "UserKnownHostsFile": str(KNOWN_HOSTS),
        "StrictHostKeyChecking": "yes",
        "BatchMode": "yes",
        "IdentitiesOnly": "yes",
        "ConnectTimeout": "5",
    }
    flags = [f"-o{name}={value}" for name, value in options.items()]
    return subprocess.run(
        ["ssh", "-i", str(SSH_KEY), *flags, f"{SSH_USER}@{MON1}", *command],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def container_ids(client: Any) -> dict[str, tuple[str, str]]:
    """role -> (container id, start time): a recreated or restarted container changes it."""
    result = {}
    for role in HOSTS:
        container = client.containers.get(container_name(role))
        result[role] = (container.id, container.attrs["State"]["StartedAt"])
    return result


# --- against the running lab -----------------------------------------------------------------


@pytest.mark.lab
@pytest.mark.lab_roundtrip
def test_down_then_up_rebuilds_the_lab(docker_client: Any) -> None:
    lab.down()
    assert not docker_client.containers.list(all=True, filters={"label": f"{LABEL_LAB}=1"})
    assert not docker_client.networks.list(names=[NETWORK])
    leftovers = [c.name for c in docker_client.containers.list(all=True)]
    assert not [n for n in leftovers if n.startswith("pkinfra-")]
    assert not [v.name for v in docker_client.volumes.list() if "pkinfra" in v.name]
    assert not lab.status().ok
    for tag in {spec.tag for spec in images.lab_specs().values()}:
        assert docker_client.images.get(tag)  # the cache survives `down`
    assert lab.up().ok
    assert lab.status().ok


@pytest.mark.lab
def test_every_host_runs_on_the_internal_network_only(
    lab_up: lab.LabStatus, docker_client: Any
) -> None:
    assert lab_up.ok
    network = docker_client.networks.get(NETWORK)
    assert network.attrs["Internal"] is True
    assert network.attrs["IPAM"]["Config"] == [{"Subnet": SUBNET, "Gateway": GATEWAY}]
    for role, address in HOSTS.items():
        image = images.lab_spec(SUITES[role])
        container = docker_client.containers.get(container_name(role))
        assert container.status == "running"
        assert containers.networks_of(container) == {NETWORK: address}
        assert container.attrs["Config"]["Hostname"] == hostname(role)
        assert container.labels[LABEL_IMAGE] == image.digest
        assert container.image.tags == [image.tag]
        code, output = run_in(docker_client, role, "hostname -f; cat /proc/1/comm")
        assert code == 0
        name, init = output.split("\n")[:2]
        assert name == hostname(role)
        # Managed hosts run systemd as PID 1, as production hosts do; lab infrastructure idles
        # under Docker's init.
        assert init == ("systemd" if role in SSH_ROLES else "docker-init"), role


@pytest.mark.lab
def test_resolv_conf_names_the_lab_resolver(lab_up: lab.LabStatus, docker_client: Any) -> None:
    for role in HOSTS:
        code, output = run_in(docker_client, role, "cat /etc/resolv.conf")
        assert (code, output) == (0, resolv_conf()), role


@pytest.mark.lab
def test_containers_cannot_reach_outside_the_lab(lab_up: lab.LabStatus, docker_client: Any) -> None:
    # 192.0.2.1 stands for "anywhere else"; the Debian mirror is what the image build reached.
    targets = ["192.0.2.1"]
    with suppress(OSError):
        targets.append(socket.gethostbyname("deb.debian.org"))
    command = " & ".join(
        f"(curl -s -o /dev/null --max-time 3 http://{target}/; echo {target}=$?)"
        for target in targets
    )
    code, output = run_in(docker_client, "web1", f"{command}; wait")
    assert code == 0
    results = dict(line.split("=") for line in output.split())
    assert set(results) == set(targets)
    assert all(rc != "0" for rc in results.values()), results


@pytest.mark.lab
def test_second_up_changes_nothing(lab_up: lab.LabStatus, docker_client: Any) -> None:
    before = container_ids(docker_client)
    known_hosts = KNOWN_HOSTS.read_text()
    status = lab.up()
    assert status.ok
    assert container_ids(docker_client) == before
    assert KNOWN_HOSTS.read_text() == known_hosts


@pytest.mark.lab
def test_status_reports_a_full_lab(lab_up: lab.LabStatus) -> None:
    status = lab.status()
    assert status.ok
    assert [h.address for h in status.hosts] == list(HOSTS.values())
    cli = subprocess.run(
        [sys.executable, "-m", "lab", "status"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    lines = cli.stdout.splitlines()
    assert [line.split() for line in lines] == [
        [container_name(role), "running", address] for role, address in HOSTS.items()
    ]


@pytest.mark.lab
@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
def test_openssh_reaches_mon1_with_the_lab_key(lab_up: lab.LabStatus) -> None:
    assert SSH_KEY.stat().st_mode & 0o777 == 0o600
    result = ssh_mon1("hostname", "-f")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == hostname("mon1")


@pytest.mark.lab
def test_paramiko_reaches_mon1_with_strict_host_keys(lab_up: lab.LabStatus) -> None:
    # pyinfra's SSH connector is paramiko: an unknown host key must be refused, not added.
    client = paramiko.SSHClient()
    client.load_host_keys(str(KNOWN_HOSTS))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            MON1,
            username=SSH_USER,
            key_filename=str(SSH_KEY),
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
        )
        _stdin, stdout, _stderr = client.exec_command("cat /etc/resolv.conf")
        assert stdout.read().decode() == resolv_conf()
    finally:
        client.close()


@pytest.mark.lab
def test_mon1_sshd_refuses_passwords(lab_up: lab.LabStatus, docker_client: Any) -> None:
    code, output = run_in(docker_client, "mon1", "sshd -T")
    assert code == 0, output
    settings = dict(line.split(" ", 1) for line in output.splitlines() if " " in line)
    assert settings["permitrootlogin"] == "no"
    assert settings["passwordauthentication"] == "no"
    assert settings["kbdinteractiveauthentication"] == "no"
    code, output = run_in(
        docker_client, "mon1", f"stat -c '%a %U' /home/{SSH_USER}/.ssh/authorized_keys"
    )
    assert (code, output.strip()) == (0, f"600 {SSH_USER}")


@pytest.mark.lab
def test_host_keys_and_snakeoil_are_per_container(
    lab_up: lab.LabStatus, docker_client: Any
) -> None:
    # The image carries neither: hosts without sshd have no host keys at all, each SSH host has
    # its own, and each container made its own snakeoil pair at its first start.
    code, output = run_in(docker_client, "resolver", "ls /etc/ssh/ | grep -c host_ || true")
    assert (code, output.strip()) == (0, "0")
    host_keys = set()
    for role in SSH_ROLES:
        code, output = run_in(docker_client, role, "cat /etc/ssh/ssh_host_ed25519_key.pub")
        assert code == 0, output
        host_keys.add(output.split()[1])
    assert len(host_keys) == len(SSH_ROLES)
    digests = {}
    for role in ("web1", "db1"):
        code, output = run_in(
            docker_client, role, "sha256sum < /etc/ssl/private/ssl-cert-snakeoil.key"
        )
        assert code == 0, output
        digests[role] = output.split()[0]
    assert digests["web1"] != digests["db1"]


@pytest.mark.lab
def test_stopped_container_is_started_again_by_up(
    lab_up: lab.LabStatus, docker_client: Any
) -> None:
    # mon1 runs no service but sshd, which `up` restarts: stopping it disturbs no other test.
    container = docker_client.containers.get(container_name("mon1"))
    container_id = container.id
    known_hosts = KNOWN_HOSTS.read_text()
    container.stop(timeout=2)
    container.reload()
    assert container.status == "exited"
    assert not lab.status().ok
    assert lab.up().ok
    container.reload()
    assert container.id == container_id
    assert container.status == "running"
    code, output = run_in(docker_client, "mon1", "cat /etc/resolv.conf")
    assert (code, output) == (0, resolv_conf())
    assert KNOWN_HOSTS.read_text() == known_hosts  # the host key survived the restart
    ssh.wait_for_ssh(MON1, timeout=5)


# --- without a lab ---------------------------------------------------------------------------


def test_unreachable_daemon_is_one_clear_line() -> None:
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    result = subprocess.run(
        [sys.executable, "-m", "lab", "up"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lab: error: the Docker daemon is unreachable")


@pytest.mark.parametrize("suite", ["trixie", "bookworm"])
def test_image_tags_follow_their_inputs(suite: str) -> None:
    base, lab_image = images.base_spec(suite), images.lab_spec(suite)
    assert base.tag == images.base_spec(suite).tag
    assert lab_image.inputs["base"] == base.tag
    assert set(images.PACKAGES) <= set(images.build_script(suite).split())
    assert f"deb {images.MIRROR} {suite} main" in images.build_script(suite)
    changed = images.ImageSpec(lab_image.repository, {**lab_image.inputs, "packages": ["bind9"]})
    assert changed.digest != lab_image.digest
    assert len(lab_image.digest) == 12


def test_both_releases_run_hosts_and_each_has_its_own_image() -> None:
    # CI proves Debian 13 and 12: managed hosts of both releases, a service host on 12 among them.
    managed = {SUITES[role] for role in SSH_ROLES}
    assert managed == {"trixie", "bookworm"}
    assert SUITES["db1"] == "bookworm"
    assert images.lab_spec("trixie").tag != images.lab_spec("bookworm").tag


@dataclass
class FakeContainer:
    """Just what `stale_reason` reads of a docker SDK container."""

    labels: dict[str, str]
    networks: dict[str, dict[str, Any]]
    attrs: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.attrs = {"NetworkSettings": {"Networks": self.networks}}


def _current(role: str, **overrides: Any) -> FakeContainer:
    image = images.lab_spec(SUITES[role])
    labels = {
        LABEL_LAB: "1",
        LABEL_IMAGE: image.digest,
        LABEL_SPEC: containers.container_spec(role, image.tag),
    }
    networks = {NETWORK: {"IPAddress": HOSTS[role], "IPAMConfig": {"IPv4Address": HOSTS[role]}}}
    labels.update(overrides.get("labels", {}))
    return FakeContainer(labels, overrides.get("networks", networks))


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({}, None),
        ({"networks": {NETWORK: {"IPAddress": "", "IPAMConfig": {"IPv4Address": MON1}}}}, None),
        ({"labels": {LABEL_IMAGE: "000000000000"}}, "is not the current"),
        ({"labels": {LABEL_SPEC: "000000000000"}}, "another configuration"),
        ({"labels": {LABEL_LAB: ""}}, "not made by the lab"),
        ({"networks": {NETWORK: {"IPAddress": MON1}, "bridge": {}}}, "not only"),
        ({"networks": {NETWORK: {"IPAddress": "172.29.53.99"}}}, "is not 172.29.53.40"),
    ],
)
def test_stale_reason(overrides: dict[str, Any], reason: str | None) -> None:
    image = images.lab_spec(SUITES["mon1"])
    found = containers.stale_reason(_current("mon1", **overrides), "mon1", image.tag, image.digest)
    if reason is None:
        assert found is None
    else:
        assert found is not None and reason in found


def test_known_hosts_lines_drop_the_comment() -> None:
    text = ssh.known_hosts_text({MON1: "ssh-ed25519 AAAAC3Nza root@mon1.example.test"})
    assert text == f"{MON1} ssh-ed25519 AAAAC3Nza\n"
    with pytest.raises(lab.LabError):
        ssh.known_hosts_text({MON1: "garbage"})
