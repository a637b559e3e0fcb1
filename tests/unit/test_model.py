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
    assert inventory.hosts["mx1.example.test"].pyinfra_name == "mx1.example.test"


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


def test_certificate_names_ending_in_next_are_refused() -> None:
    # Key rollover issues a second lineage '<name>-next': no certificate may take such a name,
    # whether or not a rollover is under way now.
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
        "mx1.example.test: certificates[2].name: 'mail-next' ends with '-next', which names a "
        "key rollover's second lineage",
    ]
    certs[0].pop("rollover")
    certs[1].pop("rollover")
    assert len(problems(base_all(), groups)) == 1
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


# -- issue 12: inventory input --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rdtype", "value"),
    [
        ("A", "192.0.2.1"),
        ("AAAA", "2001:db8::1"),
        ("CNAME", "web1.example.test."),
        ("MX", "10 mx1.example.test."),
        ("SRV", "10 5 443 web1.example.test."),
        ("CAA", '0 issue "letsencrypt.org"'),
        ("NS", "ns1.example.test."),
        ("TXT", 'v=spf1 mx -all "x"'),
        ("TXT", '"two" "strings"'),
    ],
)
def test_record_values_that_are_one_value_are_accepted(rdtype: str, value: str) -> None:
    groups = base_groups()
    mx1(groups)["records"] = [{"name": "x.example.test", "type": rdtype, "value": value}]
    assert problems(base_all(), groups) == []


@pytest.mark.parametrize(
    ("rdtype", "value", "message"),
    [
        ("CNAME", "web1.example.test.\n$INCLUDE /etc/passwd", "control character ('\\n')"),
        ("TXT", "a\rb", "control character ('\\r')"),
        ("CNAME", "web1.example.test. web2.example.test.", "is more than one CNAME value"),
        ("MX", "10 mx1.example.test. (", "unbalanced parentheses"),
        ("CNAME", "web1.example.test. ; hidden", "reads back as 'web1.example.test.'"),
        ("CNAME", "web1.example.test", "reads back as 'web1.example.test.'"),
        ("AAAA", "2001:DB8::1", "reads back as '2001:db8::1'"),
        ("A", "192.0.2.256", "not a valid A value"),
    ],
)
def test_record_values_must_come_back_from_dnspython_unchanged(
    rdtype: str, value: str, message: str
) -> None:
    groups = base_groups()
    mx1(groups)["records"] = [{"name": "x.example.test", "type": rdtype, "value": value}]
    found = problems(base_all(), groups)
    assert len(found) == 1 and found[0].startswith("mx1.example.test: records[0].value: ")
    assert message in found[0]


def test_a_relative_name_in_a_value_is_refused_not_put_under_the_zone() -> None:
    groups = base_groups()
    mx1(groups)["records"] = [{"name": "x.example.test", "type": "CNAME", "value": "web1"}]
    assert problems(base_all(), groups) == [
        "mx1.example.test: records[0].value: 'web1' is not one CNAME value as written: it reads "
        "back as 'web1.' (write that; names end with a dot)"
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/var/www/acme", None),
        ("/srv/www/site-1/acme_challenge", None),
        ("var/www", "must be an absolute path"),
        ("/var/www/", "not in normal form"),
        ("/var//www", "not in normal form"),
        ("/var/./www", "not in normal form"),
        ("/var/www/..", "holds '..'"),
        ("/var/www/a b", "holds a space"),
        ("/var/w\nww", "control character"),
        ("/var/www;", "holds ';'"),
        ("/var/www{", "holds '{'"),
        ("/var/$HOME", "holds '$'"),
        ("/var/`id`", "holds '`'"),
        ("/var/'a'", "holds '''"),
        ('/var/"a"', "holds '\"'"),
        ("/var/a\\b", "holds '\\'"),
    ],
)
def test_one_path_check_for_every_host_path(value: str, message: str | None) -> None:
    fields = [
        ("certificates[0].webroot", lambda g: g["certificates"][0].update(webroot=value)),
        ("certificates[1].directory", lambda g: g["certificates"][1].update(directory=value)),
        ("services[0].files[0].path", lambda g: g["services"][0]["files"][0].update(path=value)),
        (
            "services[0].notify.pidfile",
            lambda g: g["services"][0].update(notify={"signal": "HUP", "pidfile": value}),
        ),
    ]
    for field, change in fields:
        groups = base_groups()
        mx1(groups)["certificates"][0].update(challenge="http-01", webroot="/var/www/acme")
        change(mx1(groups))
        found = problems(base_all(), groups)
        if message is None:
            assert found == [], field
        else:
            assert len(found) == 1 and found[0].startswith(f"mx1.example.test: {field}: "), found
            assert message in found[0], found


def test_controller_paths_may_be_relative_but_are_normal() -> None:
    data = base_all()
    data["pki_dir"] = "state/pki"
    data["cas"]["duckcorp"] = {"path_length": 1, "passphrase": {"file": ".lab/passphrase"}}
    assert problems(data, base_groups()) == []
    data["secrets_dir"] = "state/../secrets"
    data["cas"]["duckcorp"]["passphrase"]["file"] = ".lab//passphrase"
    assert problems(data, base_groups()) == [
        "group_data/all.py: secrets_dir: path 'state/../secrets' holds '..'",
        "group_data/all.py: cas.duckcorp.passphrase.file: path '.lab//passphrase' is not in "
        "normal form (no '//', '/./' or trailing '/'): write '.lab/passphrase'",
    ]


def test_names_with_a_newline_are_refused_everywhere() -> None:
    groups = base_groups()
    mx1(groups)["certificates"][0]["names"] = ["mx1\n.example.test"]
    mx1(groups)["tlsa"][0]["name"] = "mx1.example.test\nx"
    data = base_all()
    data["cas"]["duckcorp-backup"]["permitted"] = ["backup\n.example.test"]
    found = problems(data, groups)
    assert [p.split(": ")[1] for p in found] == [
        "cas.duckcorp-backup.permitted[0]",
        "certificates[0].names[0]",
        "tlsa[0].name",
    ]
    assert all("space or control character" in p for p in found)


def test_ca_subtrees_with_a_leading_dot_cover_only_subdomains() -> None:
    data = base_all()
    data["cas"]["duckcorp-backup"]["permitted"] = [".backup.example.test"]
    groups = base_groups()
    assert problems(data, groups) == []  # mx1.backup.example.test is below it
    mx1(groups)["certificates"][1]["names"] = ["backup.example.test"]
    assert problems(data, groups) == [
        "mx1.example.test: certificates[1].names[0]: 'backup.example.test' is outside the "
        "permitted subtrees of CA 'duckcorp-backup' (.backup.example.test)"
    ]
    # Without the dot the name itself is inside.
    data["cas"]["duckcorp-backup"]["permitted"] = ["backup.example.test"]
    assert problems(data, groups) == []
    # A sub-CA cannot take back the domain its parent left out.
    data["cas"]["duckcorp"]["permitted"] = [".example.test"]
    data["cas"]["duckcorp-monitoring"]["permitted"] = ["example.test"]
    assert problems(data, base_groups()) == [
        "group_data/all.py: cas.duckcorp-monitoring.permitted[0]: 'example.test' is wider than "
        "the parent 'duckcorp' allows (.example.test)"
    ]


def test_a_wildcard_that_could_be_an_excluded_name_is_refused() -> None:
    data = base_all()
    data["cas"]["duckcorp-backup"]["excluded"] = ["secret.backup.example.test"]
    groups = base_groups()
    mx1(groups)["certificates"][1]["names"] = ["*.backup.example.test"]
    assert problems(data, groups) == [
        "mx1.example.test: certificates[1].names[0]: '*.backup.example.test' is in an excluded "
        "subtree of CA 'duckcorp-backup' (secret.backup.example.test)"
    ]
    data["cas"]["duckcorp-backup"]["excluded"] = [".secret.backup.example.test"]
    assert problems(data, groups) == []


def second_host(groups: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    groups["web"] = [("@docker/web1", {"fqdn": "web1.example.test", **data})]
    return groups


def test_a_delegated_name_belongs_to_one_host() -> None:
    cert = {"name": "w", "names": ["*.mx1.example.test"], "issuer": "acme", "challenge": "dns-01"}
    groups = second_host(base_groups(), {"certificates": [cert]})
    assert problems(base_all(), groups) == [
        "web1.example.test: certificates[0].names[0]: _acme-challenge.mx1.example.test TXT is "
        "already mx1.example.test's (certificates[0].names[0]): a name and type belong to one "
        "host"
    ]
    cert = {"name": "w", "names": ["web1.example.test"], "issuer": "duckcorp"}
    tlsa = [{"port": 25, "name": "mx1.example.test", "certificate": "w"}]
    groups = second_host(base_groups(), {"certificates": [cert], "tlsa": tlsa})
    assert problems(base_all(), groups) == [
        "web1.example.test: tlsa[0].name: _25._tcp.mx1.example.test TLSA is already "
        "mx1.example.test's (tlsa[0].certificate): a name and type belong to one host (an HA "
        "pair says shared: true on each publication)"
    ]
    # One host may use one name twice (a wildcard and its base share the challenge name).
    groups = base_groups()
    mx1(groups)["certificates"][0]["names"] = ["mx1.example.test", "*.mx1.example.test"]
    assert problems(base_all(), groups) == []


def test_an_ha_pair_shares_a_tlsa_owner_when_every_publication_says_so() -> None:
    """Two hosts behind pg.example.test, each with its own CA-issued key: one RRset."""
    groups = base_groups()
    for fqdn in ("db1.example.test", "db2.example.test"):
        groups.setdefault("db", []).append(
            (
                f"@docker/{fqdn.split('.')[0]}",
                {
                    "fqdn": fqdn,
                    "certificates": [
                        {"name": "pg", "names": [fqdn, "pg.example.test"], "issuer": "duckcorp"}
                    ],
                    "tlsa": [
                        {
                            "port": 5432,
                            "name": "pg.example.test",
                            "certificate": "pg",
                            "shared": True,
                        }
                    ],
                },
            )
        )
    assert problems(base_all(), groups) == []
    groups["db"][1][1]["tlsa"][0]["shared"] = False
    assert problems(base_all(), groups) == [
        "db2.example.test: tlsa[0].name: _5432._tcp.pg.example.test TLSA is also "
        "db1.example.test's (tlsa[0].name) and db1.example.test's says shared, this one does "
        "not: every publication at a shared owner says shared: true"
    ]


@pytest.mark.parametrize(
    ("fqdn", "message"),
    [
        ("pkinfra-transfer", "'pkinfra-transfer' is the name of pkinfra's transfer key"),
        (
            "k2.mx1.example.test",
            "'k2.mx1.example.test' is the name mx1.example.test's TSIG key takes after rotation",
        ),
        (
            "k17.mx1.example.test",
            "'k17.mx1.example.test' is the name mx1.example.test's TSIG key takes after rotation",
        ),
        (
            "mx1.example.test.next",
            "'mx1.example.test.next.key' is the file of mx1.example.test's next TSIG key during "
            "a rotation",
        ),
        ("k2.web1.example.test", None),
        ("kx.mx1.example.test", None),
    ],
)
def test_host_names_that_tsig_rotation_uses_are_refused(fqdn: str, message: str | None) -> None:
    groups = base_groups()
    groups["other"] = [("@docker/other", {"fqdn": fqdn})]
    expected = [] if message is None else [f"{fqdn}: fqdn: {message}"]
    assert problems(base_all(), groups) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preferred-chain", "ISRG Root X1", "-v", "--no-eff-email", "-m", "a@b.c"], None),
        (["--no-verify-ssl"], "'--no-verify-ssl' turns off TLS verification"),
        (["--no-verify"], "'--no-verify' turns off TLS verification"),
        (["--pre-hook=id"], "'--pre-hook=id' adds a hook"),
        (["--post-hook", "x"], "'--post-hook' adds a hook"),
        (["--manual-cleanup-hook", "x"], "'--manual-cleanup-hook' adds a hook"),
        (["--renew-hook", "x"], "'--renew-hook' adds a hook"),
        (["--server=https://x.example/dir"], "overrides what pkinfra derives"),
        (["--config-dir", "/tmp"], "overrides what pkinfra derives"),
        (["-vd", "x.example.org"], "'-vd' (--domains) overrides"),
        (["-c", "/tmp/cli.ini"], "'-c' (--config) overrides"),
    ],
)
def test_certbot_args_may_not_weaken_or_override(args: list[str], message: str | None) -> None:
    data = base_all()
    data["acme"]["certbot_args"] = args
    found = problems(data, base_groups())
    if message is None:
        assert found == []
    else:
        assert len(found) == 1
        assert found[0].startswith("group_data/all.py: acme.certbot_args[0]: ")
        assert message in found[0]


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://acme-v02.api.letsencrypt.org/directory", True),
        ("https://acme.example.test:14000/dir", True),
        ("https://acme.example.test/acme/directory/", True),
        ("https://acme.example.test/a/../dir", False),
        ("https://acme.example.test/./dir", False),
        ("https://acme.example.test//dir", False),
        ("https://acme.example.test/%2e%2e/dir", False),
        ("https://user:pw@acme.example.test/dir", False),
        ("https://acme.example.test/dir?x=1", False),
        ("http://acme.example.test/dir", False),
    ],
)
def test_acme_directory_url(url: str, ok: bool) -> None:
    data = base_all()
    data["acme"]["directory"] = url
    found = problems(data, base_groups())
    assert (found == []) is ok, found
    assert all(p.startswith("group_data/all.py: acme.directory: ") for p in found)


def test_files_pkinfra_writes_are_not_service_files() -> None:
    groups = base_groups()
    files = mx1(groups)["services"][0]["files"]
    files += [
        {"path": "/etc/pkinfra/services.json", "content": "cert"},
        {"path": "/var/lib/pkinfra/pending/x", "content": "cert"},
        {"path": "/usr/local/bin/pkinfra-certbot-hook", "content": "cert"},
        {"path": "/etc/bind/named.conf.local", "content": "cert"},
        {"path": "/etc/pkinfra-not-ours/x.pem", "content": "cert"},
        {"path": "/etc/postfix/k.pem", "content": "cert"},
    ]
    mx1(groups)["services"].append(
        {
            "name": "other",
            "certificate": "backup",
            "files": [{"path": "/etc/pkinfra-not-ours/x.pem", "content": "chain"}],
            "notify": {"command": "true"},
        }
    )
    assert problems(base_all(), groups) == [
        "mx1.example.test: services[0].files[1].path: '/etc/pkinfra/services.json' is pkinfra's "
        "own (/etc/pkinfra/)",
        "mx1.example.test: services[0].files[2].path: '/var/lib/pkinfra/pending/x' is pkinfra's "
        "own (/var/lib/pkinfra/)",
        "mx1.example.test: services[0].files[3].path: '/usr/local/bin/pkinfra-certbot-hook' is "
        "pkinfra's own (/usr/local/bin/pkinfra-*)",
        "mx1.example.test: services[0].files[4].path: '/etc/bind/named.conf.local' is pkinfra's "
        "own (/etc/bind/named.conf.local*)",
        "mx1.example.test: services[0].files[6].path: '/etc/postfix/k.pem' is written twice",
        "mx1.example.test: services[1].files[0].path: '/etc/pkinfra-not-ours/x.pem' is also "
        "written by services[0].files[5]",
    ]


def test_certificate_directories_do_not_overlap() -> None:
    groups = base_groups()
    certs = mx1(groups)["certificates"]
    certs[1]["directory"] = "/etc/pkinfra/certs/mine"  # one below the default place: fine
    certs[0]["directory"] = "/etc/letsencrypt/live/mail"  # its own default, written out: fine
    certs.append({"name": "c", "names": ["c.backup.example.test"], "issuer": "duckcorp-backup"})
    assert problems(base_all(), groups) == []
    certs[2]["directory"] = "/etc/pkinfra/certs/mine/next"
    assert problems(base_all(), groups) == [
        "mx1.example.test: certificates[2].directory: '/etc/pkinfra/certs/mine/next' overlaps "
        "the directory of certificates[1] ('/etc/pkinfra/certs/mine')"
    ]
    certs[0]["directory"] = "/etc/letsencrypt/live/other"
    assert problems(base_all(), groups)[0] == (
        "mx1.example.test: certificates[0].directory: '/etc/letsencrypt/live/other' is "
        "pkinfra's own (/etc/letsencrypt/)"
    )
    certs[0].pop("directory")
    certs[2]["directory"] = "/etc/pkinfra/certs/backup"  # the default of certificates[1]'s name
    certs[1].pop("directory")
    assert problems(base_all(), groups) == [
        "mx1.example.test: certificates[2].directory: '/etc/pkinfra/certs/backup' is also the "
        "directory of certificates[1]"
    ]


def test_grant_on_a_zone_apex_is_warned_about() -> None:
    groups = base_groups()
    mx1(groups)["certificates"][0]["names"] = ["mx1.example.test", "example.test"]
    inventory = load(Path("/nonexistent"), groups, {"all": base_all()})
    assert [str(w) for w in inventory.warnings] == [
        "mx1.example.test: certificates[0].names[1]: the grant on _acme-challenge.example.test "
        "also lets this host obtain *.example.test"
    ]
    # Asked for explicitly: nothing to point out.
    mx1(groups)["certificates"][0]["names"].append("*.example.test")
    assert load(Path("/nonexistent"), groups, {"all": base_all()}).warnings == ()


def test_open_controller_secrets_are_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = base_all()
    data["cas"]["duckcorp"] = {"path_length": 1, "passphrase": {"file": "pass"}}
    (tmp_path / "pass").write_text("secret passphrase\n")
    (tmp_path / "pass").chmod(0o600)
    for place in ("pki/secrets", "pki/duckcorp", "pki/duckcorp-backup"):
        (tmp_path / place).mkdir(parents=True, mode=0o700)
    (tmp_path / "pki").chmod(0o755)  # the store's top directory may be listable
    assert load(tmp_path, base_groups(), {"all": data}).warnings == ()
    (tmp_path / "pass").chmod(0o640)
    (tmp_path / "pki" / "secrets").chmod(0o755)
    (tmp_path / "pki" / "duckcorp-backup").chmod(0o750)
    warnings = [str(w) for w in load(tmp_path, base_groups(), {"all": data}).warnings]
    assert warnings == [
        "group_data/all.py: cas.duckcorp.passphrase.file: 'pass' is readable by group or others "
        "(mode 0640; chmod 600 it)",
        "group_data/all.py: pki_dir: 'pki/duckcorp-backup' is open to group or others (mode "
        "0750; chmod 700 it)",
        "group_data/all.py: secrets_dir: 'pki/secrets' is open to group or others (mode 0755; "
        "chmod 700 it)",
    ]
    assert not any("secret passphrase" in w for w in warnings)
    # load_or_exit prints them and goes on.
    (tmp_path / "group_data").mkdir()
    (tmp_path / "group_data" / "all.py").write_text(
        "\n".join(f"{k} = {v!r}" for k, v in data.items())
    )
    model.load_or_exit(str(tmp_path / "inventory.py"), base_groups())
    err = capsys.readouterr().err
    assert "pkinfra: warning: group_data/all.py: cas.duckcorp.passphrase.file: 'pass'" in err
    assert "pkinfra: warning: group_data/all.py: secrets_dir:" in err


def test_every_host_path_of_pkinfra_is_in_a_reserved_place() -> None:
    # Every host path of pkinfra's own is named in pkinfra.agent.paths (or is BIND's layout):
    # each must fall in one of the reserved places.
    from pkinfra import issue, zones
    from pkinfra.agent import dane_publish, delivery, rollover
    from pkinfra.agent import paths as host_paths

    layout = zones.Layout()
    named = [v for k, v in vars(host_paths).items() if k.isupper() and isinstance(v, str)]
    assert host_paths.TSIG_KEY in named and len(named) > 20
    # The agents that still spell their defaults out agree with it.
    assert (rollover.CONFIG, dane_publish.CONFIG) == (
        host_paths.ROLLOVER_CONFIG,
        host_paths.DANE_CONFIG,
    )
    paths = [
        *named,
        issue.ca_bundle_path("duckcorp"),
        str(delivery.STATE_DIR),
        str(rollover.LIVE),
        layout.key_dir,
        layout.zone_dir,
        layout.dnssec_key_dir,
        layout.options_file,
        layout.local_file,
        f"{issue.TRUST_DIR}/pkinfra-duckcorp.crt",
    ]
    assert [p for p in paths if model.reserved_host_path(p) is None] == []
    assert model.reserved_host_path("/etc/nginx/tls/web.key") is None


def test_groups_are_found_as_pyinfra_finds_them() -> None:
    groups = base_groups()
    namespace = {
        **groups,
        "__file__": "inventory.py",
        "_here": Path("/x"),
        "_ssh": lambda address: {},
        "_pair": ("a", 1),
        "settings": {"not": "a group"},
    }
    assert model.inventory_groups(namespace) == groups


def test_an_underscore_group_is_refused_unless_its_hosts_are_in_other_groups() -> None:
    groups = base_groups()
    helper = {**groups, "_mail_again": list(groups["mail"])}
    assert problems(base_all(), helper) == []
    hidden = {k: v for k, v in groups.items() if k != "mail"}
    hidden["_mail"] = groups["mail"]
    assert problems(base_all(), hidden) == [
        "mx1.example.test: groups: group '_mail' starts with '_', which pyinfra ignores: this "
        "host would never be contacted (rename the group)"
    ]
