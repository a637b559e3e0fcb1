"""An HA pair behind one name: db1 and mon1 both publish TLSA at db1's PostgreSQL owner, each
publication saying ``shared``. The owner's RRset holds both hosts' keys, on every authoritative
server and through the validating resolver, and db1 still passes the DANE check. The lab's own
inventory is put back at the end (mon1's extra certificate revoked and its files removed).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pkinfra import tlsa
from tests.helpers import lab_inventory_copy
from tests.lab.run import limited_run, sh
from tests.lab.test_dane import DB1, check, dig_tlsa
from tests.lab.test_rollover import authoritative

ROOT = Path(__file__).resolve().parents[2]
OWNER = "_5432._tcp.db1.example.test"
REPLICA_DIR = "/etc/pkinfra/certs/pgreplica"
GROUPS = ("dns", "resolvers", "db", "monitoring")

pytestmark = pytest.mark.lab


def deploy(inventory: Path) -> str:
    return limited_run(inventory, "deploys/pki.py deploys/dns.py", GROUPS)


def record_on(container: str, path: str) -> str:
    pem = sh(container, f"cat {path}").stdout.encode()
    return tlsa.TLSARecord.from_pem(pem).to_text()


def test_an_ha_pair_publishes_one_rrset_with_both_keys(site_deployed: str, tmp_path: Path) -> None:
    inventory = lab_inventory_copy(tmp_path)
    text = inventory.read_text()
    db1_pub = '{"port": 5432, "certificate": "postgres"},'
    assert text.count(db1_pub) == 1
    text = text.replace(db1_pub, '{"port": 5432, "certificate": "postgres", "shared": True},')
    replica = {"name": "pgreplica", "names": ["mon1.example.test"], "issuer": "duckcorp"}
    publication = {"port": 5432, "name": "db1.example.test", "certificate": "pgreplica"}
    anchor = "_inventory = load_or_exit("
    extra = (
        f"monitoring[0][1]['certificates'].append({replica!r})\n"
        f"monitoring[0][1]['tlsa'] = [{{**{publication!r}, 'shared': True}}]\n"
    )
    inventory.write_text(text.replace(anchor, extra + anchor))

    db1_record = record_on("pkinfra-db1", "/etc/pkinfra/certs/postgres/cert.pem")
    try:
        # The zone's include is rendered from the CA store when a run starts: a certificate
        # this run issues has its record published by the next run.
        deploy(inventory)
        deploy(inventory)
        mon1_record = record_on("pkinfra-mon1", f"{REPLICA_DIR}/cert.pem")
        assert mon1_record != db1_record
        both = {tlsa.canonical(db1_record), tlsa.canonical(mon1_record)}
        assert authoritative(OWNER) == [both, both]
        assert {tlsa.canonical(v) for v in dig_tlsa(OWNER)} == both
        # db1 still serves a key of the RRset: the DANE check passes, one record matching.
        run = check(f"{DB1}:5432", "--name", "db1.example.test", "--starttls", "postgres", "--json")
        report = json.loads(run.stdout)
        assert run.returncode == 0 and report["verdict"] == "valid", run.stdout
        assert sorted(r["matched"] for r in report["records"]) == [False, True]
    finally:
        deploy(ROOT / "inventory.py")
        sh("pkinfra-mon1", f"rm -rf {REPLICA_DIR}")
    only = {tlsa.canonical(db1_record)}
    assert authoritative(OWNER) == [only, only], "back to db1's record alone"
