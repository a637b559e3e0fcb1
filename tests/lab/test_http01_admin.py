"""HTTP-01 on web1 beside an admin's own port-80 server: the admin redirects web1's names to
HTTPS in a file of theirs that includes pkinfra's snippet; pkinfra then writes no server block
for those names, never touches the admin's file, and a forced renewal by HTTP-01 succeeds while
the redirect keeps working. Afterwards the admin's file is removed and the deploy run again.

Run by the lead (marker ``lab``); needs the site deployed (``site_deployed``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from pkinfra.nginx import INCLUDE_LINE, SITE, SNIPPET
from tests.lab import run as lab_run
from tests.lab.run import pyinfra

ROOT = Path(__file__).resolve().parents[2]
WEB1 = "pkinfra-web1"
ADMIN_FILE = "/etc/nginx/sites-enabled/admin-redirect"
NAMES = "web1.example.test www.example.test"
ADMIN_SERVER = f"""# The site admin's own redirect (not pkinfra's)
server {{
    listen 80;
    listen [::]:80;
    server_name {NAMES};
    {INCLUDE_LINE}
    location / {{
        return 301 https://$host$request_uri;
    }}
}}
"""

pytestmark = pytest.mark.lab


#: A command on web1 (the shell command line, through ``sh -c``).
sh = partial(lab_run.sh, WEB1, timeout=120)


def deploy(*extra: str) -> subprocess.CompletedProcess[str]:
    return pyinfra(
        "deploys/acme.py",
        "--limit",
        "web1.example.test",
        inventory="inventory.py",
        options=extra,
        timeout=600,
    )


def admin_sha256() -> str:
    return sh(f"sha256sum {ADMIN_FILE} | cut -c1-64").stdout.strip()


@pytest.fixture(scope="module")
def admin_site(site_deployed: str) -> Iterator[str]:
    """The admin's redirect in place (after pkinfra's snippet exists), nginx reloaded by the
    admin; removed again afterwards and the deploy rerun."""
    assert sh(f"test -f {SNIPPET}").returncode == 0, "the site deploy wrote no snippet"
    written = sh(f"cat > {ADMIN_FILE}", stdin=ADMIN_SERVER, timeout=30)
    assert written.returncode == 0, written.stderr
    reload = sh("nginx -t -q && systemctl reload nginx")
    assert reload.returncode == 0, reload.stderr
    try:
        yield admin_sha256()
    finally:
        sh(f"rm -f {ADMIN_FILE}")
        run = deploy()
        assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
        assert sh(f"test -f {SITE}").returncode == 0, "pkinfra's server block did not come back"


def test_deploy_leaves_the_names_to_the_admin_server(admin_site: str) -> None:
    run = deploy()
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert admin_sha256() == admin_site, "pkinfra changed the admin's file"
    assert sh(f"test -e {SITE}").returncode != 0, "pkinfra kept a server block for the names"
    assert sh("nginx -t").returncode == 0
    assert "conflicting server name" not in sh("nginx -t 2>&1").stdout
    again = deploy("-v")  # -v: pyinfra prints why an operation changes nothing
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "nginx serves HTTP-01 challenges: /etc/nginx/sites-enabled/admin-redirect" in (
        again.stdout + again.stderr
    )


def test_renewal_by_http01_through_the_admin_server(admin_site: str) -> None:
    before = sh("openssl x509 -in /etc/letsencrypt/live/web/cert.pem -noout -serial").stdout
    renew = sh(
        "env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin certbot renew --force-renewal --cert-name web",
        timeout=300,
    )
    assert renew.returncode == 0, renew.stdout + renew.stderr
    after = sh("openssl x509 -in /etc/letsencrypt/live/web/cert.pem -noout -serial").stdout
    assert after and after != before
    assert "authenticator = webroot" in sh("cat /etc/letsencrypt/renewal/web.conf").stdout
    assert admin_sha256() == admin_site


def test_admin_redirect_still_answers(admin_site: str) -> None:
    for name in NAMES.split():
        out = sh(
            f"curl -s -o /dev/null -w '%{{http_code}} %{{redirect_url}}'"
            f" --resolve {name}:80:127.0.0.1 http://{name}/some/page"
        ).stdout
        assert out == f"301 https://{name}/some/page", out
    probe = sh(
        "echo probe > /var/www/acme/.well-known/acme-challenge/pkinfra-probe"
        " 2>/dev/null || { mkdir -p /var/www/acme/.well-known/acme-challenge &&"
        " echo probe > /var/www/acme/.well-known/acme-challenge/pkinfra-probe; };"
        " curl -s --resolve www.example.test:80:127.0.0.1"
        " http://www.example.test/.well-known/acme-challenge/pkinfra-probe;"
        " rm -f /var/www/acme/.well-known/acme-challenge/pkinfra-probe"
    ).stdout
    assert probe.strip() == "probe"
    assert admin_sha256() == admin_site
