"""pkinfra.issue: what each host of the lab gets, and every reason to reissue a certificate."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from pkinfra import issue
from pkinfra.ca import CAStore
from pkinfra.model import Inventory, load_inventory_file

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
WANTED = issue.Wanted(names=("a.test", "b.test"), usages=("server",), issuer="ca", validity_days=90)


def held(**changes: object) -> issue.Held:
    values: dict[str, object] = {
        "serial": 0xABC,
        "not_after": NOW + dt.timedelta(days=60),
        "names": ("b.test", "a.test"),
        "usages": ("server",),
        "issuer": "ca",
        "issuer_key_id": "11",
        "spki_sha256": "k1",
    }
    values.update(changes)
    return issue.Held(**values)  # type: ignore[arg-type]


def reasons(current: issue.Held | None, wanted: issue.Wanted = WANTED, **kw: object) -> list[str]:
    args: dict[str, object] = {"key_spki_sha256": "k1", "issuer_key_id": "11", "now": NOW}
    args.update(kw)
    return issue.reissue_reasons(wanted, current, **args)  # type: ignore[arg-type]


def reasons_with(current: issue.Held | None, kw: dict[str, object]) -> list[str]:
    return reasons(current, WANTED, **kw)


@pytest.fixture(scope="module")
def lab() -> Inventory:
    return load_inventory_file(ROOT / "inventory.py")


def test_a_current_certificate_has_no_reason() -> None:
    assert reasons(held()) == []  # name order does not matter


@pytest.mark.parametrize(
    ("current", "kw", "expected"),
    [
        (None, {}, ["missing"]),
        (held(not_after=NOW + dt.timedelta(days=9, hours=1)), {}, ["expires in 9 days"]),
        (held(not_after=NOW - dt.timedelta(days=3)), {}, ["expired 3 days ago"]),
        (held(names=("a.test",)), {}, ["names changed from a.test to a.test, b.test"]),
        (held(usages=("client",)), {}, ["usages changed from client to server"]),
        (held(spki_sha256="k2"), {}, ["key mismatch"]),
        (
            held(issuer="mkcert", issuer_key_id="22"),
            {},
            ["issuer changed (from mkcert to ca)"],
        ),
        (held(issuer_key_id="22"), {}, ["issuer changed (ca was made again)"]),
        (held(), {"revoked": True}, ["revoked (serial abc)"]),
    ],
)
def test_each_reason_is_said_exactly(
    current: issue.Held | None, kw: dict[str, object], expected: list[str]
) -> None:
    assert reasons_with(current, kw) == expected


def test_renewal_window_a_third_of_the_lifetime_or_as_configured() -> None:
    inside = held(not_after=NOW + dt.timedelta(days=29))
    outside = held(not_after=NOW + dt.timedelta(days=31))
    assert reasons(inside) == ["expires in 29 days"]
    assert reasons(outside) == []
    custom = issue.Wanted(WANTED.names, WANTED.usages, "ca", 90, renew_before_days=40)
    assert reasons(outside, custom) == ["expires in 31 days"]


def test_several_reasons_at_once() -> None:
    both = held(names=("a.test",), not_after=NOW + dt.timedelta(days=1, hours=1))
    assert reasons(both) == ["names changed from a.test to a.test, b.test", "expires in 1 days"]


def test_ca_order_puts_parents_first(lab: Inventory) -> None:
    order = issue.ca_order(lab)
    assert order[0] == "duckcorp"
    assert set(order) == {"duckcorp", "duckcorp-backup", "duckcorp-monitoring"}


def test_passphrase_is_a_source_relative_to_the_inventory(lab: Inventory) -> None:
    assert issue.passphrase_spec(lab, "duckcorp") == f"file:{ROOT / '.lab' / 'ca-passphrase'}"


def test_lab_host_plans(lab: Inventory) -> None:
    db1 = issue.host_plan(lab, "db1.example.test")
    assert [c.name for c in db1.certificates] == ["postgres", "backup"]
    assert db1.directories == ["/etc/pkinfra/certs/postgres", "/etc/pkinfra/certs/backup"]
    assert db1.anchors == ("duckcorp",)
    assert db1.bundles == ("duckcorp", "duckcorp-backup", "duckcorp-monitoring")
    # db1 verifies mon1's client certificates: the CRLs of the monitoring chain, root included.
    assert db1.crls == ("duckcorp-monitoring", "duckcorp")
    assert "/etc/pkinfra/crl/duckcorp.pem" in db1.files

    mon1 = issue.host_plan(lab, "mon1.example.test")
    assert mon1.anchors == ("duckcorp",) and mon1.crls == ()
    # ACME-only and certificate-less hosts get nothing from the private PKI.
    assert issue.host_plan(lab, "web1.example.test").empty
    assert issue.host_plan(lab, "ns1.example.test").empty


def test_removed_certificates_are_reported(lab: Inventory, tmp_path: Path) -> None:
    store = CAStore(tmp_path)
    store.create_root("duckcorp", key_type="ec-p256", unencrypted=True)
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509 import CertificateSigningRequestBuilder, Name

    from pkinfra.keys import generate_private_key

    key = generate_private_key("ec-p256")
    csr = (
        CertificateSigningRequestBuilder()
        .subject_name(Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(Encoding.PEM)
    )
    common = {"usages": ["server"], "validity_days": 30, "passphrase": None}
    store.sign_csr(
        "duckcorp",
        csr,
        names=["db1.example.test"],
        host="db1.example.test",
        cert_name="postgres",
        **common,  # type: ignore[arg-type]
    )
    gone = store.sign_csr(
        "duckcorp",
        csr,
        names=["old.example.test"],
        host="db1.example.test",
        cert_name="old",
        **common,  # type: ignore[arg-type]
    )
    store.sign_csr(
        "duckcorp",
        csr,
        names=["x.example.test"],
        host="elsewhere.test",
        cert_name="x",
        **common,  # type: ignore[arg-type]
    )
    found = issue.removed_certificates(store, lab)
    assert [r.serial for r in found] == [gone.serial]
