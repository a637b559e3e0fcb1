"""The inventory model: every kind of mistake is caught, named, and reported together."""

from __future__ import annotations

import copy
import runpy
from pathlib import Path
from typing import Any

import pytest

from pkinfra import model
from pkinfra.model import InventoryError, load

ROOT = Path(__file__).resolve().parents[2]


def base_all() -> dict[str, Any]:
    return {
        "zones": [{"name": "example.test"}, {"name": "unsigned.test", "signed": False}],
        "shadow_zone": {"name": "shadow.test"},
        "dns": {"primary": "ns1.example.test"},
        "cas": {
            "duckcorp": {"unencrypted": True, "path_length": 1},
            "duckcorp-backup": {
                "parent": "duckcorp",
                "path_length": 0,
                "unencrypted": True,
                "permitted": ["backup.example.test"],
            },
            "duckcorp-monitoring": {
                "parent": "duckcorp",
                "path_length": 0,
                "unencrypted": True,
                "permitted": ["monitoring.example.test"],
            },
        },
        "acme": {"directory": "https://acme.example.test:14000/dir"},
    }


def base_groups() -> dict[str, Any]:
    return {
        "dns": [("@docker/ns1", {"fqdn": "ns1.example.test"})],
        "mail": [
            (
                "@docker/mx1",
                {
                    "fqdn": "mx1.example.test",
                    "certificates": [
                        {
                            "name": "mail",
                            "names": ["mx1.example.test"],
                            "issuer": "acme",
                            "challenge": "dns-01",
                        },
                        {
                            "name": "backup",
                            "names": ["mx1.backup.example.test"],
                            "issuer": "duckcorp-backup",
                        },
                    ],
                    "services": [
                        {
                            "name": "postfix",
                            "certificate": "mail",
                            "files": [{"path": "/etc/postfix/k.pem", "content": "key"}],
                            "notify": {"command": "postfix reload"},
                        },
                    ],
                    "tlsa": [{"port": 25, "certificate": "mail"}],
                },
            )
        ],
    }


def problems(
    all_data: dict[str, Any], groups: dict[str, Any], extra: dict[str, dict[str, Any]] | None = None
) -> list[str]:
    try:
        load(Path("/nonexistent"), groups, {"all": all_data, **(extra or {})})
    except InventoryError as exc:
        return [str(p) for p in exc.problems]
    return []


def mx1(groups: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = groups["mail"][0][1]
    return data


def test_base_inventory_is_valid() -> None:
    assert problems(base_all(), base_groups()) == []


def test_lab_inventory_loads_and_names_every_host() -> None:
    namespace = runpy.run_path(str(ROOT / "inventory.py"))
    inventory = namespace["_inventory"]
    assert set(inventory.hosts) == {
        "ns1.example.test",
        "ns2.example.test",
        "resolver.example.test",
        "acme.example.test",
        "web1.example.test",
        "mx1.example.test",
        "db1.example.test",
        "mon1.example.test",
    }
    assert inventory.hosts["mon1.example.test"].pyinfra_name == "mon1.example.test"
    assert inventory.hosts["mx1.example.test"].pyinfra_name == "@docker/pkinfra-mx1"


def test_unknown_ca_names_host_field_and_known_cas() -> None:
    groups = base_groups()
    mx1(groups)["certificates"][1]["issuer"] = "duckcorp-bakup"
    assert problems(base_all(), groups) == [
        "mx1.example.test: certificates[1].issuer: unknown CA 'duckcorp-bakup' (known: acme, "
        "duckcorp, duckcorp-backup, duckcorp-monitoring)"
    ]


def test_unknown_certificate_in_service() -> None:
    groups = base_groups()
    mx1(groups)["services"][0]["certificate"] = "mial"
    assert problems(base_all(), groups) == [
        "mx1.example.test: services[0].certificate: unknown certificate 'mial' "
        "(known: backup, mail)"
    ]


def test_unknown_dns_server_host() -> None:
    all_data = base_all()
    all_data["dns"]["secondaries"] = ["ns9.example.test"]
    assert problems(all_data, base_groups()) == [
        "group_data/all.py: dns.secondaries[0]: unknown host 'ns9.example.test' "
        "(known: mx1.example.test, ns1.example.test)"
    ]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("mx1..example.test", "has an empty label"),
        ("mx_1.example.test", "label 'mx_1' may only hold letters, digits and inner hyphens"),
        ("-mx1.example.test", "label '-mx1' may only hold"),
        ("a" * 64 + ".example.test", "is 64 octets (at most 63)"),
    ],
)
def test_invalid_dns_names(name: str, message: str) -> None:
    groups = base_groups()
    mx1(groups)["certificates"][0]["names"] = [name]
    found = problems(base_all(), groups)
    assert len(found) == 1
    assert found[0].startswith("mx1.example.test: certificates[0].names[0]: ")
    assert message in found[0]


def test_wildcard_not_allowed_for_fqdn_tlsa_or_http01() -> None:
    groups = base_groups()
    mx1(groups)["fqdn"] = "*.example.test"
    assert problems(base_all(), groups) == [
        "*.example.test: fqdn: wildcard name '*.example.test' is not allowed here"
    ]
    groups = base_groups()
    mx1(groups)["tlsa"][0]["name"] = "*.example.test"
    assert problems(base_all(), groups) == [
        "mx1.example.test: tlsa[0].name: wildcard name '*.example.test' is not allowed here"
    ]
    groups = base_groups()
    cert = mx1(groups)["certificates"][0]
    cert.update(challenge="http-01", webroot="/var/www/acme", names=["*.example.test"])
    mx1(groups)["tlsa"][0]["name"] = "mx1.example.test"
    assert problems(base_all(), groups) == [
        "mx1.example.test: certificates[0].names[0]: wildcard '*.example.test' is not allowed "
        "with http-01 (ACME needs dns-01)"
    ]


def test_wildcard_and_apex_share_one_challenge_name() -> None:
    groups = base_groups()
    mx1(groups)["certificates"][0]["names"] = ["*.example.test", "example.test"]
    mx1(groups)["tlsa"][0]["name"] = "mx1.example.test"
    inventory = load(Path("/x"), groups, {"all": base_all()})
    txt = [d for d in inventory.all_delegations() if d.rdtype == "TXT"]
    assert [d.owner for d in txt] == ["_acme-challenge.example.test"]


def test_name_outside_every_managed_zone() -> None:
    groups = base_groups()
    mx1(groups)["certificates"][0]["names"] = ["mx1.example.org"]
    mx1(groups)["tlsa"][0]["name"] = "mx1.example.test"
    assert problems(base_all(), groups) == [
        "mx1.example.test: certificates[0].names[0]: '_acme-challenge.mx1.example.org' is "
        "outside every managed zone"
    ]


def test_name_too_long_once_delegated_into_shadow_zone() -> None:
    # 4 labels of 60 octets + "example.test": 253 octets, valid on its own ...
    long_name = ".".join(["a" * 60] * 4)[: 253 - len(".example.test")] + ".example.test"
    long_name = long_name.replace("..", ".a.")
    groups = base_groups()
    mx1(groups)["certificates"][0]["names"] = [long_name]
    mx1(groups)["tlsa"][0]["name"] = "mx1.example.test"
    found = problems(base_all(), groups)
    assert len(found) == 1
    assert "delegated into the shadow zone" in found[0]
    assert "(at most 253)" in found[0]
    assert found[0].startswith("mx1.example.test: certificates[0].names[0]: ")


def test_duplicate_certificate_names() -> None:
    groups = base_groups()
    mx1(groups)["certificates"][1]["name"] = "mail"
    assert (
        "mx1.example.test: certificates[1].name: duplicate certificate name 'mail' "
        "(also certificates[0])" in problems(base_all(), groups)
    )


def test_sub_ca_parent_cycle() -> None:
    all_data = base_all()
    all_data["cas"]["duckcorp"]["parent"] = "duckcorp-backup"
    found = problems(all_data, base_groups())
    assert (
        "group_data/all.py: cas.duckcorp.parent: parent cycle: duckcorp -> "
        "duckcorp-backup -> duckcorp" in found
    )


def test_sub_ca_constraint_wider_than_parent() -> None:
    all_data = base_all()
    all_data["cas"]["duckcorp"]["permitted"] = ["example.test"]
    all_data["cas"]["duckcorp-backup"]["permitted"] = ["example.org"]
    assert (
        "group_data/all.py: cas.duckcorp-backup.permitted[0]: 'example.org' is wider than the "
        "parent 'duckcorp' allows (example.test)"
    ) in problems(all_data, base_groups())


def test_sub_ca_path_length_must_shrink() -> None:
    all_data = base_all()
    all_data["cas"]["duckcorp"]["path_length"] = 0
    found = problems(all_data, base_groups())
    assert (
        "group_data/all.py: cas.duckcorp-backup.parent: CA 'duckcorp' has path_length 0: "
        "it cannot have sub-CAs" in found
    )


def test_certificate_name_outside_ca_permitted_subtrees() -> None:
    groups = base_groups()
    mx1(groups)["certificates"][1]["names"] = ["mx1.example.test"]
    assert problems(base_all(), groups) == [
        "mx1.example.test: certificates[1].names[0]: 'mx1.example.test' is outside the permitted "
        "subtrees of CA 'duckcorp-backup' (backup.example.test)"
    ]


def test_tlsa_for_a_certificate_the_host_does_not_have() -> None:
    groups = base_groups()
    mx1(groups)["tlsa"][0]["certificate"] = "web"
    assert problems(base_all(), groups) == [
        "mx1.example.test: tlsa[0].certificate: host has no certificate 'web' (known: backup, mail)"
    ]


def test_key_file_readable_by_others() -> None:
    groups = base_groups()
    mx1(groups)["services"][0]["files"][0]["mode"] = "0644"
    assert problems(base_all(), groups) == [
        "mx1.example.test: services[0].files[0].mode: key file mode 0644 is readable by others "
        "(use 0600 or 0640)"
    ]


def test_unknown_key_type() -> None:
    groups = base_groups()
    mx1(groups)["certificates"][0]["key_type"] = "ec-p512"
    assert problems(base_all(), groups) == [
        "mx1.example.test: certificates[0].key_type: unknown key type 'ec-p512' (known: "
        "ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096, ed25519)"
    ]


@pytest.mark.parametrize("value", [0, -5])
def test_zero_or_negative_durations(value: int) -> None:
    groups = base_groups()
    mx1(groups)["certificates"][1]["validity_days"] = value
    all_data = base_all()
    all_data["shadow_zone"]["tlsa_ttl"] = value
    found = problems(all_data, groups)
    assert (
        f"group_data/all.py: shadow_zone.tlsa_ttl: must be a positive number of seconds, "
        f"got {value}" in found
    )
    assert (
        f"mx1.example.test: certificates[1].validity_days: must be a positive number of "
        f"days, got {value}" in found
    )


def test_http01_without_webroot() -> None:
    groups = base_groups()
    mx1(groups)["certificates"][0]["challenge"] = "http-01"
    assert problems(base_all(), groups) == [
        "mx1.example.test: certificates[0].webroot: http-01 needs a webroot (the directory "
        "nginx serves)"
    ]


def test_every_problem_is_reported_at_once() -> None:
    groups = base_groups()
    host = mx1(groups)
    host["certificates"][1]["issuer"] = "nope"
    host["certificates"][0]["key_type"] = "dsa"
    host["services"][0]["files"][0]["mode"] = "0604"
    host["tlsa"][0]["certificate"] = "web"
    all_data = base_all()
    all_data["cas"]["duckcorp"]["parent"] = "duckcorp-monitoring"
    found = problems(all_data, groups)
    assert len(found) == 5, found
    assert len(set(found)) == 5


def test_typo_in_field_name_is_caught() -> None:
    groups = base_groups()
    host = mx1(groups)
    host["certificate"] = host.pop("certificates")
    host.pop("services")
    host.pop("tlsa")
    assert problems(base_all(), groups) == [
        "@docker/mx1: certificate: unknown field (did you mean 'certificates'?)"
    ]


def test_field_from_group_file_names_the_file() -> None:
    groups = base_groups()
    host = mx1(groups)
    services = host.pop("services")
    services[0]["files"][0]["mode"] = "0666"
    found = problems(base_all(), groups, {"mail": {"services": services}})
    assert found == [
        "mx1.example.test: services[0].files[0].mode: key file mode 0666 is readable by others "
        "(use 0600 or 0640)"
    ] or found[0].startswith("mx1.example.test: services")


def test_global_setting_in_group_file_is_refused() -> None:
    found = problems(base_all(), base_groups(), {"mail": {"zones": []}})
    assert found == [
        "group_data/mail.py: zones: belongs in group_data/all.py (it applies to every host)"
    ]


def test_ca_needs_key_protection_choice() -> None:
    all_data = base_all()
    del all_data["cas"]["duckcorp"]["unencrypted"]
    assert problems(all_data, base_groups()) == [
        "group_data/all.py: cas.duckcorp: needs 'passphrase' (env or file), or "
        "'unencrypted: True' to keep the key in clear"
    ]


def test_delegation_names_and_grant() -> None:
    d = model.delegation(
        "mx1.example.test",
        "_acme-challenge.mx1.example.test",
        "TXT",
        ["example.test", "unsigned.test"],
        "shadow.test",
    )
    assert d.zone == "example.test"
    assert d.target == "_acme-challenge.mx1.example.test.shadow.test"
    assert d.grant == (
        'grant "mx1.example.test" name _acme-challenge.mx1.example.test.shadow.test. TXT;'
    )


def test_delegation_length_limit_is_exact() -> None:
    def owner(first: int) -> str:
        return ".".join(["a" * first, "b" * 60, "c" * 60, "d" * 60, "example.test"])

    # owner + "." + "shadow.test" is exactly 253 octets: allowed; one octet more: refused.
    assert len(owner(45)) + len(".shadow.test") == 253
    d = model.delegation("h.example.test", owner(45), "TXT", ["example.test"], "shadow.test")
    assert len(d.target) == 253
    with pytest.raises(ValueError, match="254 octets"):
        model.delegation("h.example.test", owner(46), "TXT", ["example.test"], "shadow.test")


def test_removed_fields_do_not_leak_between_cases() -> None:
    # base_groups() must hand out fresh copies (the mutation tests above rely on it)
    a = base_groups()
    b = copy.deepcopy(a)
    mx1(a)["fqdn"] = "changed.example.test"
    assert mx1(b)["fqdn"] == "mx1.example.test"


def test_rollover_label_needs_its_next_name_free() -> None:
    groups = base_groups()
    certs = mx1(groups)["certificates"]
    certs[0]["rollover"] = "2026-11"
    certs[1]["rollover"] = "2026-11"
    assert problems(base_all(), groups) == []
    certs.append(
        {
            "name": "mail-next",
            "names": ["mx1.example.test"],
            "issuer": "acme",
            "challenge": "dns-01",
        }
    )
    assert problems(base_all(), groups) == [
        "mx1.example.test: certificates[0].rollover: a rollover uses the name 'mail-next', "
        "which is another certificate's name here",
    ]
    certs.pop()
    certs[0]["rollover"] = "not a label!"
    assert any("certificates[0].rollover" in p for p in problems(base_all(), groups))


def test_rollover_wait_is_a_global_setting() -> None:
    data = base_all()
    data["rollover_wait"] = 90
    inventory = load(Path("/nonexistent"), base_groups(), {"all": data})
    assert inventory.settings.rollover_wait == 90
    assert any(
        "group_data/mail.py" in p and "rollover_wait" in p
        for p in problems(base_all(), base_groups(), {"mail": {"rollover_wait": 90}})
    )
