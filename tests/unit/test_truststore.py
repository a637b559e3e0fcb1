"""pkinfra.truststore against Debian's own update-ca-certificates, on the same trees.

The controller's script (a Debian machine's, ``/usr/sbin/update-ca-certificates``) runs with its
directory options on one copy of a trust store, ``truststore.update`` on another; every link,
file and mode of the two results must be the same. The lab proves the same on Debian 12 and 13
hosts (tests/lab/test_stranger.py runs the host's script after a deploy: nothing changes).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pkinfra import install, truststore
from pkinfra.truststore import Layout
from tests.helpers import self_signed

SCRIPT = Path(truststore.SCRIPT)


def _cert(directory: Path, name: str, subject: str, newline: bool = True) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    self_signed(directory / "key.tmp", path, subject)
    (directory / "key.tmp").unlink()
    if not newline:
        path.write_bytes(path.read_bytes().rstrip(b"\n"))
    return path


def _tree(root: Path) -> Layout:
    """A trust store with what the script must get right: names with blanks, parentheses and
    commas, a ``!`` removal, a listed file that is missing, a comment, a certificate without its
    last newline, local certificates in a subdirectory, a stale link to a removed local CA, a
    dangling link and a file of the admin's own."""
    layout = Layout(
        certsconf=root / "ca-certificates.conf",
        certsdir=root / "share",
        localcertsdir=root / "local",
        etccertsdir=root / "etc",
        hooksdir=root / "hooks",
    )
    for directory in (layout.certsdir, layout.localcertsdir, layout.etccertsdir, layout.hooksdir):
        directory.mkdir(parents=True)
    _cert(layout.certsdir, "mozilla/Alpha_Root.crt", "/CN=Alpha Root")
    _cert(layout.certsdir, "mozilla/Beta CA, (2).crt", "/CN=Beta CA 2")
    _cert(layout.certsdir, "mozilla/Gamma.crt", "/CN=Gamma", newline=False)
    _cert(layout.certsdir, "mozilla/Revoked.crt", "/CN=Revoked")
    _cert(layout.localcertsdir, "pkinfra-duckcorp.crt", "/CN=duckcorp")
    _cert(layout.localcertsdir, "site/admin-ca.crt", "/CN=Admin CA")
    layout.certsconf.write_text(
        "# a comment\n"
        "mozilla/Alpha_Root.crt\n"
        "mozilla/Beta CA, (2).crt\n"
        "!mozilla/Revoked.crt\n"
        "mozilla/Missing.crt\n"
        "\n"
        "mozilla/Gamma.crt\n"
    )
    etc = layout.etccertsdir
    (etc / "Revoked.pem").symlink_to(layout.certsdir / "mozilla/Revoked.crt")
    (etc / "pkinfra-old.pem").symlink_to(layout.localcertsdir / "pkinfra-old.crt")
    (etc / "dangling.pem").symlink_to(root / "nowhere.crt")
    (etc / "admin-own.pem").write_text("the admin's file\n")
    return layout


def _snapshot(directory: Path) -> dict[str, tuple[str, ...]]:
    """Every entry below ``directory``: a link's target, a file's SHA-256 and mode."""
    seen: dict[str, tuple[str, ...]] = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = Path(root, name)
            key = str(path.relative_to(directory))
            if path.is_symlink():
                seen[key] = ("link", os.readlink(path))
            elif path.is_file():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                seen[key] = ("file", digest, oct(path.stat().st_mode & 0o7777))
            else:
                seen[key] = ("dir",)
    return seen


def _script(layout: Layout, tmp: Path, *flags: str) -> None:
    options = {
        "--certsconf": layout.certsconf,
        "--certsdir": layout.certsdir,
        "--localcertsdir": layout.localcertsdir,
        "--etccertsdir": layout.etccertsdir,
        "--hooksdir": layout.hooksdir,
    }
    args = [str(SCRIPT), *flags, *[str(a) for pair in options.items() for a in pair]]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TMPDIR": str(tmp), "LC_ALL": "C"}
    subprocess.run(args, env=env, check=True, capture_output=True)


def _kept(tmp_path: Path) -> Layout:
    """The tree at ``store``, a copy of it kept aside: both runs start from the same tree at
    the same paths, so that link targets compare equal."""
    layout = _tree(tmp_path / "store")
    shutil.copytree(tmp_path / "store", tmp_path / "pristine", symlinks=True)
    return layout


def _restore(tmp_path: Path) -> None:
    shutil.rmtree(tmp_path / "store")
    shutil.copytree(tmp_path / "pristine", tmp_path / "store", symlinks=True)


def test_the_controllers_script_is_one_this_program_was_checked_against() -> None:
    digest = hashlib.sha256(SCRIPT.read_bytes()).hexdigest()
    assert digest in truststore.VERIFIED_SCRIPTS, digest


@pytest.mark.parametrize("fresh", [False, True], ids=["update", "fresh"])
def test_update_leaves_exactly_what_the_script_leaves(tmp_path: Path, fresh: bool) -> None:
    layout = _kept(tmp_path)
    flags = ("--fresh",) if fresh else ()
    _script(layout, tmp_path, *flags)
    by_script = _snapshot(layout.etccertsdir)
    _restore(tmp_path)
    result = truststore.update(layout, fresh=fresh)
    assert _snapshot(layout.etccertsdir) == by_script
    # The checks that make the comparison mean something: the removal, the renamed link, the
    # stale links and the hash links are there in both.
    assert "Revoked.pem" not in by_script
    assert by_script["Beta_CA__=2=.pem"] == ("link", f"{layout.certsdir}/mozilla/Beta CA, (2).crt")
    assert by_script["admin-own.pem"][0] == "file"
    assert "dangling.pem" not in by_script and "pkinfra-old.pem" not in by_script
    assert any(name.endswith(".0") for name in by_script)
    # --fresh has cleared every link into the certificate directories before the removals.
    removed = [] if fresh else [str(layout.etccertsdir / "Revoked.pem")]
    assert result.removed == removed
    assert result.bundle_changed


def test_the_bundle_holds_every_certificate_in_the_scripts_order(tmp_path: Path) -> None:
    layout = _tree(tmp_path / "store")
    truststore.update(layout)
    bundle = (layout.etccertsdir / truststore.BUNDLE).read_bytes()
    order = [
        layout.certsdir / "mozilla/Alpha_Root.crt",
        layout.certsdir / "mozilla/Beta CA, (2).crt",
        layout.certsdir / "mozilla/Gamma.crt",
        layout.localcertsdir / "pkinfra-duckcorp.crt",
        layout.localcertsdir / "site/admin-ca.crt",
    ]
    expected = b"".join(p.read_bytes().rstrip(b"\n") + b"\n" for p in order)
    assert bundle == expected


def test_a_second_update_changes_nothing_and_a_new_local_ca_is_added(tmp_path: Path) -> None:
    layout = _tree(tmp_path / "store")
    truststore.update(layout)
    before = _snapshot(layout.etccertsdir)
    again = truststore.update(layout)
    assert (again.added, again.removed, again.bundle_changed) == ([], [], False)
    assert _snapshot(layout.etccertsdir) == before
    _cert(layout.localcertsdir, "pkinfra-next.crt", "/CN=next")
    added = truststore.update(layout)
    assert added.added == [str(layout.etccertsdir / "pkinfra-next.pem")]
    assert added.bundle_changed
    ours = _snapshot(layout.etccertsdir)
    _script(layout, tmp_path)
    assert _snapshot(layout.etccertsdir) == ours


def test_where_the_script_is_unknown_or_has_hooks_the_script_runs(tmp_path: Path) -> None:
    layout = _tree(tmp_path / "store")
    assert truststore.why_not(layout, SCRIPT) == ""
    other = tmp_path / "update-ca-certificates"
    other.write_text(SCRIPT.read_text() + "\n# changed\n")
    assert "not checked against" in truststore.why_not(layout, other)
    (layout.hooksdir / "jks-keystore").write_text("#!/bin/sh\n")
    assert "has hooks" in truststore.why_not(layout, SCRIPT)
    (layout.hooksdir / "jks-keystore").unlink()
    layout.certsconf.write_text("")
    assert "is empty" in truststore.why_not(layout, SCRIPT)


def test_program_is_one_shell_command_with_a_fallback(tmp_path: Path) -> None:
    command = install.truststore_command(fresh=True)
    assert command.startswith("if command -v python3")
    assert "python3 -I - update --fresh <<'PKINFRA_TRUSTSTORE_PROGRAM'" in command
    assert command.endswith(f"else {truststore.SCRIPT} --fresh >/dev/null; fi")
    # The here-document carries this very module, and sh parses the whole command.
    assert repr(Path(truststore.__file__).read_text()) in command
    checked = subprocess.run(["sh", "-n", "-c", command], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    # The program runs alone (-I: no pkinfra to import from the environment): asked for
    # something it does not do, its own main answers.
    alone = subprocess.run(
        ["python3", "-I", "-", "nothing"],
        input=install.program_body("pkinfra.truststore"),
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert (alone.returncode, alone.stderr) == (2, "usage: truststore.py update [--fresh]\n")
