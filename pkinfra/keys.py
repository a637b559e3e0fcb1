"""Key types: the names used across pkinfra, key generation and recognition, key fingerprints.

The inventory, the CA store and the host operations all speak of keys by one of the strings in
`KEY_TYPES`; this module is the only place that maps those strings to `cryptography` objects
(and to the `openssl genpkey` options a host uses to make the same kind of key). It also says
whether a key belongs to a certificate (`key_matches`, `pem_public_key`; the shell's check on a
host is `operations.util.key_matches_command`). Host agents import it: `cryptography` APIs that
Debian 12's python3-cryptography (38) has.
"""

from __future__ import annotations

import hashlib
from typing import Final, Literal, TypeAlias, get_args

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from pkinfra.agent.errors import PkinfraError
from pkinfra.tlsa import spki_der

KeyType: TypeAlias = Literal["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096", "ed25519"]
KEY_TYPES: Final[tuple[KeyType, ...]] = get_args(KeyType)

# Only the key kinds pkinfra can make; a CA or CSR key of another kind is refused.
PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

_CURVES: Final[dict[str, type[ec.EllipticCurve]]] = {
    "ec-p256": ec.SECP256R1,
    "ec-p384": ec.SECP384R1,
}
_RSA_BITS: Final[dict[str, int]] = {"rsa-2048": 2048, "rsa-3072": 3072, "rsa-4096": 4096}


class KeyTypeError(PkinfraError, ValueError):
    """A key type name that is not one of KEY_TYPES, a key that is of none of them, or a key or
    certificate that cannot be read."""


def check_key_type(value: str) -> KeyType:
    """Return `value` as a KeyType, or raise KeyTypeError listing the accepted names."""
    if value not in KEY_TYPES:
        raise KeyTypeError(f"unknown key type '{value}' (known: {', '.join(KEY_TYPES)})")
    return value


def generate_private_key(key_type: str) -> PrivateKey:
    """Make a new private key of `key_type` (one of KEY_TYPES)."""
    kind = check_key_type(key_type)
    if kind in _CURVES:
        return ec.generate_private_key(_CURVES[kind]())
    if kind in _RSA_BITS:
        # 65537 is the only public exponent anything should use.
        return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[kind])
    return ed25519.Ed25519PrivateKey.generate()


def key_type_of(public_key: object) -> KeyType:
    """The KeyType of a public (or private) key; KeyTypeError for anything else."""
    if isinstance(public_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        public_key = public_key.public_key()
    if isinstance(public_key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        for name, curve in _CURVES.items():
            if isinstance(public_key.curve, curve):
                return check_key_type(name)
        raise KeyTypeError(f"unsupported elliptic curve {public_key.curve.name}")
    if isinstance(public_key, rsa.RSAPublicKey):
        for name, bits in _RSA_BITS.items():
            if public_key.key_size == bits:
                return check_key_type(name)
        raise KeyTypeError(f"unsupported RSA key size {public_key.key_size}")
    raise KeyTypeError(f"unsupported key of type {type(public_key).__name__}")


def signature_hash(key_type: str) -> hashes.SHA256 | hashes.SHA384 | None:
    """The digest a key of `key_type` signs certificates with (None: Ed25519 has its own)."""
    kind = check_key_type(key_type)
    if kind == "ed25519":
        return None
    # P-384 pairs with SHA-384 (same security level); everything else with SHA-256, which every
    # TLS stack accepts.
    return hashes.SHA384() if kind == "ec-p384" else hashes.SHA256()


def spki_sha256(public_key: PublicKey) -> str:
    """Hex SHA-256 of the key's SubjectPublicKeyInfo: a stable key fingerprint."""
    return hashlib.sha256(spki_der(public_key)).hexdigest()


def genpkey_args(key_type: str) -> list[str]:
    """`openssl genpkey` arguments that make a private key of `key_type` on a host."""
    kind = check_key_type(key_type)
    if kind in _CURVES:
        curve = "P-256" if kind == "ec-p256" else "P-384"
        return ["-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{curve}"]
    if kind in _RSA_BITS:
        return ["-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{_RSA_BITS[kind]}"]
    return ["-algorithm", "ED25519"]


# -- a key and its certificate ------------------------------------------------------------------


def public_key_der(item: x509.Certificate | PrivateKey | PublicKey) -> bytes:
    """The DER SubjectPublicKeyInfo of a certificate's key, a private key's public half, or a
    public key: what two of them share when they are one key pair."""
    if isinstance(item, x509.Certificate):
        return spki_der(item.public_key())
    if isinstance(item, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        return spki_der(item.public_key())
    return spki_der(item)


def key_matches(
    key: x509.Certificate | PrivateKey | PublicKey, certificate: x509.Certificate
) -> bool:
    """Whether ``key`` (or another certificate's key) is the key of ``certificate``."""
    return public_key_der(key) == public_key_der(certificate)


def pem_public_key(pem: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of one PEM certificate or unencrypted private key (of any
    kind); KeyTypeError when it cannot be read. Nothing of a private key is kept or printed."""
    try:
        if b"-----BEGIN CERTIFICATE-----" in pem:
            return spki_der(x509.load_pem_x509_certificate(pem).public_key())
        return spki_der(serialization.load_pem_private_key(pem, password=None).public_key())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        what = "certificate" if b"CERTIFICATE" in pem else "key"
        raise KeyTypeError(f"cannot read the {what}") from None
