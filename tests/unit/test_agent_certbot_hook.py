"""The DNS-01 hook against a real BIND primary + secondary (tests/unit/named_fixture.py).

The hook runs in-process through ``main`` with a configuration file and certbot's environment,
as certbot would run it; what the servers serve is read back with RD=0 queries.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.query
import pytest

from pkinfra.agent.certbot_hook import HookConfig, HookError, challenge_name, main, txt_value
from tests.unit.named_fixture import (
    MX1_CHALLENGE,
    WEB1_CHALLENGE,
    NamedLab,
    free_port,
    named_binary,
    running_lab,
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NamedLab]:
    if named_binary() is None:
        pytest.skip("named is not installed (apt-get install bind9); the project setup installs it")
    with running_lab(tmp_path_factory.mktemp("named")) as running:
        yield running


def write_config(lab: NamedLab, tmp_path: Path, key: str = "mx1-key", **extra: str) -> Path:
    settings = {
        "tsig_key": str(lab.key_file(key)),
        "ttl": "5",
        "propagation_timeout": "10",
        "query_timeout": "1",
        "resolvers": lab.primary.server,
        "port": str(lab.primary.port),
        "server_addresses": f"ns2.example.test={lab.secondary.server}",
        # The fixture's servers do not recurse: there is no resolver to wait for.
        "resolver_check": "no",
        "zone_cache": str(tmp_path / "zones.json"),
        **extra,
    }
    path = tmp_path / f"hook-{uuid.uuid4().hex[:8]}.conf"
    path.write_text("[dns-01]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
    return path


def hook(action: str, config: Path, domain: str, validation: str) -> int:
    env = {
        "PKINFRA_HOOK_CONFIG": str(config),
        "CERTBOT_DOMAIN": domain,
        "CERTBOT_VALIDATION": validation,
    }
    return main([action], env)


def token() -> str:
    return uuid.uuid4().hex


def served(lab: NamedLab, name: str) -> list[set[str]]:
    return [lab.values(server, name, "TXT") for server in lab.servers]


# --- no server needed ----------------------------------------------------------------------


def test_challenge_name_and_value() -> None:
    assert challenge_name("MX1.example.test.") == "_acme-challenge.mx1.example.test"
    assert challenge_name("*.example.test") == "_acme-challenge.example.test"
    assert txt_value("abc-_9") == '"abc-_9"'
    for bad in ("", 'a"b', "a b", "a;b"):
        with pytest.raises(HookError):
            txt_value(bad)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ttl = 5\n", "tsig_key is missing"),
        ("tsig_key = /k\nttl = soon\n", "ttl must be a number"),
        ("tsig_key = /k\npropagation_timeout = -1\n", "must be positive"),
        ("tsig_key = /k\nserver = x\n", "unknown setting(s) server"),
        ("tsig_key = /k\nresolver_check = maybe\n", "resolver_check must be yes or no"),
        ("tsig_key = /k\nserver_addresses = ns2\n", "wants name=address"),
    ],
)
def test_config_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "hook.conf"
    path.write_text("[dns-01]\n" + text)
    with pytest.raises(HookError, match=message.replace("(", r"\(").replace(")", r"\)")):
        HookConfig.from_file(str(path))


def test_usage_and_missing_environment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([], {}) == 2
    assert main(["auth"], {"PKINFRA_HOOK_CONFIG": str(tmp_path / "none")}) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "pkinfra-certbot-hook: auth ?: CERTBOT_DOMAIN is not set (run me as certbot's manual hook)"
    )


def test_missing_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = {"PKINFRA_HOOK_CONFIG": str(tmp_path / "absent.conf"), "CERTBOT_DOMAIN": "a.test"}
    assert main(["auth"], env) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "reading " in err and "No such file or directory" in err


# --- against BIND ----------------------------------------------------------------------------


def test_auth_follows_the_cname_and_waits_for_every_server(
    lab: NamedLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(lab, tmp_path)
    value = token()
    assert hook("auth", config, "mx1.example.test", value) == 0
    # Returned only once both servers serve it: no waiting here.
    assert all(f'"{value}"' in texts for texts in served(lab, MX1_CHALLENGE))
    out = capsys.readouterr().out
    assert f"published at {MX1_CHALLENGE.rstrip('.')}" in out
    assert hook("cleanup", config, "mx1.example.test", value) == 0
    assert lab.values(lab.primary, MX1_CHALLENGE, "TXT") == set()


def test_two_hops_with_the_other_hosts_key(lab: NamedLab, tmp_path: Path) -> None:
    config = write_config(lab, tmp_path, key="web1-key")
    value = token()
    assert hook("auth", config, "web1.example.test", value) == 0
    assert all(f'"{value}"' in texts for texts in served(lab, WEB1_CHALLENGE))
    assert hook("cleanup", config, "web1.example.test", value) == 0


def test_wildcard_and_apex_share_a_name_and_cleanup_removes_only_its_value(
    lab: NamedLab, tmp_path: Path
) -> None:
    config = write_config(lab, tmp_path)
    apex, wild = token(), token()
    assert hook("auth", config, "mx1.example.test", apex) == 0
    assert hook("auth", config, "*.mx1.example.test", wild) == 0
    assert lab.values(lab.primary, MX1_CHALLENGE, "TXT") == {f'"{apex}"', f'"{wild}"'}
    assert hook("cleanup", config, "mx1.example.test", apex) == 0
    # Cleanup does not wait; the secondary follows within milliseconds.
    assert lab.values(lab.primary, MX1_CHALLENGE, "TXT") == {f'"{wild}"'}
    assert hook("cleanup", config, "*.mx1.example.test", wild) == 0
    assert lab.values(lab.primary, MX1_CHALLENGE, "TXT") == set()


def test_cname_into_a_name_the_key_may_not_update_is_one_line(
    lab: NamedLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # _acme-challenge.www leads to web1's shadow name: mx1's key is refused there.
    config = write_config(lab, tmp_path)
    assert hook("auth", config, "www.example.test", token()) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("pkinfra-certbot-hook: auth www.example.test: adding TXT at ")
    assert WEB1_CHALLENGE.rstrip(".") in err and "REFUSED" in err


def test_wrong_secret_is_one_line(
    lab: NamedLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "wrong.key"
    key.write_text(
        'key "mx1-key" { algorithm hmac-sha256; '
        'secret "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; };\n'
    )
    key.chmod(0o600)
    config = write_config(lab, tmp_path, tsig_key=str(key))
    assert hook("auth", config, "mx1.example.test", token()) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "BADSIG" in err
    assert "MDEyMzQ1" not in err


def test_propagation_that_never_completes_fails_in_bounded_time(
    lab: NamedLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # ns2 "lives" on a port nobody listens on: the primary serves it, ns2 never will.
    dead = f"127.0.0.1#{free_port()}"
    config = write_config(
        lab, tmp_path, propagation_timeout="1.5", server_addresses=f"ns2.example.test={dead}"
    )
    value = token()
    started = time.monotonic()
    assert hook("auth", config, "mx1.example.test", value) == 1
    assert time.monotonic() - started < 6
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "still not on" in err and dead in err
    assert err.rstrip().endswith("; value withdrawn")
    # Withdrawn before certbot asks for validation (it does even after a failed auth hook).
    assert f'"{value}"' not in lab.values(lab.primary, MX1_CHALLENGE, "TXT")
    # certbot's cleanup hook still runs; nothing left to delete is no error.
    assert hook("cleanup", config, "mx1.example.test", value) == 0


def test_the_zone_is_remembered_and_a_stale_hint_costs_one_retry(
    lab: NamedLab, tmp_path: Path
) -> None:
    config = write_config(lab, tmp_path)
    value = token()
    assert hook("auth", config, "mx1.example.test", value) == 0
    cache = tmp_path / "zones.json"
    assert json.loads(cache.read_text()) == {
        "_acme-challenge.mx1.example.test": [MX1_CHALLENGE, "shadow.example.test."]
    }
    assert hook("cleanup", config, "mx1.example.test", value) == 0
    # A hint naming the wrong zone: the update is refused there, retried without the hint.
    cache.write_text(json.dumps({"_acme-challenge.mx1.example.test": [MX1_CHALLENGE, "test."]}))
    value = token()
    assert hook("auth", config, "mx1.example.test", value) == 0
    assert f'"{value}"' in lab.values(lab.primary, MX1_CHALLENGE, "TXT")
    assert json.loads(cache.read_text())["_acme-challenge.mx1.example.test"][1] == (
        "shadow.example.test."
    )
    assert hook("cleanup", config, "mx1.example.test", value) == 0
    # Garbage in the cache is ignored.
    cache.write_text("not json")
    assert hook("auth", config, "mx1.example.test", value) == 0
    assert hook("cleanup", config, "mx1.example.test", value) == 0


def test_a_remembered_zone_is_used_and_the_new_name_is_not_asked_about(
    lab: NamedLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(lab, tmp_path)
    value = token()
    assert hook("auth", config, "mx1.example.test", value) == 0
    assert hook("cleanup", config, "mx1.example.test", value) == 0
    # Second run: the cache names the zone, so the target is never looked up with RD=1 (what
    # would make a resolver hold it as nonexistent); only RD=0 propagation checks touch it.
    recursive: list[str] = []
    real = dns.query.udp_with_fallback

    def spy(query: dns.message.Message, *args: Any, **kwargs: Any) -> Any:
        if query.flags & dns.flags.RD:
            recursive.append(query.question[0].name.to_text())
        return real(query, *args, **kwargs)

    monkeypatch.setattr(dns.query, "udp_with_fallback", spy)
    value = token()
    assert hook("auth", config, "mx1.example.test", value) == 0
    assert hook("cleanup", config, "mx1.example.test", value) == 0
    assert recursive, "the chain's start is still looked up"
    assert MX1_CHALLENGE not in recursive


def test_a_damaged_cache_entry_is_ignored(lab: NamedLab, tmp_path: Path) -> None:
    config = write_config(lab, tmp_path)
    cache = tmp_path / "zones.json"
    # A "zone" that cannot hold the target: not taken as a hint at all.
    cache.write_text(json.dumps({"_acme-challenge.mx1.example.test": [MX1_CHALLENGE, "other."]}))
    value = token()
    assert hook("auth", config, "mx1.example.test", value) == 0
    assert f'"{value}"' in lab.values(lab.primary, MX1_CHALLENGE, "TXT")
    assert json.loads(cache.read_text())["_acme-challenge.mx1.example.test"] == [
        MX1_CHALLENGE,
        "shadow.example.test.",
    ]
    assert hook("cleanup", config, "mx1.example.test", value) == 0
