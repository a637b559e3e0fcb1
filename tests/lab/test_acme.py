"""ACME against the lab's Pebble: HTTP-01 on web1 through nginx's webroot, DNS-01 on mx1 through
the shadow zone with pkinfra's hook, renewals in a clean environment, and faults.

Needs the DNS master and resolver deployed (deploys/site.py has run once). The module deploys
Pebble and ACME once, after deleting the lineages, so the certificates are really issued by this
run.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).parent / "pyinfra"
HOSTS = ["@docker/pkinfra-acme", "@docker/pkinfra-web1", "@docker/pkinfra-mx1"]
CLEAN = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
SHADOW_TARGETS = [
    "_acme-challenge.mx1.example.test.shadow.test",
    "_acme-challenge.mail.example.test.shadow.test",
]
AUTHORITATIVE = ["172.29.53.10", "172.29.53.11"]
SPKI = (
    "openssl x509 -in /etc/letsencrypt/live/mail/cert.pem -noout -pubkey"
    " | openssl pkey -pubin -outform DER | sha256sum | cut -c1-64"
)

pytestmark = pytest.mark.lab


def sh(container: str, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "exec", container, "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def deploy() -> subprocess.CompletedProcess[str]:
    limits = [arg for name in HOSTS for arg in ("--limit", name)]
    return subprocess.run(
        [str(PYINFRA), "-y", "inventory.py", "deploys/pebble.py", "deploys/acme.py", *limits],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def challenge_txt() -> str:
    """Every TXT at mx1's shadow names on every authoritative server (RD=0)."""
    queries = " ; ".join(
        f"dig +norec +short @{server} {name} TXT"
        for server in AUTHORITATIVE
        for name in SHADOW_TARGETS
    )
    return sh("pkinfra-mx1", queries).stdout.strip()


@pytest.fixture(scope="module")
def deployed(site_deployed: str) -> subprocess.CompletedProcess[str]:
    cname = sh("pkinfra-mx1", "dig +short _acme-challenge.mx1.example.test CNAME").stdout
    if "shadow.test" not in cname:
        pytest.fail("the DNS master is not deployed: run deploys/site.py first", pytrace=False)
    for container, name in (("pkinfra-web1", "web"), ("pkinfra-mx1", "mail")):
        sh(container, f"certbot delete --non-interactive --cert-name {name} >/dev/null 2>&1")
    run = deploy()
    assert run.returncode == 0, run.stdout + run.stderr
    return run


def test_web1_gets_a_certificate_by_http01(deployed: subprocess.CompletedProcess[str]) -> None:
    out = sh(
        "pkinfra-web1",
        "openssl x509 -in /etc/letsencrypt/live/web/cert.pem -noout -issuer -ext subjectAltName"
        " && grep -E '^authenticator|^web1' /etc/letsencrypt/renewal/web.conf",
    ).stdout
    assert "Pebble" in out
    assert "DNS:web1.example.test, DNS:www.example.test" in out
    assert "authenticator = webroot" in out
    assert "web1.example.test = /var/www/acme" in out


def test_mx1_gets_one_certificate_for_two_names_by_dns01(
    deployed: subprocess.CompletedProcess[str],
) -> None:
    out = sh(
        "pkinfra-mx1",
        "openssl x509 -in /etc/letsencrypt/live/mail/cert.pem -noout -issuer -ext subjectAltName"
        " && grep -E '^authenticator|^manual_auth_hook' /etc/letsencrypt/renewal/mail.conf",
    ).stdout
    assert "Pebble" in out
    assert "DNS:mx1.example.test, DNS:mail.example.test" in out
    assert "manual_auth_hook = /usr/local/bin/pkinfra-certbot-hook auth" in out
    assert challenge_txt() == "", "a challenge TXT was left in the shadow zone"


def test_clean_environment_renewals_keep_the_key(
    deployed: subprocess.CompletedProcess[str],
) -> None:
    before = sh("pkinfra-mx1", SPKI).stdout.strip()
    assert len(before) == 64
    for attempt in range(3):
        started = time.monotonic()
        run = subprocess.run(
            ["docker", "exec", "pkinfra-mx1", *CLEAN, "certbot", "renew", "--force-renewal"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        took = time.monotonic() - started
        assert run.returncode == 0, f"renewal {attempt + 1}:\n{run.stdout}{run.stderr}"
        assert "all renewals succeeded" in run.stdout + run.stderr
        assert sh("pkinfra-mx1", SPKI).stdout.strip() == before, f"renewal {attempt + 1}"
        print(f"clean-environment renewal {attempt + 1}: {took:.1f} s")
    assert challenge_txt() == ""


def test_second_run_changes_nothing(deployed: subprocess.CompletedProcess[str]) -> None:
    again = deploy()
    out = again.stdout + again.stderr
    assert again.returncode == 0, out
    total = re.search(r"Grand total\s+(\d+)\s+(\S+)\s+(\S+)\s+(\d+)", out)
    assert total is not None, out
    assert total.group(2) == "-", f"a second run changed something:\n{out}"


def test_wrong_key_is_refused_with_one_line(deployed: subprocess.CompletedProcess[str]) -> None:
    # A key with mx1's name and another secret: the primary refuses the signature.
    setup = (
        "mkdir -p /tmp/pkinfra-fault && cd /tmp/pkinfra-fault"
        ' && printf \'key "mx1.example.test" { algorithm hmac-sha256; secret "%s"; };\\n\''
        " $(head -c 32 /dev/urandom | base64) > wrong.key && chmod 600 wrong.key"
        " && printf '[dns-01]\\ntsig_key = /tmp/pkinfra-fault/wrong.key\\n"
        "propagation_timeout = 10\\n' > hook.conf"
    )
    assert sh("pkinfra-mx1", setup).returncode == 0
    started = time.monotonic()
    run = sh(
        "pkinfra-mx1",
        "env PKINFRA_HOOK_CONFIG=/tmp/pkinfra-fault/hook.conf CERTBOT_DOMAIN=mx1.example.test"
        " CERTBOT_VALIDATION=wrongkeytest /usr/local/bin/pkinfra-certbot-hook auth",
    )
    assert time.monotonic() - started < 30
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("pkinfra-certbot-hook: auth mx1.example.test: adding TXT at ")
    assert "BADSIG" in lines[0]
    sh("pkinfra-mx1", "rm -rf /tmp/pkinfra-fault")


def test_unreachable_acme_server_fails_and_keeps_the_certificate(
    deployed: subprocess.CompletedProcess[str],
) -> None:
    serial = "openssl x509 -in /etc/letsencrypt/live/mail/cert.pem -noout -serial"
    before = sh("pkinfra-mx1", serial).stdout
    started = time.monotonic()
    run = subprocess.run(
        [
            "docker",
            "exec",
            "pkinfra-mx1",
            *CLEAN,
            "certbot",
            "renew",
            "--force-renewal",
            "--cert-name",
            "mail",
            "--server",
            "https://acme.example.test:14001/dir",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode != 0
    assert time.monotonic() - started < 120
    assert sh("pkinfra-mx1", serial).stdout == before
    assert challenge_txt() == ""


def test_issuance_survives_nonce_rejection_on_a_second_pebble(
    deployed: subprocess.CompletedProcess[str],
) -> None:
    # A second Pebble (ports 14001/15001) with PEBBLE_WFE_NONCEREJECT at its default (5 % of
    # good nonces rejected); a throw-away certbot configuration, so mx1's lineage is untouched.
    start = (
        "sed -e s/14000/14001/ -e s/15000/15001/ /etc/pebble/pebble-config.json"
        " > /tmp/pebble-nonce.json && cd / && (PEBBLE_VA_NOSLEEP=1 PEBBLE_AUTHZREUSE=0"
        " setsid /usr/bin/pebble -config /tmp/pebble-nonce.json -dnsserver 172.29.53.53:53"
        " >/tmp/pebble-nonce.log 2>&1 </dev/null & echo $! > /tmp/pebble-nonce.pid)"
        " && for i in $(seq 100); do ss -ltn | grep -q ':14001 ' && exit 0; sleep 0.1; done;"
        " exit 1"
    )
    assert sh("pkinfra-acme", start).returncode == 0
    try:
        base = "/tmp/pkinfra-nonce"
        hook = "/usr/local/bin/pkinfra-certbot-hook"
        run = sh(
            "pkinfra-mx1",
            f"rm -rf {base} && certbot certonly --non-interactive --agree-tos"
            f" --register-unsafely-without-email --config-dir {base}/etc --work-dir {base}/work"
            f" --logs-dir {base}/log --server https://acme.example.test:14001/dir"
            " --cert-name nonce --key-type ecdsa --manual --preferred-challenges dns"
            f" --manual-auth-hook '{hook} auth' --manual-cleanup-hook '{hook} cleanup'"
            " -d mx1.example.test -d mail.example.test",
            timeout=300,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        rejected = sh("pkinfra-mx1", f"grep -c badNonce {base}/log/letsencrypt.log").stdout
        print(f"second Pebble: issued; badNonce answers retried: {rejected.strip() or 0}")
    finally:
        sh("pkinfra-acme", "kill $(cat /tmp/pebble-nonce.pid); rm -f /tmp/pebble-nonce.*")
        sh("pkinfra-mx1", "rm -rf /tmp/pkinfra-nonce")
    assert challenge_txt() == ""


def test_a_name_this_host_may_not_update_is_refused_with_one_line(
    deployed: subprocess.CompletedProcess[str],
) -> None:
    # web1's names are not delegated to mx1 (nor at all: web1 uses HTTP-01), so the hook ends
    # in the signed main zone, where no host key may write.
    run = sh(
        "pkinfra-mx1",
        "env CERTBOT_DOMAIN=web1.example.test CERTBOT_VALIDATION=notmine"
        " /usr/local/bin/pkinfra-certbot-hook auth",
    )
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "_acme-challenge.web1.example.test in zone example.test" in lines[0]
    assert "REFUSED" in lines[0]
