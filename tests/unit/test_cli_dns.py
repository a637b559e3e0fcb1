"""``pkinfra dns ds`` against a throw-away named serving the lab inventory's rendered zones."""

from __future__ import annotations

import io
import subprocess
import time
from pathlib import Path

import pytest

from pkinfra import zones
from pkinfra.cli import build_parser, main
from pkinfra.cli_dns import ds_command
from tests.unit.named_fixture import free_port, named_binary
from tests.unit.test_zones import ROOT, _serves, install, lab_inventory, test_layout

INVENTORY = str(ROOT / "inventory.py")


def run(*argv: str) -> tuple[int, str]:
    args = build_parser().parse_args(["-i", INVENTORY, "dns", "ds", *argv])
    out = io.StringIO()
    return ds_command(args, out), out.getvalue()


def test_unsigned_zone_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-i", INVENTORY, "dns", "ds", "unsigned.test"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "pkinfra: not a signed zone of the inventory: unsigned.test "
        "(signed: example.test, shadow.test)\n"
    )


def test_unreachable_server_is_one_line_in_bounded_time(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    # 192.0.2.0/24 is TEST-NET-1: nothing answers there.
    code = main(["-i", INVENTORY, "dns", "ds", "--server", "192.0.2.1", "--timeout", "0.3"])
    assert code == 1
    assert time.monotonic() - started < 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "reading the DNSKEYs of example.test from 192.0.2.1" in err


@pytest.mark.skipif(named_binary() is None, reason="named is not installed")
def test_ds_records_match_bind_dnssec_dsfromkey(tmp_path: Path) -> None:
    port = free_port()
    layout = test_layout(tmp_path, port)
    site = zones.render_site(lab_inventory(), layout=layout)
    conf = install(site, layout, tmp_path, 1)
    with (tmp_path / "named.log").open("wb") as log:
        process = subprocess.Popen(
            [str(named_binary()), "-g", "-4", "-n", "1", "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 15
        while not all(_serves(port, z, 48) for z in ("example.test", "shadow.test")):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        code, out = run("--server", f"127.0.0.1#{port}")
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert code == 0
    expected = []
    for key in sorted(Path(layout.dnssec_key_dir).glob("K*.key")):
        line = subprocess.run(
            ["dnssec-dsfromkey", "-2", str(key)], capture_output=True, text=True, check=True
        ).stdout.split()
        expected.append((line[0], " ".join(line[3:]).lower()))
    got = [(f.split("\t")[0], f.split("\t")[3]) for f in out.splitlines()]
    assert sorted(got) == sorted(expected)
    assert {zone for zone, _ in got} == {"example.test.", "shadow.test."}
