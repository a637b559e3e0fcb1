"""Small shell command builders shared by pkinfra's operations and facts."""

from __future__ import annotations

import shlex
from collections.abc import Mapping

# openssl genpkey arguments for each key type of the model (pkinfra.model.KEY_TYPES).
GENPKEY_ARGS: dict[str, tuple[str, ...]] = {
    "ec-p256": ("-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"),
    "ec-p384": ("-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"),
    "rsa-2048": ("-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"),
    "rsa-3072": ("-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072"),
    "rsa-4096": ("-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:4096"),
    "ed25519": ("-algorithm", "ED25519"),
}


def q(value: str) -> str:
    """Quote one shell word."""
    return shlex.quote(value)


def ownership_fixes(
    path: str, have_owner: str, have_group: str, have_mode: str, owner: str, group: str, mode: str
) -> list[str]:
    """The chown/chmod that bring an existing file to ``owner:group`` and ``mode`` (or none)."""
    fixes = []
    if (have_owner, have_group) != (owner, group):
        fixes.append(f"chown {q(owner)}:{q(group)} {q(path)}")
    if have_mode != mode.rjust(4, "0"):
        fixes.append(f"chmod {mode} {q(path)}")
    return fixes


def genpkey(path: str, key_type: str, owner: str = "root", group: str = "root") -> str:
    """Make a private key on the host: umask 077, written beside, then renamed into place.

    The key never exists under its final name half-written or with a wider mode.
    """
    tmp = f"{path}.pkinfra-new"
    args = " ".join(GENPKEY_ARGS[key_type])
    return (
        f"(umask 077 && rm -f {q(tmp)} && openssl genpkey {args} -out {q(tmp)} 2>/dev/null"
        f" && chown {q(owner)}:{q(group)} {q(tmp)} && mv -f {q(tmp)} {q(path)})"
    )


def key_type_from_text_pub(text: str) -> str | None:
    """Map ``openssl pkey -noout -text_pub`` output to a model key type (None: unknown)."""
    if "ED25519 Public-Key" in text:
        return "ed25519"
    if "prime256v1" in text or "P-256" in text:
        return "ec-p256"
    if "secp384r1" in text or "P-384" in text:
        return "ec-p384"
    for bits in ("2048", "3072", "4096"):
        if f"Public-Key: ({bits} bit)" in text and "Modulus" in text:
            return f"rsa-{bits}"
    return None


# -- private PKI: certificate directories -------------------------------------------------------

#: Shell: hex SHA-256 of the DER SubjectPublicKeyInfo of the PEM public key on stdin.
SPKI_HASH = "openssl pkey -pubin -outform DER | sha256sum | cut -c1-64"


def new_name(path: str) -> str:
    """Where a file is written before it is renamed over ``path`` (same directory)."""
    head, _, tail = path.rpartition("/")
    return f"{head}/.{tail}.pkinfra-new"


def csr_command(directory: str, common_name: str) -> str:
    """Print a CSR made with the directory's key; the key stays in openssl.

    The CSR only carries the public key (the CA takes names and usages from the inventory); the
    controller reads the key's fingerprint from it.
    """
    return f"openssl req -new -key {q(directory + '/key.pem')} -subj {q('/CN=' + common_name)}"


def key_spki_command(directory: str) -> str:
    """Print the hex SHA-256 of the directory's key's SubjectPublicKeyInfo (DER)."""
    return (
        f"openssl pkey -in {q(directory + '/key.pem')} -pubout -outform DER"
        " | sha256sum | cut -c1-64"
    )


def install_command(directory: str, files: list[str], *, key_spki: str | None) -> str:
    """Make uploaded ``.<name>.pkinfra-new`` files public and rename them into place, in order.

    With ``key_spki`` (the new certificate's key fingerprint), nothing is renamed unless key.pem
    still has that key, so the live paths never hold a certificate that does not match its key.
    """
    news = " ".join(q(new_name(f"{directory}/{f}")) for f in files)
    steps = [f"chmod 0644 {news}"]
    if key_spki is not None:
        steps.append(f'[ "$({key_spki_command(directory)})" = {q(key_spki)} ]')
    steps += [f"mv -f {q(new_name(f'{directory}/{f}'))} {q(f'{directory}/{f}')}" for f in files]
    return " && ".join(steps)


# -- files carried inside a command ---------------------------------------------------------------

#: The line that ends a here-document carrying a file (no PEM file holds it).
DOC_END = "PKINFRA-EOF"
#: Most bytes of files one command carries: Linux caps one argument at 128 KiB (MAX_ARG_STRLEN)
#: and pyinfra hands the whole command to ``sh -c`` as one argument (over SSH, sudo and docker).
INLINE_MAX = 48 * 1024


def inline_writes(files: Mapping[str, bytes]) -> str | None:
    """Shell lines that write each file (path -> content) through a quoted here-document, each
    ending in ``&&``: what follows them runs only when every file was written. None when the
    files cannot travel inside a command (together over ``INLINE_MAX``, or not lines of
    printable ASCII each ending in a newline, or holding ``DOC_END``): upload them instead.

    Public files only (certificates, chains, CRLs): a command's text can be logged.
    """
    if sum(len(content) for content in files.values()) > INLINE_MAX:
        return None
    parts = []
    for path, content in files.items():
        try:
            text = content.decode("ascii")
        except UnicodeDecodeError:
            return None
        lines = text.split("\n")
        if lines[-1] != "" or DOC_END in lines or not all(line.isprintable() for line in lines):
            return None
        parts.append(f"cat > {q(path)} <<'{DOC_END}' &&\n{text}{DOC_END}\n")
    return "".join(parts)
