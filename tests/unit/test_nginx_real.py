"""pkinfra.nginx against a real nginx binary (Debian's ``nginx``), on temporary configurations:
the host-side reader is the fact's exact program (this file fed to ``python3 -I -``), the
rendered snippet and server block pass ``nginx -t`` beside an admin's redirect, and a real nginx
on loopback serves a challenge file and the admin's redirect from one server."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pkinfra import nginx

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="needs Debian's nginx package")
NAMES = ["example.com", "www.example.com"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Site:
    """A temporary nginx prefix with Debian's layout (sites-enabled/, snippets/)."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        # Only checked (nginx -t binds nothing): any address; served: loopback only.
        self.address = f"{port}"
        for sub in ("sites-enabled", "snippets", "www/.well-known/acme-challenge", "temp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        temps = " ".join(
            f"{k}_temp_path {root}/temp/{k};"
            for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        self.conf = root / "nginx.conf"
        self.conf.write_text(
            f"pid {root}/nginx.pid;\nerror_log {root}/error.log;\nevents {{}}\n"
            f"http {{\n    access_log off;\n    {temps}\n"
            f"    include {root}/sites-enabled/*;\n}}\n"
        )
        self.snippet = root / "snippets/pkinfra-acme-challenge.conf"
        self.site = root / "sites-enabled/pkinfra-acme-challenge"

    def listen(self, text: str) -> str:
        # The production files listen on 80; here on a loopback port nobody else uses.
        return text.replace("listen 80;", f"listen {self.address};").replace(
            "    listen [::]:80;\n", ""
        )

    def write_pkinfra(self, names: list[str] | None) -> None:
        self.snippet.write_text(nginx.snippet([str(self.root / "www")]))
        if names:
            self.site.write_text(self.listen(nginx.server_block(names, include=str(self.snippet))))

    def nginx(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert NGINX is not None
        return subprocess.run(
            [NGINX, "-c", str(self.conf), *args], capture_output=True, text=True, timeout=30
        )

    def fact(self) -> dict[str, Any]:
        """The fact's program as the host runs it: this module's source on stdin."""
        run = subprocess.run(
            [
                sys.executable,
                "-I",
                "-",
                str(self.snippet),
                str(self.site),
                "--port",
                str(self.port),
                "--",
                "-c",
                str(self.conf),
            ],
            input=Path(nginx.__file__).read_text(),
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": f"{Path(str(NGINX)).parent}:/usr/bin:/bin"},
        )
        assert run.returncode == 0, run.stderr
        result: dict[str, Any] = json.loads(run.stdout)
        return result


@pytest.fixture
def site() -> Iterator[Site]:
    # Not under pytest's tmp_path (0700): nginx's workers run as nobody and must read the webroot.
    root = Path(tempfile.mkdtemp(prefix="pkinfra-nginx-"))
    root.chmod(0o755)
    try:
        yield Site(root, free_port())
    finally:
        shutil.rmtree(root, ignore_errors=True)


REDIRECT = """server {{
    listen {listen};
    server_name www.example.com example.com;
{include}    location / {{
        return 301 https://$host$request_uri;
    }}
}}
"""


def test_fresh_site_gets_pkinfra_server_block(site: Site) -> None:
    fact = site.fact()
    assert fact["state"] == "checked" and fact["servers"] == []
    plan = nginx.challenge_plan(fact["servers"], NAMES, own=[str(site.site)])
    assert plan.own_names == tuple(NAMES)
    site.write_pkinfra(list(plan.own_names))
    assert site.nginx("-t").returncode == 0
    again = site.fact()
    assert [s["file"] for s in again["servers"]] == [str(site.site)]
    assert nginx.challenge_plan(again["servers"], NAMES, own=[str(site.site)]).own_names == tuple(
        NAMES
    )


def test_admin_redirect_without_snippet_is_named(site: Site) -> None:
    admin = site.root / "sites-enabled/admin"
    admin.write_text(REDIRECT.format(listen=site.address, include=""))
    fact = site.fact()
    plan = nginx.challenge_plan(fact["servers"], NAMES, own=[str(site.site)])
    assert plan.own_names == ()
    assert plan.problems == (
        f"nginx: the port-80 server at {admin}:1 answers example.com, www.example.com but"
        f" cannot serve their HTTP-01 challenges: add '{nginx.INCLUDE_LINE}' to that server block",
    )


def test_admin_included_the_snippet_before_pkinfra_wrote_it(site: Site) -> None:
    include = f"    include {site.snippet};\n"
    (site.root / "sites-enabled/admin").write_text(
        REDIRECT.format(listen=site.address, include=include)
    )
    assert site.nginx("-t").returncode != 0
    fact = site.fact()
    assert fact["state"] == "snippet-missing"
    plan = nginx.challenge_plan(fact["servers"], NAMES, own=[str(site.site)])
    assert plan.own_names == () and plan.problems == ()
    site.write_pkinfra(None)
    assert site.nginx("-t").returncode == 0
    assert site.fact()["state"] == "checked"


def test_server_level_return_is_found_by_the_reader(site: Site) -> None:
    (site.root / "sites-enabled/admin").write_text(
        f"server {{\n    listen {site.address};\n    server_name www.example.com;\n"
        f"    include {site.snippet};\n    return 301 https://$host$request_uri;\n}}\n"
    )
    site.write_pkinfra(None)
    assert site.nginx("-t").returncode == 0  # nginx accepts it; the challenge would never answer
    fact = site.fact()
    (server,) = fact["servers"]
    assert server["snippet"] is True and server["rewrites"] == ["'return' (line 5)"]


def test_secrets_in_the_configuration_do_not_leave_the_host(site: Site) -> None:
    (site.root / "sites-enabled/app").write_text(
        f"server {{\n    listen {site.address};\n    server_name app.example.com;\n"
        '    location / { proxy_set_header Authorization "Basic c2VjcmV0LXRva2Vu"; }\n}\n'
    )
    out = json.dumps(site.fact())
    assert "c2VjcmV0" not in out and "Authorization" not in out
    assert "app.example.com" in out


def test_broken_configuration_is_reported_without_its_values(site: Site) -> None:
    (site.root / "sites-enabled/app").write_text('server { listen "hunter2x"; }\n')
    fact = site.fact()
    assert fact["state"] == "invalid"
    assert "hunter2x" not in json.dumps(fact)
    assert str(site.root / "sites-enabled/app") in str(fact["error"])


@pytest.fixture
def running(site: Site) -> Iterator[Site]:
    """nginx on 127.0.0.1:<free port> in the temporary prefix; stopped afterwards."""
    site.address = f"127.0.0.1:{site.port}"
    include = f"    include {site.snippet};\n"
    (site.root / "sites-enabled/admin").write_text(
        REDIRECT.format(listen=site.address, include=include)
    )
    (site.root / "sites-enabled/other").write_text(
        f"server {{\n    listen 127.0.0.1:{site.port} default_server;\n    server_name _;\n"
        "    return 404;\n}\n"
    )
    site.write_pkinfra(["only-pkinfra.example.com"])
    check = site.nginx("-t")
    assert check.returncode == 0, check.stderr
    started = site.nginx()
    assert started.returncode == 0, started.stderr
    try:
        for _ in range(50):
            if (site.root / "nginx.pid").exists():
                break
            time.sleep(0.1)
        yield site
    finally:
        site.nginx("-s", "stop")
        for _ in range(50):
            if not (site.root / "nginx.pid").exists():
                break
            time.sleep(0.1)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def fetch(port: int, host: str, path: str) -> tuple[int, str, str]:
    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, response.read().decode(), response.headers.get("Location", "")
    except urllib.error.HTTPError as exc:
        return exc.code, "", exc.headers.get("Location", "")


def test_challenge_and_admin_redirect_work_together(running: Site) -> None:
    token = "pkinfra-token_0123"
    (running.root / "www/.well-known/acme-challenge" / token).write_text("token.thumbprint")
    port = running.port
    assert fetch(port, "www.example.com", f"/.well-known/acme-challenge/{token}") == (
        200, "token.thumbprint", "",
    )  # fmt: skip
    status, _, location = fetch(port, "www.example.com", "/index.html")
    assert (status, location) == (301, "https://www.example.com/index.html")
    assert fetch(port, "www.example.com", "/.well-known/acme-challenge/missing")[0] == 404
    # pkinfra's own server block answers a name no admin server has; the catch-all the rest.
    assert fetch(port, "only-pkinfra.example.com", f"/.well-known/acme-challenge/{token}")[0] == 200
    assert fetch(port, "only-pkinfra.example.com", "/")[0] == 404
    assert fetch(port, "elsewhere.example.com", f"/.well-known/acme-challenge/{token}")[0] == 404


def test_several_webroots_are_tried_in_turn(running: Site) -> None:
    second = running.root / "www2"
    (second / ".well-known/acme-challenge").mkdir(parents=True)
    (second / ".well-known/acme-challenge/t2").write_text("second")
    running.snippet.write_text(nginx.snippet([str(running.root / "www"), str(second)]))
    assert running.nginx("-s", "reload").returncode == 0
    time.sleep(0.5)
    assert fetch(running.port, "example.com", "/.well-known/acme-challenge/t2")[:2] == (
        200,
        "second",
    )
    # nginx resolves the dots before choosing a location: never a file outside a webroot.
    status, body, _ = fetch(
        running.port, "example.com", "/.well-known/acme-challenge/../../nginx.conf"
    )
    assert status != 200 and "events" not in body
