"""Small shell command builders shared by pkinfra's operations and facts."""

from __future__ import annotations

import hashlib
import secrets
import shlex
from collections.abc import Mapping
from io import BytesIO

from pyinfra.api import FileUploadCommand
from typing_extensions import override

from pkinfra.keys import KEY_TYPES, genpkey_args

#: openssl genpkey arguments for each key type (pkinfra.keys says which and how).
GENPKEY_ARGS: dict[str, tuple[str, ...]] = {k: tuple(genpkey_args(k)) for k in KEY_TYPES}


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
    tmp = run_staged(path)
    args = " ".join(GENPKEY_ARGS[key_type])
    return (
        f"(umask 077 && rm -f {q(tmp)} && openssl genpkey {args} -out {q(tmp)} 2>/dev/null"
        f" && chown {q(owner)}:{q(group)} {q(tmp)} && mv -f {q(tmp)} {q(path)})"
    )


# -- private PKI: certificate directories -------------------------------------------------------

#: Shell: hex SHA-256 of the DER SubjectPublicKeyInfo of the PEM public key on stdin.
SPKI_HASH = "openssl pkey -pubin -outform DER | sha256sum | cut -c1-64"


#: This run's mark on the secrets it stages on a host: two runs at once (two operators, a timer
#: and a person) never write, chown or rename each other's staged file.
RUN_ID = secrets.token_hex(6)
#: A staged secret older than this is a killed run's leftover; the next run removes it.
STALE_STAGED_MINUTES = 60


def run_staged(path: str) -> str:
    """Where this run stages a file beside ``path`` before renaming it over ``path`` (unique
    to the run)."""
    return f"{path}.pkinfra-new-{RUN_ID}"


def stage_secret(path: str) -> str:
    """Make this run's empty 0600 staged file for ``path``, after removing killed runs'
    leftovers (other runs' staged files of ``path`` older than ``STALE_STAGED_MINUTES``)."""
    head, _, tail = path.rpartition("/")
    staged = run_staged(path)
    return (
        f"(umask 077 && find {q(head or '/')} -maxdepth 1 -name {q(tail + '.pkinfra-new-*')}"
        f" -mmin +{STALE_STAGED_MINUTES} -delete && : > {q(staged)})"
    )


def key_matches_command(key: str, cert: str) -> str:
    """Shell test, true when the private key file ``key`` is the key of the certificate file
    ``cert``: their public keys are compared on the host, nothing of the key is printed (the
    Python side of the same check is ``pkinfra.keys.key_matches``)."""
    return (
        f'[ "$(openssl x509 -in {q(cert)} -noout -pubkey | {SPKI_HASH})"'
        f' = "$(openssl pkey -in {q(key)} -pubout | {SPKI_HASH})" ]'
    )


def new_name(path: str) -> str:
    """Where this run writes a file before it renames it over ``path`` (same directory, hidden,
    unique to the run: two runs at once never rename each other's file)."""
    head, _, tail = path.rpartition("/")
    return f"{head}/.{tail}.pkinfra-new-{RUN_ID}"


def run_checked(path: str) -> str:
    """Where this run puts the copy of ``path`` a checker reads (unique to the run)."""
    return f"{path}.pkinfra-check-{RUN_ID}"


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


class Upload(BytesIO):
    """Bytes to upload; its repr names their hash, not an object address (stable fixtures)."""

    @override
    def __repr__(self) -> str:
        return f"<bytes sha256:{hashlib.sha256(self.getvalue()).hexdigest()[:16]}>"


def install_staged(
    staged: str, path: str, mode: str, owner: str | None = None, group: str | None = None
) -> str:
    """Give a file written beside ``path`` its owner and mode, then rename it over ``path``."""
    own = f"chown {q(owner or 'root')}:{q(group or 'root')} {q(staged)} && " if owner else ""
    return f"{own}chmod {mode} {q(staged)} && mv -f {q(staged)} {q(path)}"


def upload_atomic(
    path: str, data: bytes, mode: str, owner: str | None = None, group: str | None = None
) -> list[str | FileUploadCommand]:
    """Commands that upload a non-secret file beside ``path`` (``new_name``) and rename it into
    place: the file never exists half-written or with another mode under its name. Never
    diffed; a secret goes through ``context.upload_private_to_host`` instead."""
    staged = new_name(path)
    return [
        f"mkdir -p {q(path.rpartition('/')[0] or '/')}",
        FileUploadCommand(Upload(data), staged),
        install_staged(staged, path, mode, owner, group),
    ]


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
