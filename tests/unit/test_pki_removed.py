"""Certificates removed from the inventory: reported, or revoked with ``revoke_removed``."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from operations import pki
from pkinfra.ca import CAStore
from tests.operations.harness import run_operation


def _store(tmp_path: Path) -> Path:
    store = CAStore(tmp_path / "pki")
    store.create_root("ca", unencrypted=True)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    for name in ("kept", "gone"):
        store.sign_csr(
            "ca",
            csr.public_bytes(serialization.Encoding.PEM),
            names=["h.test"],
            usages={"server"},
            validity_days=30,
            host="h.test",
            cert_name=name,
            passphrase=None,
        )
    return tmp_path / "pki"


def test_removed_certificate_is_only_reported_by_default(tmp_path: Path) -> None:
    store = _store(tmp_path)
    commands, host = run_operation(
        "pki",
        "removed_certificates",
        {"kwargs": {"store": str(store), "holders": {"h.test": ["kept"]}}},
    )
    assert commands == []
    assert host.noop_description == "1 removed certificate(s) still valid (revoke_removed is off)"


def test_revoke_removed_revokes_exactly_the_removed_one(tmp_path: Path) -> None:
    store = _store(tmp_path)
    commands, _ = run_operation(
        "pki",
        "removed_certificates",
        {"kwargs": {"store": str(store), "holders": {"h.test": ["kept"]}, "revoke": True}},
    )
    assert commands == [{"function": "_revoke_removed"}]

    op = pki.removed_certificates._inner  # run what the FunctionCommand would run
    from tests.operations.harness import FakeHost, FakeState, ctx_host, ctx_state

    fake = FakeHost({}, {})
    with ctx_state.use(FakeState()), ctx_host.use(fake):
        [command] = list(op(store=str(store), holders={"h.test": ["kept"]}, revoke=True))
    assert command.function(None, fake, *command.args, **command.kwargs)
    status = {r.cert_name: r.status for r in CAStore(store).list_issued("ca")}
    assert status == {"kept": "valid", "gone": "revoked"}
    again, host = run_operation(
        "pki",
        "removed_certificates",
        {"kwargs": {"store": str(store), "holders": {"h.test": ["kept"]}, "revoke": True}},
    )
    assert again == []
    assert (host.noop_description or "").startswith("no certificate removed")
