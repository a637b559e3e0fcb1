"""Key rollover on the host (pkinfra.agent.rollover) against a real BIND primary and secondary.

certbot is played by a small stand-in that keeps certbot's lineage layout (``live/`` symlinks
into ``archive/``, all four files, ``reuse_key`` renewals that read ``live/<name>/privkey.pem``)
and its deploy hooks in ``renewal-hooks/deploy`` in certbot's order: the real TLSA publisher,
then a delivery that copies the lineage's certificate to what the "service" serves. After every
step the test checks RFC 7671's rule on the real servers: the RRset always holds the record of
the certificate being served. The switch is killed at each of its steps (the test-only fault
hook, here raising in process): the lineage's pair always matches and a rerun finishes.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pkinfra import switch, tlsa
from pkinfra.agent import dane_publish, rollover
from tests.unit.named_fixture import MX1_TLSA, NamedLab, named_binary, running_lab

OWNER = "_25._tcp.mx1.example.test."
NAME = "mx1.example.test"


@pytest.fixture(scope="module")
def named(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NamedLab]:
    if named_binary() is None:
        pytest.skip("named is not installed (apt-get install bind9); the project setup installs it")
    with running_lab(tmp_path_factory.mktemp("named")) as running:
        yield running


def _cert_for(key_pem: bytes, name: str) -> bytes:
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _new_key() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def record(pem_file: Path) -> str:
    return tlsa.TLSARecord.from_pem(pem_file.read_bytes()).to_text()


class Certbot:
    """certbot's lineage layout and hook order, without an ACME server."""

    def __init__(self, root: Path, named: NamedLab, dane_config: Path) -> None:
        self.root = root
        self.live = root / "live"
        self.archive = root / "archive"
        self.hooks = root / "renewal-hooks" / "deploy"
        self.named = named
        self.dane_config = dane_config
        self.served = root / "served.pem"  # what the service presents
        self.calls: list[list[str]] = []
        self.delivery_result: dict[str, Any] = {"error": None, "held": None, "pending": False}
        self.checks = 0
        self.chain = _cert_for(_new_key(), "Fake ACME CA")
        self.hooks.mkdir(parents=True)
        for hook in ("40-pkinfra-dane", "50-pkinfra-deliver"):
            (self.hooks / hook).write_text("#!/bin/sh\n")
            (self.hooks / hook).chmod(0o755)

    def issue(self, name: str, key_pem: bytes | None = None) -> None:
        version = 1
        archive = self.archive / name
        if archive.exists():
            version = 1 + max(int(p.stem[4:]) for p in archive.glob("cert*.pem"))
        else:
            archive.mkdir(parents=True)
        if key_pem is None:
            key_pem = (self.live / name / "privkey.pem").read_bytes()
        cert = _cert_for(key_pem, NAME)  # both lineages are for the same name
        files = {
            "privkey": key_pem,
            "cert": cert,
            "chain": self.chain,
            "fullchain": cert + self.chain,
        }
        for kind, data in files.items():
            (archive / f"{kind}{version}.pem").write_bytes(data)
        live = self.live / name
        live.mkdir(parents=True, exist_ok=True)
        (live / "README").write_text("certbot's README\n")
        for kind in files:
            link = live / f"{kind}.pem"
            link.unlink(missing_ok=True)
            link.symlink_to(Path("../../archive") / name / f"{kind}{version}.pem")

    def deliver(self) -> None:
        shutil.copyfile(self.live / "mail" / "cert.pem", self.served)

    def assert_served_record_published(self) -> None:
        want = record(self.served)
        for server in self.named.servers:
            assert want in self.named.values(server, MX1_TLSA, "TLSA"), server.name
        self.checks += 1

    def deploy_hooks(self, lineage: str) -> None:
        """Each hook as certbot runs them after a renewal, in order."""
        self.assert_served_record_published()
        assert dane_publish.main(["--config", str(self.dane_config), "--lineage", lineage]) == 0
        self.assert_served_record_published()
        self.deliver()
        self.assert_served_record_published()

    def __call__(
        self, args: Sequence[str], env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        args = list(args)
        self.calls.append(args)
        name = args[args.index("--cert-name") + 1] if "--cert-name" in args else ""
        out, code = "", 0
        if args[:2] == ["certbot", "certonly"]:
            self.issue(name, _new_key())
        elif args[:2] == ["certbot", "renew"]:
            self.issue(name)
            self.deploy_hooks(name)
        elif args[0] == str(self.hooks / "40-pkinfra-dane"):
            assert env is not None and env["RENEWED_DOMAINS"] == NAME
            lineage = Path(env["RENEWED_LINEAGE"])
            assert lineage == self.live / "mail"
            done = dane_publish.main(["--config", str(self.dane_config), "--lineage", lineage.name])
            assert done == 0
            self.assert_served_record_published()
        elif args[0] == str(self.hooks / "50-pkinfra-deliver"):
            self.deliver()
            self.assert_served_record_published()
        elif args[:2] == ["certbot", "delete"]:
            shutil.rmtree(self.live / name)
            shutil.rmtree(self.archive / name)
        elif args[0] == "deliver":
            out = json.dumps(
                {"plan": False, "services": [{"name": "postfix", **self.delivery_result}]}
            )
            code = 1 if self.delivery_result["error"] else 0
        else:
            raise AssertionError(f"unexpected command {args}")
        return subprocess.CompletedProcess(args, code, out + "\n", "")

    def pair_matches(self, name: str = "mail") -> bool:
        live = self.live / name
        return (
            record(live / "privkey.pem")
            == record(live / "cert.pem")
            == record(live / "fullchain.pem")
        )


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def lab(named: NamedLab, tmp_path: Path) -> Iterator[tuple[Certbot, dict[str, Any], Clock]]:
    live = tmp_path / "live"
    dane_config = tmp_path / "dane.json"
    state_dir = tmp_path / "rollover"
    dane_config.write_text(
        json.dumps(
            {
                "tsig_key": str(named.key_file("mx1-key")),
                "ttl": 5,
                "timeout": 10,
                "resolvers": [named.primary.server],
                "port": named.primary.port,
                "server_addresses": {"ns2.example.test": named.secondary.server},
                "rollover_dir": str(state_dir),
                "publications": [
                    {
                        "owner": OWNER,
                        "lineage": "mail",
                        "lineages": ["mail", "mail-next"],
                        "certificates": [
                            str(live / "mail" / "cert.pem"),
                            str(live / "mail-next" / "cert.pem"),
                        ],
                    }
                ],
            }
        )
    )
    certbot = Certbot(tmp_path, named, dane_config)
    certbot.issue("mail", _new_key())
    certbot.deliver()
    assert dane_publish.main(["--config", str(dane_config)]) == 0
    config = {
        "state_dir": str(state_dir),
        "dane_config": str(dane_config),
        "delivery": ["deliver"],
        "certificates": {
            "mail": {
                "next": "mail-next",
                "ttl": 60,
                "certbot_next": ["certbot", "certonly", "--cert-name", "mail-next"],
            }
        },
    }
    yield certbot, config, Clock()


def agent(certbot: Certbot, config: dict[str, Any], clock: Clock) -> rollover.Rollover:
    return rollover.Rollover(
        "mail", config, live=certbot.live, run=certbot, clock=clock, sleep=clock.sleep
    )


def served_everywhere(named: NamedLab) -> list[set[str]]:
    return [named.values(s, MX1_TLSA, "TLSA") for s in named.servers]


def test_two_steps_roll_the_key_without_a_gap(
    lab: tuple[Certbot, dict[str, Any], Clock], named: NamedLab
) -> None:
    certbot, config, clock = lab
    old = record(certbot.served)
    r = agent(certbot, config, clock)

    assert "step 1 done" in r.start("2026-11")
    new = record(certbot.live / "mail-next" / "cert.pem")
    assert new != old
    assert served_everywhere(named) == [{old, new}] * 2
    certbot.assert_served_record_published()

    # Step 2 before the TTL has passed: refused, nothing switched.
    clock.now += 30
    waiting = r"served for 30 s of the TTL \(60 s\); step 2 in 32 s"
    with pytest.raises(rollover.Waiting, match=waiting):
        r.finish()
    assert record(certbot.served) == old and r.state()["step"] == "published"

    # With enough wait allowed, it waits out the TTL (from the end of the second step 1 noted),
    # then switches.
    assert "rolled over to '2026-11'" in r.finish(wait=60)
    assert clock.now == 1_800_000_061.0
    assert record(certbot.served) == new
    assert record(certbot.live / "mail" / "privkey.pem") == new, "the main lineage has the key"
    assert not (certbot.live / "mail-next").exists()
    assert served_everywhere(named) == [{new}] * 2
    state = r.state()
    assert state["step"] == "done" and state["label"] == "2026-11" and state["keep"] == []
    assert not r.backup_file.exists()
    assert certbot.checks >= 3
    # Same label again: nothing to do.
    assert "nothing to do" in r.start("2026-11")


def test_a_lowered_ttl_waits_for_what_caches_already_hold(
    lab: tuple[Certbot, dict[str, Any], Clock],
) -> None:
    """The set was published with a 5 s TTL, then the inventory lowered it to 2 s: a cache may
    keep the old set (without the next key's record) for 5 s after step 1, so step 2 waits
    for 5 s (and the second served_since is truncated to), not 2."""
    certbot, config, clock = lab
    dane_config = Path(config["dane_config"])
    dane = json.loads(dane_config.read_text())
    dane_config.write_text(json.dumps({**dane, "ttl": 2}))
    config["certificates"]["mail"]["ttl"] = 2
    r = agent(certbot, config, clock)

    assert "step 1 done" in r.start("2026-11")
    state = r.state()
    assert state["cached_ttl"] == 5
    client = dane_publish.client_for(json.loads(dane_config.read_text()))
    target, _ = client.follow_cnames(OWNER)
    assert client.served_ttl(target, "TLSA") == 2, "the set is served with the new TTL now"
    clock.now = state["served_since"] + 3  # the new TTL has passed, the old one has not
    waiting = r"served for 3 s of the TTL \(5 s\); step 2 in 4 s"
    with pytest.raises(rollover.Waiting, match=waiting):
        r.finish()
    assert "rolled over to '2026-11'" in r.finish(wait=60)
    assert clock.now == state["served_since"] + 1 + 5


def test_a_switch_that_cannot_be_made_changes_nothing(
    lab: tuple[Certbot, dict[str, Any], Clock], named: NamedLab
) -> None:
    """The next lineage's key no longer matches its certificate (a broken lineage): the
    switch refuses before it changes anything, and the rollover stays at step 1."""
    certbot, config, clock = lab
    old_key = (certbot.live / "mail" / "privkey.pem").read_bytes()
    old = record(certbot.served)
    r = agent(certbot, config, clock)
    r.start("k2")
    clock.now += 61
    next_key = certbot.live / "mail-next" / "privkey.pem"
    kept = next_key.read_bytes()
    next_key.resolve().write_bytes(_new_key())
    with pytest.raises(
        rollover.RolloverError,
        match=r"the switch to the next key failed, the old key stays \(still at step 1\): "
        r".*mail-next/cert.pem is not the certificate of the key",
    ):
        r.finish()
    assert (certbot.live / "mail" / "privkey.pem").read_bytes() == old_key
    assert record(certbot.live / "mail" / "cert.pem") == old and certbot.pair_matches()
    assert r.state()["step"] == "published"
    assert old in served_everywhere(named)[0]
    assert sorted(p.name for p in certbot.live.iterdir()) == ["mail", "mail-next"]

    next_key.resolve().write_bytes(kept)
    assert "rolled over" in r.finish()
    assert record(certbot.served) != old


#: Where a kill can land in step 2's switch (``pkinfra.switch``'s fault hook).
SWITCH_STEPS = [
    *(f"archived-{kind}" for kind in switch.LINEAGE_KINDS),
    "copied",
    "built",
    "checked",
    "exchanged",
    "hooks-run",
]


class Killed(BaseException):
    """Stands for SIGKILL in process: nothing of the agent's may catch it."""


@pytest.mark.parametrize("step", SWITCH_STEPS)
def test_a_kill_at_any_step_of_the_switch_resumes(
    lab: tuple[Certbot, dict[str, Any], Clock],
    named: NamedLab,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
) -> None:
    """tests/unit/test_switch.py kills the switch for real; here the whole agent is stopped at
    each step and run again: the lineage's key always matches its certificate, the service
    serves a published record, and the rerun ends the rollover."""
    certbot, config, clock = lab
    r = agent(certbot, config, clock)
    r.start("k8")
    new = r.state()["next_record"]
    clock.now += 61

    def crash_point(name: str) -> None:
        if name == step:
            raise Killed(name)

    with monkeypatch.context() as patch:
        patch.setattr(switch, "crash_point", crash_point)
        with pytest.raises(Killed):
            r.finish()
    assert certbot.pair_matches(), "the lineage's key is its certificate's"
    switched = record(certbot.live / "mail" / "cert.pem") == new
    assert switched == (step in ("exchanged", "hooks-run"))
    certbot.assert_served_record_published()
    assert r.state()["step"] == "switching"

    assert "rolled over" in agent(certbot, config, clock).finish()
    assert certbot.pair_matches() and record(certbot.live / "mail" / "cert.pem") == new
    assert record(certbot.served) == new
    assert served_everywhere(named) == [{new}] * 2
    assert sorted(p.name for p in certbot.live.iterdir()) == ["mail"], "nothing left beside"
    versions = sorted(p.name for p in (certbot.archive / "mail").iterdir())
    assert versions == sorted(f"{k}{v}.pem" for k in switch.LINEAGE_KINDS for v in (1, 2))


def test_old_record_stays_until_every_service_switched(
    lab: tuple[Certbot, dict[str, Any], Clock], named: NamedLab
) -> None:
    certbot, config, clock = lab
    old = record(certbot.served)
    r = agent(certbot, config, clock)
    r.start("k3")
    clock.now += 61
    certbot.delivery_result = {
        "error": "'postfix reload' failed (exit 1)",
        "held": None,
        "pending": True,
    }
    with pytest.raises(rollover.RolloverError, match=r"old record stays.*postfix reload"):
        r.finish()
    assert r.state()["step"] == "switched"
    assert all(old in values for values in served_everywhere(named))
    assert (certbot.live / "mail-next").exists()

    certbot.delivery_result = {"error": None, "held": None, "pending": False}
    assert "rolled over" in r.finish()
    assert all(old not in values for values in served_everywhere(named))


def test_a_switch_an_older_agent_left_half_done_resumes(
    lab: tuple[Certbot, dict[str, Any], Clock], named: NamedLab
) -> None:
    certbot, config, clock = lab
    r = agent(certbot, config, clock)
    r.start("k4")
    new = r.state()["next_record"]
    clock.now += 61
    # An agent before the atomic switch, killed after it wrote the next key over the lineage's
    # (its old key kept beside the state), before certbot renewed.
    r.save(step="switching")
    key_file = (certbot.live / "mail" / "privkey.pem").resolve()
    old_key = key_file.read_bytes()
    rollover._write_secret(r.backup_file, old_key)
    rollover._write_secret(key_file, (certbot.live / "mail-next" / "privkey.pem").read_bytes())
    assert "rolled over" in agent(certbot, config, clock).finish()
    assert record(certbot.served) == new
    assert served_everywhere(named) == [{new}] * 2
    assert key_file.read_bytes() == old_key, "the old generation has its own key again"
    assert certbot.pair_matches() and not r.backup_file.exists()


def test_step_two_refuses_while_the_next_record_is_not_served(
    lab: tuple[Certbot, dict[str, Any], Clock], named: NamedLab
) -> None:
    certbot, config, clock = lab
    r = agent(certbot, config, clock)
    r.start("k5")
    clock.now += 61
    # The next record vanished from the servers (an operator, a restored zone...).
    client = dane_publish.client_for(json.loads(certbot.dane_config.read_text()))
    old = record(certbot.served)
    target, _ = client.follow_cnames(OWNER)
    client.replace(target, "TLSA", [old], 5)
    with pytest.raises(rollover.RolloverError, match=r"step 2 refused.*not served everywhere"):
        r.finish()
    assert record(certbot.served) == old and r.state()["step"] == "published"
    assert record(certbot.live / "mail" / "privkey.pem") == old, "nothing switched"
    assert not any(c[0].startswith(str(certbot.hooks)) for c in certbot.calls)


def test_another_label_while_one_runs_is_refused_and_abort_undoes_step_one(
    lab: tuple[Certbot, dict[str, Any], Clock], named: NamedLab
) -> None:
    certbot, config, clock = lab
    old = record(certbot.served)
    r = agent(certbot, config, clock)
    r.start("k6")
    with pytest.raises(rollover.RolloverError, match="a rollover to 'k6' is at step 'published'"):
        r.start("k7")
    assert "aborted" in r.abort()
    assert not (certbot.live / "mail-next").exists()
    assert served_everywhere(named) == [{old}] * 2
    r.start("k7")
    assert r.state()["label"] == "k7" and r.state()["step"] == "published"


def test_unknown_certificate_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "rollover.json"
    cfg.write_text(json.dumps({"certificates": {"mail": {}}}))
    assert rollover.main(["--config", str(cfg), "finish", "web"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "pkinfra-rollover: no rollover configured for certificate 'web' (known: mail)"
