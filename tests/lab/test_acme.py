"""ACME against the lab's Pebble: HTTP-01 on web1 through nginx's webroot, DNS-01 on mx1 through
the shadow zone with pkinfra's hook, renewals in a clean environment, faults (wrong key, ACME
server down, a CNAME loop, a CNAME into a zone mx1 may not update, propagation that never
completes), and a lineage left on an ACME account the host no longer has.

Needs the DNS master and resolver deployed (deploys/site.py has run once). The module deploys
Pebble and ACME once, after deleting the lineages, so the certificates are really issued by this
run.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from functools import partial

import pytest

from lab.topology import pyinfra_name
from pkinfra import zones
from pkinfra.agent.paths import HOOK_CONFIG
from tests.lab import run as lab_run
from tests.lab.run import CLEAN_ENV, certbot_renew, docker_exec, limits, pyinfra

HOSTS = [pyinfra_name("acme"), "web1.example.test", "mx1.example.test"]
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

sh = partial(lab_run.sh, timeout=120)


def deploy(*options: str) -> subprocess.CompletedProcess[str]:
    """pyinfra with Pebble and ACME on the ACME hosts; ``--dry`` (no ``-y``: the change detection
    is the dry run) or a real run."""
    return pyinfra(
        "lab/deploys/pebble.py",
        "deploys/acme.py",
        *limits(*HOSTS),
        inventory="inventory.py",
        options=options,
        yes="--dry" not in options,
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
    # Twice: the second renewal starts from a lineage a renewal already rewrote.
    for attempt in range(2):
        started = time.monotonic()
        run = docker_exec(
            "pkinfra-mx1", *CLEAN_ENV, "certbot", "renew", "--force-renewal", timeout=300
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
    run = docker_exec(
        "pkinfra-mx1",
        *CLEAN_ENV,
        "certbot",
        "renew",
        "--force-renewal",
        "--cert-name",
        "mail",
        "--server",
        "https://acme.example.test:14001/dir",
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


# -- faults in the DNS: a CNAME at mx1's shadow name --------------------------------------------

PRIMARY = "172.29.53.10"
RESOLVER = "172.29.53.53"
MX1_SHADOW = SHADOW_TARGETS[0] + "."
NAMED_CONF = zones.Layout().config_file  # pkinfra's one BIND file
NAMED_CONF_SAVED = "/tmp/pkinfra-test-acme-named.conf"
SERIAL = "openssl x509 -in /etc/letsencrypt/live/mail/cert.pem -noout -serial"


def nsupdate(line: str) -> subprocess.CompletedProcess[str]:
    """One update of the shadow zone with mx1's own key (its secret stays on mx1)."""
    script = f"server {PRIMARY}\nzone shadow.test\n{line}\nsend\n"
    return sh("pkinfra-mx1", f"printf {shlex.quote(script)} | nsupdate -k /etc/pkinfra/tsig.key")


def wait_for(check: str, container: str = "pkinfra-mx1", timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sh(container, check).returncode == 0:
            return True
        time.sleep(0.5)
    return False


def resolves_cleanly() -> str:
    """Shell: the resolver follows mx1's challenge chain to an answer (no loop, no SERVFAIL)."""
    return (
        f"dig @{RESOLVER} _acme-challenge.mx1.example.test TXT"
        " | grep -qE 'status: (NOERROR|NXDOMAIN)'"
        f' && [ -z "$(dig +norec +short @{PRIMARY} {MX1_SHADOW} CNAME)" ]'
        f' && [ -z "$(dig +norec +short @{AUTHORITATIVE[1]} {MX1_SHADOW} CNAME)" ]'
    )


@contextlib.contextmanager
def primary_configuration(sed_script: str) -> Iterator[None]:
    """pkinfra's BIND configuration on the primary changed by ``sed_script`` while the block runs.

    The rendered file is copied aside and put back afterwards (the same bytes, so the deploy
    sees no drift), with ``rndc reconfig`` each way.
    """
    changed = sh(
        "pkinfra-ns1",
        f"cp -p {NAMED_CONF} {NAMED_CONF_SAVED} && sed -i {shlex.quote(sed_script)} {NAMED_CONF}"
        " && named-checkconf && rndc reconfig",
    )
    try:
        assert changed.returncode == 0, changed.stdout + changed.stderr
        yield
    finally:
        sh(
            "pkinfra-ns1",
            f"[ ! -f {NAMED_CONF_SAVED} ] || {{ cp -p {NAMED_CONF_SAVED} {NAMED_CONF}"
            f" && rm -f {NAMED_CONF_SAVED} && rndc reconfig; }}",
        )


@contextlib.contextmanager
def shadow_cname(target: str) -> Iterator[None]:
    """mx1's shadow challenge name is a CNAME to ``target`` (TTL 1 s) while the block runs.

    No key may put a CNAME there (each grant is one name and one type), so the primary grants
    it to mx1's key for the duration; afterwards the CNAME is deleted, the grant taken back and
    the resolver checked to answer normally again.
    """
    assert challenge_txt() == "", "a challenge TXT is in the way of the CNAME"
    grant = f'grant "mx1.example.test" name {MX1_SHADOW} CNAME;'
    try:
        with primary_configuration(f"/update-policy {{/a {grant}"):
            try:
                added = nsupdate(f"update add {MX1_SHADOW} 1 CNAME {target}")
                assert added.returncode == 0, added.stdout + added.stderr
                assert wait_for(
                    " && ".join(
                        f"dig +norec +short @{server} {MX1_SHADOW} CNAME"
                        f" | grep -qx {shlex.quote(target)}"
                        for server in AUTHORITATIVE
                    )
                ), f"the CNAME to {target} did not reach every authoritative server"
                yield
            finally:
                nsupdate(f"update delete {MX1_SHADOW} CNAME")
    finally:
        # Waited for even when the test failed: the tests after it need a working chain.
        recovered = wait_for(resolves_cleanly())
    assert recovered, "the lab's DNS did not recover from the test CNAME"


def renew_mail(*env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """``certbot renew --force-renewal`` of mx1's lineage in a clean environment."""
    started = time.monotonic()
    run = certbot_renew("pkinfra-mx1", "mail", *env)
    return run, time.monotonic() - started


def auth_errors(run: subprocess.CompletedProcess[str]) -> dict[str, list[str]]:
    """What the auth hook wrote to stderr, by name, as certbot passes it on: every indented line
    after certbot's ``Hook '--manual-auth-hook' for <name> ran with error output:``."""
    errors: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in (run.stdout + run.stderr).splitlines():
        header = re.fullmatch(r"Hook '--manual-auth-hook' for (\S+) ran with error output:", line)
        if header:
            current = errors.setdefault(header.group(1), [])
        elif current is not None and line.startswith(" "):
            current.append(line.strip())
        else:
            current = None
    return errors


def test_cname_loop_fails_with_one_line_and_keeps_the_certificate(
    deployed: subprocess.CompletedProcess[str],
) -> None:
    before = sh("pkinfra-mx1", SERIAL).stdout
    with shadow_cname("_acme-challenge.mx1.example.test."):
        run, took = renew_mail()
    assert run.returncode != 0, run.stdout + run.stderr
    assert took < 60, f"certbot took {took:.0f} s"
    # mail.example.test's chain is intact: only mx1's hook fails, with one line.
    errors = auth_errors(run)
    assert list(errors) == ["mx1.example.test"], run.stdout + run.stderr
    [line] = errors["mx1.example.test"]
    assert line == (
        "pkinfra-certbot-hook: auth mx1.example.test: following CNAMEs from"
        " _acme-challenge.mx1.example.test: CNAME loop: _acme-challenge.mx1.example.test ->"
        " _acme-challenge.mx1.example.test.shadow.test -> _acme-challenge.mx1.example.test"
    )
    assert sh("pkinfra-mx1", SERIAL).stdout == before
    print(f"CNAME loop: certbot failed after {took:.1f} s: {line}")


def test_cname_into_a_zone_the_host_may_not_update_fails_with_one_line(
    deployed: subprocess.CompletedProcess[str],
) -> None:
    # The chain leaves the shadow zone for unsigned.test, where no host key may write.
    before = sh("pkinfra-mx1", SERIAL).stdout
    with shadow_cname("_acme-challenge.mx1.unsigned.test."):
        run, took = renew_mail()
    assert run.returncode != 0, run.stdout + run.stderr
    assert took < 60, f"certbot took {took:.0f} s"
    errors = auth_errors(run)
    assert list(errors) == ["mx1.example.test"], run.stdout + run.stderr
    [line] = errors["mx1.example.test"]
    assert line == (
        "pkinfra-certbot-hook: auth mx1.example.test: adding TXT at"
        " _acme-challenge.mx1.unsigned.test in zone unsigned.test via 172.29.53.10: REFUSED"
    )
    assert sh("pkinfra-mx1", SERIAL).stdout == before
    print(f"CNAME into unsigned.test: certbot failed after {took:.1f} s: {line}")


def test_propagation_that_never_completes_fails_in_bounded_time(
    deployed: subprocess.CompletedProcess[str],
) -> None:
    # The primary stops notifying ns2 (its next refresh is minutes away): ns2 answers as
    # always, but never with the new value. The hook's own configuration with a 5 s
    # propagation timeout (the deployed one waits 60 s).
    conf = "/tmp/pkinfra-test-hook.conf"
    made = sh(
        "pkinfra-mx1",
        f"sed 's/^propagation_timeout.*/propagation_timeout = 5/' {HOOK_CONFIG} > {conf}",
    )
    assert made.returncode == 0, made.stderr
    before = sh("pkinfra-mx1", SERIAL).stdout
    try:
        with primary_configuration("/also-notify/d"):
            run, took = renew_mail(f"PKINFRA_HOOK_CONFIG={conf}")
    finally:
        sh("pkinfra-mx1", f"rm -f {conf}")
        # ns2 catches up with the primary's serial now rather than at its next refresh.
        sh("pkinfra-ns1", "rndc notify shadow.test")
        in_step = wait_for(
            f'[ "$(dig +short @{PRIMARY} shadow.test SOA)"'
            f' = "$(dig +short @{AUTHORITATIVE[1]} shadow.test SOA)" ]'
        )
    assert in_step, "ns2 did not catch up with the primary"
    assert run.returncode != 0, run.stdout + run.stderr
    assert took < 60, f"certbot took {took:.0f} s"
    # One line from every auth hook run (certbot runs one per name still to validate, even
    # after one failed; Pebble may reuse mail's authorization from an earlier test), and none
    # succeeded; each withdrew its value, so the validation cannot pass by chance (Pebble's
    # resolver may well ask the primary).
    errors = auth_errors(run)
    assert "mx1.example.test" in errors, run.stdout + run.stderr
    assert set(errors) <= {"mx1.example.test", "mail.example.test"}
    assert ": published at " not in run.stdout + run.stderr
    for name, lines in errors.items():
        [line] = lines
        assert line.startswith(f"pkinfra-certbot-hook: auth {name}: waiting for TXT at"), line
        assert "after 5 s still not on 172.29.53.11 (" in line, line
        assert line.endswith("; value withdrawn"), line
    assert sh("pkinfra-mx1", SERIAL).stdout == before
    # Withdrawn at the primary by the hook itself; ns2 never had it.
    assert challenge_txt() == ""
    print(f"propagation never completes: certbot failed after {took:.1f} s: {line}")


# -- the ACME account: a lineage saved with an account the host no longer has ----------------

ACCOUNT_LINE = "sed -n 's/^account = //p' /etc/letsencrypt/renewal/mail.conf"
GONE = "0" * 32


def test_a_lineage_on_a_gone_account_is_moved_to_the_current_one(
    deployed: subprocess.CompletedProcess[str],
) -> None:
    conf = "/etc/letsencrypt/renewal/mail.conf"
    saved = "/tmp/pkinfra-test-mail.conf"
    account = sh("pkinfra-mx1", ACCOUNT_LINE).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", account), account
    before = sh("pkinfra-mx1", SERIAL).stdout
    broken = sh(
        "pkinfra-mx1", f"cp -p {conf} {saved} && sed -i 's/^account = .*/account = {GONE}/' {conf}"
    )
    assert broken.returncode == 0, broken.stderr
    try:
        # The fault is real: certbot's own renewal cannot use the lineage now.
        failing, _ = renew_mail()
        assert failing.returncode != 0, failing.stdout + failing.stderr
        assert sh("pkinfra-mx1", SERIAL).stdout == before
        assert f"/{GONE} does not exist" in failing.stderr, failing.stderr

        # --dry says why and changes nothing.
        preview = deploy("--dry")
        said = preview.stdout + preview.stderr
        assert preview.returncode == 0, said
        reason = f"certificate mail: its ACME account {GONE} is not on this host; moving to "
        assert reason + account in said, said
        assert sh("pkinfra-mx1", ACCOUNT_LINE).stdout.strip() == GONE

        run = deploy()
        out = run.stdout + run.stderr
        assert run.returncode == 0, out
        assert reason + account in out, out
        assert sh("pkinfra-mx1", ACCOUNT_LINE).stdout.strip() == account
        moved = sh("pkinfra-mx1", SERIAL).stdout
        assert moved != before, "the lineage was not renewed"
        # certbot's own renewal (cron, by hand) works again, on the current account.
        works, _ = renew_mail()
        assert works.returncode == 0, works.stdout + works.stderr
        assert sh("pkinfra-mx1", SERIAL).stdout != moved
    finally:
        # Only if the deploy did not move it: a renewed lineage's configuration is newer.
        sh(
            "pkinfra-mx1",
            f"if grep -q '^account = {GONE}' {conf}; then cp -p {saved} {conf}; fi; rm -f {saved}",
        )
    assert challenge_txt() == ""
