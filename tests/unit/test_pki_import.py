"""An mkcert-style CA taken over by deploys/pki.py (``import_from``): stored unchanged and
encrypted, what it issued before still verifies, and it issues new certificates.

The CA is made the way mkcert makes its rootCA.pem / rootCA-key.pem (RSA 3072, keyUsage
certSign only, pathlen 0, unencrypted PKCS#8); one @fake host gets a certificate from it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from pkinfra.ca import CAStore, PassphraseSource
from pkinfra.keys import generate_private_key
from tests.helpers import make_mkcert_ca

ROOT = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).parent / "pyinfra"

GROUP_DATA = """
pki_dir = "pki"
zones = [{"name": "legacy.test"}]
shadow_zone = {"name": "shadow.legacy.test"}
dns = {"primary": "app.legacy.test"}
cas = {
    "legacy": {
        "import_from": {"cert": "mkcert/rootCA.pem", "key": "mkcert/rootCA-key.pem"},
        "passphrase": {"file": "pass"},
    },
}
"""


def test_imported_mkcert_ca_keeps_validating_and_issues(tmp_path: Path) -> None:
    make_mkcert_ca(tmp_path / "mkcert", "old.legacy.test")
    (tmp_path / "pass").write_text("import passphrase\n")
    (tmp_path / "group_data").mkdir()
    (tmp_path / "group_data" / "all.py").write_text(GROUP_DATA)
    key = generate_private_key("ec-p256")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    host = {
        "fqdn": "app.legacy.test",
        "certificates": [{"name": "app", "names": ["app.legacy.test"], "issuer": "legacy"}],
        "fake_responses": {
            # The host's one command for its CSRs: each after its marker.
            "openssl req -new": ["@csr|0", *csr.splitlines()],
        },
        "fake_delay": 0,
        "fake_delay_jitter": 0,
    }
    (tmp_path / "inventory.py").write_text(
        "from pkinfra.model import load_or_exit\n\n"
        f"apps = [('@fake/app', {host!r})]\n"
        "_inventory = load_or_exit(__file__, {'apps': apps})\n"
    )
    run = subprocess.run(
        [str(PYINFRA), "-y", "-v", str(tmp_path / "inventory.py"), "deploys/pki.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    total = re.search(r"Grand total\s+\d+\s+\S+\s+(\S+)", out)
    assert total is not None and total.group(1) == "-", out

    store = CAStore(tmp_path / "pki")
    info = store.ca("legacy")
    assert info.imported and info.key_encrypted
    original = x509.load_pem_x509_certificate((tmp_path / "mkcert" / "rootCA.pem").read_bytes())
    stored = x509.load_pem_x509_certificate(info.cert_pem)
    assert stored.public_bytes(serialization.Encoding.DER) == original.public_bytes(
        serialization.Encoding.DER
    )
    key_pem = (tmp_path / "pki" / "legacy" / "ca.key").read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in key_pem
    secret = PassphraseSource.from_file(tmp_path / "pass").read()
    assert serialization.load_pem_private_key(key_pem, secret) is not None
    # mkcert's root may not sign CRLs: the run says so instead of failing.
    assert not info.can_sign_crl
    assert "CRL legacy: the CA certificate may not sign CRLs" in out

    ca_file = tmp_path / "pki" / "legacy" / "ca.crt"
    record = store.find_current("app.legacy.test", "app")
    assert record is not None
    new = tmp_path / "new.pem"
    new.write_bytes(store.certificate_pem("legacy", record.serial))
    for leaf in (tmp_path / "mkcert" / "old.pem", new):
        check = subprocess.run(
            ["openssl", "verify", "-x509_strict", "-CAfile", str(ca_file), str(leaf)],
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, check.stdout + check.stderr
