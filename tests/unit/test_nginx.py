"""pkinfra.nginx without nginx: the decision (who answers a name on port 80, and why), the
configuration reader (tokens, includes, server reduction) and the rendered files."""

from __future__ import annotations

from typing import Any

import pytest

from pkinfra import nginx
from pkinfra.nginx import INCLUDE_LINE, SITE, Config, challenge_plan, port80_servers

NAMES = ["example.com", "www.example.com"]
ADMIN = "/etc/nginx/sites-enabled/www"


def server(
    names: list[str],
    *,
    snippet: bool = False,
    rewrites: tuple[str, ...] = (),
    default: bool = False,
    addr: str = "*",
    file: str = ADMIN,
    line: int = 1,
) -> dict[str, Any]:
    return {
        "file": file,
        "line": line,
        "listen": [{"addr": addr, "default": default}],
        "names": names,
        "snippet": snippet,
        "rewrites": list(rewrites),
    }


CATCH_ALL = server(["_"], default=True, file="/etc/nginx/sites-enabled/default", line=21)

# (case, servers, own names, covered, problem fragments)
CASES: list[tuple[str, list[dict[str, Any]], list[str], dict[str, str], list[str]]] = [
    ("no server at all", [], NAMES, {}, []),
    ("only pkinfra's own server", [server(NAMES, file=SITE)], NAMES, {}, []),
    ("default_server catch-all without the snippet", [CATCH_ALL], NAMES, {}, []),
    (
        "default_server catch-all with the snippet",
        [{**CATCH_ALL, "snippet": True}],
        [],
        {n: "/etc/nginx/sites-enabled/default:21" for n in NAMES},
        [],
    ),
    (
        "catch-all with the snippet but a server-level return",
        [{**CATCH_ALL, "snippet": True, "rewrites": ["'return' (line 4)"]}],
        NAMES,
        {},
        [],
    ),
    (
        "admin server with the snippet",
        [CATCH_ALL, server(NAMES, snippet=True)],
        [],
        {n: f"{ADMIN}:1" for n in NAMES},
        [],
    ),
    (
        "admin server without the snippet",
        [CATCH_ALL, server(NAMES)],
        [],
        {},
        [f"{ADMIN}:1 answers example.com, www.example.com", f"add '{INCLUDE_LINE}'"],
    ),
    (
        "admin server with the snippet and a server-level return",
        [server(NAMES, snippet=True, rewrites=("'return' (line 4)",))],
        [],
        {},
        ["move its server-level 'return' (line 4) into 'location / { ... }'"],
    ),
    (
        "admin server without the snippet and with a server-level return",
        [server(NAMES, rewrites=("'return' (line 4)",))],
        [],
        {},
        [f"add '{INCLUDE_LINE}' to that server block and move its server-level 'return'"],
    ),
    (
        "partial overlap: the admin answers www only",
        [CATCH_ALL, server(["www.example.com"])],
        ["example.com"],
        {},
        [f"{ADMIN}:1 answers www.example.com but"],
    ),
    (
        "partial overlap with the snippet",
        [CATCH_ALL, server(["www.example.com"], snippet=True)],
        ["example.com"],
        {"www.example.com": f"{ADMIN}:1"},
        [],
    ),
    (
        "the only port-80 server is the default: it answers every name",
        [server(["www.example.com"], snippet=True)],
        [],
        {n: f"{ADMIN}:1" for n in NAMES},
        [],
    ),
    (
        "a leading wildcard answers both: pkinfra would take them away",
        [server(["*.example.com", "example.com"])],
        [],
        {},
        [f"{ADMIN}:1 answers example.com, www.example.com"],
    ),
    ("a wildcard of another domain", [server(["*.example.org"])], NAMES, {}, []),
    (
        "a dot name covers the domain and below",
        [server([".example.com"], snippet=True)],
        [],
        {n: f"{ADMIN}:1" for n in NAMES},
        [],
    ),
    (
        "a regex name",
        [server([r"~^w+\.example\.com$"])],
        ["example.com"],
        {},
        ["answers www.example.com"],
    ),
    (
        "an exact name beats a wildcard of another server",
        [
            server(["*.example.com"], line=1),
            server(["www.example.com"], snippet=True, line=9),
        ],
        ["example.com"],
        {"www.example.com": f"{ADMIN}:9"},
        [],
    ),
    (
        "the first of two servers with one exact name answers",
        [server(NAMES, line=1), server(NAMES, snippet=True, line=9)],
        [],
        {},
        [f"{ADMIN}:1 answers"],
    ),
    (
        "a loopback-only server is not seen from outside",
        [server(NAMES, addr="127.0.0.1")],
        NAMES,
        {},
        [],
    ),
    (
        "names differ only in case",
        [CATCH_ALL, server(["WWW.Example.COM"], snippet=True)],
        ["example.com"],
        {"www.example.com": f"{ADMIN}:1"},
        [],
    ),
]


@pytest.mark.parametrize(
    ("servers", "own", "covered", "problems"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_challenge_plan(
    servers: list[dict[str, Any]], own: list[str], covered: dict[str, str], problems: list[str]
) -> None:
    plan = challenge_plan(servers, NAMES)
    assert list(plan.own_names) == own
    assert plan.covered == covered
    text = "\n".join(plan.problems)
    assert len(plan.problems) == (1 if problems else 0), text
    for fragment in problems:
        assert fragment in text
    for line in plan.problems:
        assert "\n" not in line


def test_server_level_return_is_explained_in_the_problem() -> None:
    plan = challenge_plan([server(NAMES, rewrites=("'return' (line 4)",))], NAMES)
    assert plan.problems == (
        f"nginx: the port-80 server at {ADMIN}:1 answers example.com, www.example.com but cannot"
        f" serve their HTTP-01 challenges: add '{INCLUDE_LINE}' to that server block and move its"
        " server-level 'return' (line 4) into 'location / { ... }' (server-level return and"
        " rewrite run before any location is chosen, so the challenge location would never"
        " answer)",
    )


def test_own_server_also_listens_on_specific_addresses() -> None:
    plan = challenge_plan([server(["other.example.org"], addr="192.0.2.1")], NAMES)
    assert plan.own_names == tuple(NAMES)
    assert plan.addresses == ("192.0.2.1",)
    assert "    listen 192.0.2.1:80;\n" in nginx.server_block(plan.own_names, plan.addresses)


# -- reading the configuration ---------------------------------------------------------------


def test_tokens_follow_nginx_rules() -> None:
    text = 'return 301 https://${host}$request_uri; # c\nset $a "x;{}#\\"y" ;\na#b c;'
    assert [t[0] for t in nginx.tokenize(text)] == [
        "return", "301", "https://${host}$request_uri", ";",
        "set", "$a", 'x;{}#"y', ";",
        "a#b", "c", ";",
    ]  # fmt: skip
    assert nginx.tokenize("a\n\nb;")[1][1] == 3


FILES = {
    "/etc/nginx/nginx.conf": "events {}\nhttp {\n    include /etc/nginx/sites-enabled/*;\n}\n"
    "stream { server { listen 80; } }\n",
    "/etc/nginx/sites-enabled/default": (
        "server {\n    listen 80 default_server;\n    listen [::]:80 default_server;\n"
        "    server_name _;\n    root /var/www/html;\n}\n"
    ),
    "/etc/nginx/sites-enabled/www": (
        "upstream app { server 127.0.0.1:9000; }\n"
        "server {\n"
        "    listen 80;\n"
        "    server_name Example.com www.example.com;\n"
        "    include snippets/pkinfra-acme-challenge.conf;\n"
        '    auth_basic "private";\n'
        "    if ($scheme = http) { return 301 https://$host$request_uri; }\n"
        "    rewrite ^/old$ /new permanent;\n"
        "    rewrite ^/.well-known/(.*)$ /wk/$1;\n"
        "    location / { return 301 https://$host$request_uri; }\n"
        "}\n"
        "server { listen 443 ssl; server_name www.example.com; }\n"
        "server { server_name noport.example.com; }\n"
        "server { listen 127.0.0.1:8080; server_name status; }\n"
    ),
    "/etc/nginx/snippets/pkinfra-acme-challenge.conf": nginx.snippet(["/var/www/acme"]),
}


def test_port80_servers_reduced() -> None:
    servers = port80_servers(Config("/etc/nginx/nginx.conf", FILES))
    assert servers == [
        {
            "file": "/etc/nginx/sites-enabled/default",
            "line": 1,
            "listen": [{"addr": "*", "default": True}, {"addr": "[::]", "default": True}],
            "names": ["_"],
            "snippet": False,
            "rewrites": [],
        },
        {
            "file": "/etc/nginx/sites-enabled/www",
            "line": 2,
            "listen": [{"addr": "*", "default": False}],
            "names": ["example.com", "www.example.com"],
            "snippet": True,
            # The rewrite of /old does not catch a challenge; the one of /.well-known/ does.
            "rewrites": ["'if' (line 7)", "'rewrite' (line 9)"],
        },
        {
            "file": "/etc/nginx/sites-enabled/www",
            "line": 13,
            "listen": [{"addr": "*", "default": False}],
            "names": ["noport.example.com"],
            "snippet": False,
            "rewrites": [],
        },
    ]


def test_snippet_missing_is_read_as_empty_only_when_allowed() -> None:
    files = {k: v for k, v in FILES.items() if "snippets" not in k}
    with pytest.raises(nginx.NginxError, match=r"pkinfra-acme-challenge\.conf: not found"):
        Config("/etc/nginx/nginx.conf", files)
    config = Config("/etc/nginx/nginx.conf", files, missing_ok=[nginx.SNIPPET])
    assert [s["snippet"] for s in port80_servers(config)] == [False, True, False]


def test_unbalanced_braces_are_refused() -> None:
    with pytest.raises(nginx.NginxError, match="never closed"):
        Config("/n.conf", {"/n.conf": "http { server {\n"})
    with pytest.raises(nginx.NginxError, match="unexpected"):
        Config("/n.conf", {"/n.conf": "http { }\n}\n"})


def test_split_dump_keeps_files_and_lines() -> None:
    dump = (
        "# configuration file /etc/nginx/nginx.conf:\nhttp {\n  include a.conf;\n}\n\n"
        "# configuration file /etc/nginx/a.conf:\nserver {\n  listen 80;\n}\n\n"
    )
    main, files = nginx.split_dump(dump)
    assert main == "/etc/nginx/nginx.conf"
    assert files["/etc/nginx/a.conf"] == "server {\n  listen 80;\n}\n"
    assert port80_servers(Config(main, files))[0]["line"] == 1


def test_error_place_hides_quoted_values() -> None:
    err = (
        '2026/01/01 00:00:00 [emerg] 1#1: invalid parameter "hunter2" in'
        " /etc/nginx/sites-enabled/www:3\n"
        "nginx: configuration file /etc/nginx/nginx.conf test failed"
    )
    assert nginx._error_place(err) == 'invalid parameter "..." in /etc/nginx/sites-enabled/www:3'


# -- rendering ---------------------------------------------------------------------------------


def test_snippet_one_webroot() -> None:
    text = nginx.snippet(["/var/www/acme"])
    assert "location ^~ /.well-known/acme-challenge/ {\n    root /var/www/acme;\n" in text
    assert "    try_files $uri =404;\n}\n" in text


def test_snippet_several_webroots_tried_in_turn() -> None:
    text = nginx.snippet(["/srv/b", "/srv/a", "/srv/a"])
    assert "    root /;\n" in text
    assert "    try_files /srv/a$uri /srv/b$uri =404;\n" in text


def test_server_block_includes_the_snippet() -> None:
    text = nginx.server_block(NAMES)
    assert "    server_name example.com www.example.com;\n" in text
    assert f"    include {nginx.SNIPPET};\n" in text
    assert "listen 80;" in text and "listen [::]:80;" in text
