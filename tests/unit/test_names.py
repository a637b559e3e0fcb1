"""DNS name syntax and subtree matching (pkinfra.names): the one check the inventory and the CA
store share."""

from __future__ import annotations

import pytest

from pkinfra import ca, names
from pkinfra.ca import DNSConstraints
from pkinfra.names import InvalidName


@pytest.mark.parametrize(
    "text",
    [
        "mx1\n.example.test",
        "mx1.example.test\n",
        "mx1.example.test.\n",
        "\nmx1.example.test",
        "mx1 .example.test",
        "mx1.example.test\r",
        "mx1.exam\tple.test",
    ],
)
def test_a_newline_or_space_anywhere_is_refused(text: str) -> None:
    with pytest.raises(InvalidName, match="space or control character"):
        names.normalize(text)
    with pytest.raises(InvalidName):
        names.normalize(text, underscore=True, wildcard=True)


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("MX1.Example.Test.", {}, "mx1.example.test"),
        ("_25._tcp.mx1.example.test", {"underscore": True}, "_25._tcp.mx1.example.test"),
        ("*.mx1.example.test", {"wildcard": True}, "*.mx1.example.test"),
        ("xn--bcher-kva.example.test", {}, "xn--bcher-kva.example.test"),
    ],
)
def test_valid_names_are_normalised(text: str, kwargs: dict[str, bool], expected: str) -> None:
    assert names.normalize(text, **kwargs) == expected


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("_25._tcp.mx1.example.test", {}, "label '_25' may only hold"),
        ("_25\n._tcp.example.test", {"underscore": True}, "control character"),
        ("*.example.test", {}, "not allowed here"),
        ("*.test", {"wildcard": True}, "too broad"),
        ("bücher.example.test", {}, "not ASCII"),
        ("a..example.test", {}, "empty label"),
        ("-a.example.test", {}, "label '-a' may only hold"),
        ("a-.example.test", {}, "label 'a-' may only hold"),
    ],
)
def test_invalid_names_say_why(text: str, kwargs: dict[str, bool], message: str) -> None:
    with pytest.raises(InvalidName, match=message):
        names.normalize(text, **kwargs)


def test_invalid_name_is_a_value_error_not_the_builtin_name_error() -> None:
    assert issubclass(InvalidName, ValueError)
    assert not issubclass(InvalidName, NameError)
    assert not hasattr(names, "NameError_")


def test_subtrees_keep_their_leading_dot() -> None:
    assert names.normalize_subtree(".Example.Test") == ".example.test"
    assert names.normalize_subtree("example.test.") == "example.test"
    with pytest.raises(InvalidName, match="control character"):
        names.normalize_subtree(".example.test\n")
    with pytest.raises(InvalidName, match="empty label"):
        names.normalize_subtree("..example.test")


# RFC 5280 as verifiers apply it: no dot = the name and everything below; a leading dot = only
# the names below. A wildcard is inside when all its expansions are, touches when any one is.
@pytest.mark.parametrize(
    ("name", "subtree", "within", "touches"),
    [
        ("example.test", "example.test", True, True),
        ("a.example.test", "example.test", True, True),
        ("a.b.example.test", "example.test", True, True),
        ("badexample.test", "example.test", False, False),
        ("test", "example.test", False, False),
        ("example.test", ".example.test", False, False),
        ("a.example.test", ".example.test", True, True),
        ("badexample.test", ".example.test", False, False),
        ("*.example.test", "example.test", True, True),
        ("*.example.test", ".example.test", True, True),
        ("*.example.test", "a.example.test", False, True),
        ("*.example.test", ".a.example.test", False, False),
        ("*.example.test", "b.a.example.test", False, False),
        ("*.a.example.test", "example.test", True, True),
        ("*.a.example.test", ".example.test", True, True),
    ],
)
def test_subtree_matching(name: str, subtree: str, within: bool, touches: bool) -> None:
    assert names.within_subtree(name, subtree) is within
    assert names.touches_subtree(name, subtree) is touches
    # The CA store decides with the same functions.
    permitted = DNSConstraints(permitted=(subtree,))
    assert (permitted.refusal(name) is None) is within
    excluded = DNSConstraints(excluded=(subtree,))
    assert (excluded.refusal(name) is not None) is touches


@pytest.mark.parametrize(
    ("inner", "outer", "expected"),
    [
        ("example.test", "example.test", True),
        ("a.example.test", "example.test", True),
        (".example.test", "example.test", True),
        ("example.test", ".example.test", False),
        ("a.example.test", ".example.test", True),
        (".example.test", ".example.test", True),
        (".a.example.test", ".example.test", True),
        ("example.test", "a.example.test", False),
        (".example.test", "a.example.test", False),
        ("badexample.test", "example.test", False),
    ],
)
def test_subtree_within_subtree(inner: str, outer: str, expected: bool) -> None:
    assert names.subtree_within(inner, outer) is expected


def test_the_ca_store_has_no_name_check_of_its_own() -> None:
    for copy in ("normalise_dns_name", "within", "_name_permitted", "_name_excluded", "_DNS_LABEL"):
        assert not hasattr(ca, copy), copy
