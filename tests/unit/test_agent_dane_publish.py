"""The host's TLSA publisher against a real BIND primary and secondary (named_fixture)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pkinfra import tlsa
from pkinfra.agent import dane_publish, delivery
from tests.helpers import self_signed
from tests.unit.named_fixture import MX1_TLSA, NamedLab, named_binary, running_lab

OWNER = "_25._tcp.mx1.example.test."


@pytest.fixture(scope="module")
def named(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NamedLab]:
    if named_binary() is None:
        pytest.skip("named is not installed (apt-get install bind9); the project setup installs it")
    with running_lab(tmp_path_factory.mktemp("named")) as running:
        yield running


def certificate(directory: Path, name: str) -> tuple[Path, str]:
    cert = directory / f"{name}.pem"
    self_signed(directory / "k.pem", cert, f"/CN={name}")
    return cert, tlsa.TLSARecord.from_pem(cert.read_bytes()).to_text()


def config(named: NamedLab, tmp_path: Path, certificates: list[str], **extra: Any) -> Path:
    path = tmp_path / "dane.json"
    path.write_text(
        json.dumps(
            {
                "tsig_key": str(named.key_file("mx1-key")),
                "ttl": 5,
                "timeout": 10,
                "resolvers": [named.primary.server],
                "port": named.primary.port,
                "server_addresses": {"ns2.example.test": named.secondary.server},
                "publications": [{"owner": OWNER, "lineage": "mail", "certificates": certificates}],
                **extra,
            }
        )
    )
    return path


def served(named: NamedLab) -> dict[str, set[str]]:
    return {s.name: named.values(s, MX1_TLSA, "TLSA") for s in named.servers}


def test_publish_follows_the_cname_and_rolls_over_without_a_gap(
    named: NamedLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    current, current_rr = certificate(tmp_path, "current")
    nxt, next_rr = certificate(tmp_path, "next")
    cfg = config(named, tmp_path, [str(current), str(nxt)])

    # Only the current certificate exists at first (the next lineage is not issued yet).
    nxt.rename(tmp_path / "later.pem")
    assert dane_publish.main(["--config", str(cfg)]) == 0
    assert "published 1 record(s) (+1 -0)" in capsys.readouterr().out
    assert all(v == {current_rr} for v in served(named).values())
    assert dane_publish.main(["--config", str(cfg)]) == 0
    assert "1 record(s) current" in capsys.readouterr().out

    # Rollover, step 1: current + next; the gate then says the next record is out everywhere.
    (tmp_path / "later.pem").rename(nxt)
    assert dane_publish.main(["--config", str(cfg)]) == 0
    assert all(v == {current_rr, next_rr} for v in served(named).values())
    assert dane_publish.main(["--config", str(cfg), "--check", "--lineage", "mail"]) == 0

    # Step 2: the service uses the next key, the old record goes.
    cfg = config(named, tmp_path, [str(nxt)])
    assert dane_publish.main(["--config", str(cfg)]) == 0
    assert "(+0 -1)" in capsys.readouterr().out
    assert all(v == {next_rr} for v in served(named).values())


def test_check_and_gate_say_no_while_a_record_is_not_served(
    named: NamedLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh, _ = certificate(tmp_path, "unpublished")
    cfg = config(named, tmp_path, [str(fresh)])
    assert dane_publish.main(["--config", str(cfg), "--check"]) == 1
    assert "1 to add" in capsys.readouterr().err
    assert dane_publish.main(["--config", str(cfg), "--gate"]) == 1
    assert "not served everywhere yet" in capsys.readouterr().err


def test_gate_waits_until_the_record_has_been_served_for_the_ttl(
    named: NamedLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The set as it stands is served with this TTL first (an earlier test may have left it with
    # a longer one, which the gate would rightly wait for: below).
    warm, _ = certificate(tmp_path, "warm")
    assert dane_publish.main(["--config", str(config(named, tmp_path, [str(warm)], ttl=2))]) == 0
    cert, _ = certificate(tmp_path, "gated")
    seen = tmp_path / "seen.json"
    cfg = config(named, tmp_path, [str(cert)], ttl=2, seen_file=str(seen))
    assert dane_publish.main(["--config", str(cfg)]) == 0
    first = json.loads(seen.read_text())[OWNER]
    begin = time.monotonic()
    assert dane_publish.main(["--config", str(cfg), "--gate"]) == 0
    waited = time.monotonic() - begin
    assert 1.0 <= waited < 5.0, waited  # the rest of the TTL, not more
    assert json.loads(seen.read_text())[OWNER] == first, "first-seen times are kept"
    # Served long enough: no wait at all.
    begin = time.monotonic()
    assert dane_publish.main(["--config", str(cfg), "--gate"]) == 0
    assert time.monotonic() - begin < 1.0


def test_a_lowered_ttl_holds_the_gate_for_the_ttl_the_set_was_served_with(
    named: NamedLab, tmp_path: Path
) -> None:
    """The set was served with a 4 s TTL; the inventory then lowers it to 1 s and a new key's
    record joins: a cache may keep the set without it for 4 s, so the gate waits for that."""
    old, _ = certificate(tmp_path, "old")
    assert dane_publish.main(["--config", str(config(named, tmp_path, [str(old)], ttl=4))]) == 0
    new, new_rr = certificate(tmp_path, "new")
    seen = tmp_path / "seen.json"
    cfg = config(named, tmp_path, [str(new)], ttl=1, seen_file=str(seen))
    assert dane_publish.main(["--config", str(cfg)]) == 0
    assert json.loads(seen.read_text())[dane_publish.Seen.HELD] == {OWNER: {new_rr: 4}}
    begin = time.monotonic()
    assert dane_publish.main(["--config", str(cfg), "--gate"]) == 0
    waited = time.monotonic() - begin
    assert 3.0 <= waited < 6.0, waited
    # Once the set holds only records seen long enough, nothing is held any more.
    assert dane_publish.main(["--config", str(cfg), "--gate"]) == 0
    cfg = config(named, tmp_path, [str(old)], ttl=1, seen_file=str(seen))
    assert dane_publish.main(["--config", str(cfg)]) == 0
    assert dane_publish.Seen.HELD not in json.loads(seen.read_text())


def test_a_service_still_on_the_old_key_keeps_its_record(
    named: NamedLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, old_rr = certificate(tmp_path, "served-old")
    new, new_rr = certificate(tmp_path, "lineage-new")
    served_copy = tmp_path / "service.crt"
    served_copy.write_bytes(old.read_bytes())
    mapping = tmp_path / "services.json"
    mapping.write_text(
        json.dumps(
            {
                "services": [
                    {
                        "name": "postfix",
                        "lineage": "mail",
                        "files": [{"path": str(served_copy), "content": "fullchain"}],
                    }
                ]
            }
        )
    )
    cfg = config(named, tmp_path, [str(new)], services_mapping=str(mapping))
    assert dane_publish.main(["--config", str(cfg)]) == 0
    assert all(v == {old_rr, new_rr} for v in served(named).values())
    # Delivered: the next publication drops the old record.
    served_copy.write_bytes(new.read_bytes())
    assert dane_publish.main(["--config", str(cfg), "--check"]) == 1
    assert dane_publish.main(["--config", str(cfg)]) == 0
    assert all(v == {new_rr} for v in served(named).values())


def test_unknown_lineage_does_nothing(
    named: NamedLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, _ = certificate(tmp_path, "x")
    cfg = config(named, tmp_path, [str(cert)])
    before = served(named)
    assert dane_publish.main(["--config", str(cfg), "--lineage", "www"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert served(named) == before


def test_a_refused_update_is_one_line(
    named: NamedLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, _ = certificate(tmp_path, "y")
    cfg = config(named, tmp_path, [str(cert)], tsig_key=str(named.key_file("web1-key")))
    assert dane_publish.main(["--config", str(cfg)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("pkinfra-dane-publish: ") and "REFUSED" in err
    assert len(err.splitlines()) == 1


def test_a_service_reading_in_place_keeps_the_record_of_what_it_was_told(
    named: NamedLab, tmp_path: Path
) -> None:
    old, old_rr = certificate(tmp_path, "told-old")
    new, new_rr = certificate(tmp_path, "lineage-new")
    served_dir = tmp_path / "served"
    served_dir.mkdir()
    told = served_dir / "tlsd.json"
    mapping = tmp_path / "services.json"
    mapping.write_text(
        json.dumps(
            {
                "served_dir": str(served_dir),
                "services": [{"name": "tlsd", "lineage": "mail", "files": [], "in_place": {}}],
            }
        )
    )
    cfg = config(named, tmp_path, [str(new)], services_mapping=str(mapping))
    # The delivery agent told the service about the old certificate (its hold keeps it there).
    told.write_text(json.dumps(delivery.fingerprint(old.read_bytes())))
    assert dane_publish.main(["--config", str(cfg)]) == 0
    assert all(v == {old_rr, new_rr} for v in served(named).values())
    # Told about the new one: the next publication drops the old record.
    told.write_text(json.dumps(delivery.fingerprint(new.read_bytes())))
    assert dane_publish.main(["--config", str(cfg)]) == 0
    assert all(v == {new_rr} for v in served(named).values())
