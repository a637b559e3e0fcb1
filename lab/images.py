"""The lab's images: per Debian release, a debootstrap base and the lab image built on top of it.

Docker Hub is not reachable, so a base image is a Debian `minbase` made by `debootstrap` and
imported as a tar stream. A lab image runs one shell script in a container of its base on the
default bridge (which reaches Debian's mirror) and commits the result. Each image is tagged with
a hash of its inputs; an image whose tag exists is never rebuilt. Hosts run Debian 13 (trixie)
or 12 (bookworm) as `lab.topology.SUITES` says; every image has the same packages.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from docker.errors import ImageNotFound, NotFound

from lab.engine import LabError, docker_step, say
from lab.topology import (
    BASE_REPOSITORY,
    DOMAIN,
    LAB_DIR,
    LAB_REPOSITORY,
    LABEL_IMAGE,
    SSH_USER,
    SUITES,
)

MIRROR: Final = "http://deb.debian.org/debian"
SECURITY_MIRROR: Final = "http://deb.debian.org/debian-security"
VARIANT: Final = "minbase"

#: Every lab container runs the same image with these Debian packages.
PACKAGES: Final = (
    "bind9",
    "bind9-utils",
    "bind9-dnsutils",
    "unbound",
    "unbound-anchor",
    "pebble",
    "certbot",
    "python3-certbot-dns-rfc2136",
    "python3",
    "python3-dnspython",
    "python3-cryptography",
    "nginx",
    "postfix",
    "postgresql",
    "openssl",
    "ca-certificates",
    "procps",
    "openssh-server",
    "ldnsutils",
    "iproute2",
    "curl",
    "cron",
    "ssl-cert",
    # Production shape: systemd as PID 1 on managed hosts, reached as a sudo user.
    "systemd",
    "systemd-sysv",
    "sudo",
    "acl",
)

#: `docker import` changes: an imported tarball has no environment or command of its own.
BASE_CHANGES: Final = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["/bin/bash"]',
)

#: Left behind by debootstrap but useless in an image (the lab build fetches fresh lists).
BASE_TIDY: Final = ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*_*")

BUILD_DIR: Final = LAB_DIR / "build"
LOG_DIR: Final = LAB_DIR / "logs"
#: The build container of a release's lab image is `<BUILD_CONTAINER>-<suite>`: the releases
#: build side by side.
BUILD_CONTAINER: Final = "pkinfra-lab-build"

# Runs in a container of the base image, on the default bridge. Daemons must not start during
# the build (policy-rc.d), and nothing that must be unique per container may stay in the image:
# SSH host keys and the snakeoil key are made per container by `lab up` instead.
_BUILD_SCRIPT: Final = """\
set -eu
export DEBIAN_FRONTEND=noninteractive
cat >/etc/apt/sources.list <<EOF
deb {mirror} {suite} main
deb {mirror} {suite}-updates main
deb {security_mirror} {suite}-security main
EOF
printf '#!/bin/sh\\nexit 101\\n' >/usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d
# A throwaway build: dpkg need not fsync every file it unpacks (removed again below).
echo force-unsafe-io >/etc/dpkg/dpkg.cfg.d/pkinfra-build
debconf-set-selections <<EOF
postfix postfix/main_mailer_type select Local only
postfix postfix/mailname string {domain}
EOF
apt-get update
apt-get -y -o Dpkg::Options::=--force-confold upgrade
apt-get -y -o Dpkg::Options::=--force-confold install --no-install-recommends {packages}
# The build container's name must not survive into the image: Postfix then uses the running
# container's host name.
postconf -X myhostname
postconf -e 'mydestination = $myhostname, localhost.$mydomain, localhost'
cat >/etc/ssh/sshd_config.d/pkinfra-lab.conf <<EOF
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
EOF
rm -f /etc/ssh/ssh_host_*
# SFTP sessions logged (to the journal): a lab test reads where uploads were staged.
sftp='Subsystem sftp /usr/lib/openssh/sftp-server -l INFO'
sed -E -i "s|^Subsystem[[:space:]]+sftp[[:space:]].*|$sftp|" /etc/ssh/sshd_config
grep -qx "$sftp" /etc/ssh/sshd_config
# The site's admin: a non-root login with passwordless sudo (pyinfra connects as it, `_sudo`).
useradd --create-home --shell /bin/bash {ssh_user}
printf '{ssh_user} ALL=(ALL:ALL) NOPASSWD: ALL\n' >/etc/sudoers.d/{ssh_user}
chmod 0440 /etc/sudoers.d/{ssh_user}
# Daemons are installed everywhere but run only where `lab up` enables them (lab.topology.UNITS);
# sshd too, which can only start once `lab up` has made the container's own host keys.
systemctl disable ssh named unbound nginx postfix postgresql >/dev/null 2>&1
# No way out of the lab network: timers that fetch from the internet could only fail, and
# apt-daily would hold the package lock in the middle of a deploy.
systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    e2scrub_reap.service getty@tty1.service console-getty.service >/dev/null 2>&1
rm -f /etc/ssl/private/ssl-cert-snakeoil.key /etc/ssl/certs/ssl-cert-snakeoil.pem
find /etc/ssl/certs -xtype l -delete  # the snakeoil certificate's hash link
if [ -s /etc/machine-id ]; then : >/etc/machine-id; fi
rm -f /var/lib/dbus/machine-id
rm -f /usr/sbin/policy-rc.d /etc/dpkg/dpkg.cfg.d/pkinfra-build
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/cache/debconf/*-old /tmp/*
echo pkinfra-lab-build-ok
"""


@dataclass(frozen=True)
class ImageSpec:
    """One image: its repository, the hash of its inputs, and the inputs themselves."""

    repository: str
    inputs: dict[str, Any]

    @property
    def digest(self) -> str:
        """The first 12 hex digits of the SHA-256 of the canonical JSON of the inputs."""
        canonical = json.dumps(self.inputs, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @property
    def tag(self) -> str:
        """The full image reference, e.g. `pkinfra-lab:0123456789ab`."""
        return f"{self.repository}:{self.digest}"


def debootstrap_command(target: Path, suite: str) -> list[str]:
    """The debootstrap command line that makes the base root file system in `target`."""
    return ["debootstrap", f"--variant={VARIANT}", suite, str(target), MIRROR]


def build_script(suite: str) -> str:
    """The shell script that turns a base container into the lab image of `suite`."""
    return _BUILD_SCRIPT.format(
        mirror=MIRROR,
        security_mirror=SECURITY_MIRROR,
        suite=suite,
        domain=DOMAIN,
        packages=" ".join(PACKAGES),
        ssh_user=SSH_USER,
    )


def lab_commit_config(digest: str) -> dict[str, Any]:
    """The container config committed into the lab image."""
    return {"Cmd": ["/sbin/init"], "StopSignal": "SIGRTMIN+3", "Labels": {LABEL_IMAGE: digest}}


def base_spec(suite: str) -> ImageSpec:
    """The debootstrap base image of a Debian release (`trixie`, `bookworm`)."""
    return ImageSpec(
        BASE_REPOSITORY,
        {
            "suite": suite,
            "mirror": MIRROR,
            "variant": VARIANT,
            "command": debootstrap_command(Path("TARGET"), suite),
            "changes": list(BASE_CHANGES),
            "tidy": list(BASE_TIDY),
        },
    )


def lab_spec(suite: str) -> ImageSpec:
    """The lab image of a Debian release; its inputs include the base image's tag."""
    return ImageSpec(
        LAB_REPOSITORY,
        {
            "base": base_spec(suite).tag,
            "suite": suite,
            "mirror": MIRROR,
            "security_mirror": SECURITY_MIRROR,
            "packages": list(PACKAGES),
            "script": build_script(suite),
            "commit": lab_commit_config("DIGEST"),
        },
    )


def image_exists(client: Any, tag: str) -> bool:
    """Whether the engine has an image with this tag."""
    with docker_step(f"looking up image {tag}"):
        try:
            client.images.get(tag)
        except ImageNotFound:
            return False
    return True


def lab_specs() -> dict[str, ImageSpec]:
    """role -> the spec of the lab image its container runs."""
    return {role: lab_spec(suite) for role, suite in SUITES.items()}


def ensure_lab_image(client: Any, suite: str) -> ImageSpec:
    """Build whatever is missing of base and lab image of `suite`; return the lab image's spec."""
    lab = lab_spec(suite)
    if image_exists(client, lab.tag):
        return lab
    base = base_spec(suite)
    if not image_exists(client, base.tag):
        build_base_image(client, base, suite)
    build_lab_image(client, base, lab, suite)
    return lab


def ensure_lab_images(client: Any) -> dict[str, ImageSpec]:
    """Build what is missing of every release's images, the releases side by side (each build
    waits mostly on the Debian mirror and dpkg, one per core); role -> its lab image's spec.

    A failed build fails `lab up` with its own error once the other build has ended."""
    suites = sorted(set(SUITES.values()))
    with ThreadPoolExecutor(max_workers=len(suites), thread_name_prefix="lab-build") as pool:
        futures = {suite: pool.submit(ensure_lab_image, client, suite) for suite in suites}
        wait(futures.values())
    built = {suite: future.result() for suite, future in futures.items()}
    return {role: built[suite] for role, suite in SUITES.items()}


def _mounts_below(path: Path) -> list[str]:
    root = str(path.resolve())
    try:
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            points = [line.split()[1].replace("\\040", " ") for line in mounts]
    except OSError:
        return []
    return [p for p in points if p == root or p.startswith(root + "/")]


def _remove_tree(path: Path) -> None:
    # An interrupted debootstrap can leave /proc or /sys (or a bind of /dev) mounted in its
    # target, and rmtree crosses mount points: unmount first, and never delete through a mount.
    if not path.exists():
        return
    for point in sorted(_mounts_below(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)
    if left := _mounts_below(path):
        raise LabError(f"not deleting {path}: still mounted below it: {', '.join(left)}")
    shutil.rmtree(path, ignore_errors=True)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def build_base_image(client: Any, spec: ImageSpec, suite: str) -> None:
    """Run debootstrap into a scratch directory and import it as `spec.tag`."""
    if os.geteuid() != 0:
        raise LabError("building the base image needs root (debootstrap)")
    if shutil.which("debootstrap") is None:
        raise LabError("building the base image needs debootstrap (apt-get install debootstrap)")
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"base-{spec.digest}.log"
    work = BUILD_DIR / f"base-{spec.digest}"
    rootfs = work / "rootfs"
    _remove_tree(work)
    rootfs.mkdir(parents=True)
    say(f"building base image {spec.tag} (debootstrap {suite} {VARIANT}, ~30-60 s)...")
    started = time.monotonic()
    try:
        with open(log_path, "wb") as log:
            result = subprocess.run(
                debootstrap_command(rootfs, suite),
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if result.returncode != 0:
            raise LabError(
                f"debootstrap failed (exit {result.returncode}); last lines:\n"
                f"{_tail(log_path)}\nfull log: {log_path}"
            )
        for pattern in BASE_TIDY:
            for leftover in rootfs.glob(pattern):
                leftover.unlink()
        say(f"debootstrap {suite} done in {time.monotonic() - started:.0f} s; importing...")
        _import_rootfs(client, rootfs, spec)
    finally:
        _remove_tree(work)
    say(f"base image {spec.tag} built in {time.monotonic() - started:.0f} s")


def _import_rootfs(client: Any, rootfs: Path, spec: ImageSpec) -> None:
    command = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*"]
    tar = subprocess.Popen([*command, "-C", str(rootfs), "-cf", "-", "."], stdout=subprocess.PIPE)
    assert tar.stdout is not None
    stdout = tar.stdout

    def chunks() -> Iterator[bytes]:
        while block := stdout.read(1 << 20):
            yield block

    try:
        with docker_step(f"importing the base image {spec.tag}"):
            response = client.api.import_image(
                src=chunks(),
                repository=spec.repository,
                tag=spec.digest,
                changes=list(BASE_CHANGES),
                stream_src=True,
            )
    finally:
        stdout.close()
        returncode = tar.wait()
    if returncode != 0:
        raise LabError(f"tar of the base root file system failed (exit {returncode})")
    for line in str(response).splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("error"):
            raise LabError(f"importing the base image {spec.tag}: {message['error']}")
    if not image_exists(client, spec.tag):
        raise LabError(f"importing the base image {spec.tag}: no image after import")


def build_container_name(suite: str) -> str:
    """The name of the container that builds the lab image of `suite`."""
    return f"{BUILD_CONTAINER}-{suite}"


def _remove_build_container(client: Any, suite: str) -> None:
    name = build_container_name(suite)
    with docker_step(f"removing the build container {name}"), suppress(NotFound):
        client.containers.get(name).remove(force=True)


def build_lab_image(client: Any, base: ImageSpec, spec: ImageSpec, suite: str) -> None:
    """Install the lab packages in a container of `base` and commit it as `spec.tag`."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"lab-{spec.digest}.log"
    _remove_build_container(client, suite)
    say(
        f"building lab image {spec.tag} ({suite}: apt-get install of {len(PACKAGES)} packages "
        "from the Debian mirror, ~1-2 min)..."
    )
    started = time.monotonic()
    try:
        with docker_step("starting the lab image build container"):
            container = client.containers.create(
                base.tag,
                command=["sh", "-c", build_script(suite)],
                name=build_container_name(suite),
                hostname="build.invalid",
                network_mode="bridge",
            )
            container.start()
        with docker_step("following the lab image build"), open(log_path, "wb") as log:
            for chunk in container.logs(stream=True, follow=True):
                log.write(chunk)
            status = container.wait()
        code = int(status.get("StatusCode", -1))
        if code != 0:
            raise LabError(
                f"the lab image build failed (exit {code}); last lines:\n"
                f"{_tail(log_path)}\nfull log: {log_path}"
            )
        with docker_step(f"committing the lab image {spec.tag}"):
            container.commit(
                repository=spec.repository,
                tag=spec.digest,
                conf=lab_commit_config(spec.digest),
                message=f"pkinfra lab image from {base.tag}",
            )
    finally:
        _remove_build_container(client, suite)
    say(f"lab image {spec.tag} ({suite}) built in {time.monotonic() - started:.0f} s")
