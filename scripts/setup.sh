#!/usr/bin/env bash
# Prepare this machine for pkinfra: Debian packages, a running Docker engine, the .venv.
# Idempotent and quick when everything is already there; needs root on a fresh Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*" >&2; }

# Debian packages: Docker engine, debootstrap for the lab's base image, clients the tests use,
# BIND for the DNS client's local tests, nginx for the HTTP-01 integration's local tests,
# Chromium (headless) for the status page as a person sees it, systemd-analyze for the units
# `pkinfra schedule` renders, iproute2 (`ip netns`) for the twin lab's network namespace.
PACKAGES=(docker.io debootstrap openssh-client openssl python3 python3-venv python3-pip
          bind9 bind9-utils bind9-dnsutils ca-certificates make git nginx chromium systemd
          iproute2)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { say "need root to install: ${missing[*]}"; exit 1; }
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Never let package scripts start daemons on this machine (named would take port 53).
  policy_made=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    policy_made=1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$policy_made" -eq 0 ] || rm -f /usr/sbin/policy-rc.d
fi

# The Docker engine: start dockerd when nothing answers (no systemd here).
if ! docker info >/dev/null 2>&1; then
  say "starting dockerd (log: /var/log/pkinfra-dockerd.log)"
  nohup dockerd >/var/log/pkinfra-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { say "dockerd did not come up; see /var/log/pkinfra-dockerd.log"; exit 1; }
fi

# The project's virtualenv, reinstalled only when pyproject.toml changes.
stamp=.venv/.pkinfra-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing Python dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi

# The lab CAs' passphrase: random, made once, readable by root only.
mkdir -p .lab
if [ ! -s .lab/ca-passphrase ]; then
  (umask 077 && head -c 32 /dev/urandom | base64 > .lab/ca-passphrase)
fi
say "ready"
