"""DNS name syntax and name-constraint matching: the one place that says what a valid name is.

Everything else in pkinfra handles names as lower-case text without the trailing dot; this
module turns user input into that form or says precisely what is wrong with it, and decides
whether a name lies in a subtree (the inventory's CA checks and the CA store both ask here).

Subtrees follow RFC 5280 dNSName constraints as X.509 verifiers apply them (OpenSSL, Go,
NSS): ``example.test`` is the name itself and every name below it; ``.example.test`` (a leading
dot) is only the names below it, not ``example.test`` itself.
"""

from __future__ import annotations

import re

from pkinfra.agent.errors import PkinfraError

MAX_NAME_OCTETS = 253
MAX_LABEL_OCTETS = 63

# Host names are LDH (RFC 1123); service labels such as _acme-challenge or _25 also allow a
# leading underscore (RFC 8552), which only the callers that need it turn on. Always used with
# fullmatch: `$` would also match before a trailing newline.
_LDH = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_UNDERSCORE = re.compile(r"_[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")


class InvalidName(PkinfraError, ValueError):
    """A DNS name is not valid where it is used."""


def normalize(
    name: str,
    *,
    wildcard: bool = False,
    underscore: bool = False,
) -> str:
    """Return ``name`` lower-cased without the trailing dot, or raise ``InvalidName``.

    + wildcard: allow ``*.`` as the whole first label
    + underscore: allow labels that start with ``_`` (service names such as ``_25._tcp``)
    """
    if not isinstance(name, str):
        raise InvalidName(f"a DNS name must be text, got {type(name).__name__}")
    text = name.lower()
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise InvalidName("empty DNS name")
    if not text.isascii():
        raise InvalidName(f"DNS name {name!r} is not ASCII (use its xn-- form)")
    if not text.isprintable() or any(c.isspace() for c in text):
        raise InvalidName(f"DNS name {name!r} holds a space or control character")
    if len(text) > MAX_NAME_OCTETS:
        raise InvalidName(f"DNS name '{name}' is {len(text)} octets long (at most 253)")
    labels = text.split(".")
    for index, label in enumerate(labels):
        if label == "*" and index == 0:
            if not wildcard:
                raise InvalidName(f"wildcard name '{name}' is not allowed here")
            if len(labels) < 3:
                raise InvalidName(f"wildcard '{name}' is too broad (needs at least two labels)")
            continue
        if not label:
            raise InvalidName(f"DNS name '{name}' has an empty label")
        if len(label) > MAX_LABEL_OCTETS:
            raise InvalidName(
                f"DNS name '{name}': label '{label[:20]}...' is {len(label)} octets (at most 63)"
            )
        if "*" in label:
            raise InvalidName(f"DNS name '{name}': '*' is only allowed as the whole first label")
        if _LDH.fullmatch(label):
            continue
        if underscore and _UNDERSCORE.fullmatch(label):
            continue
        raise InvalidName(
            f"DNS name '{name}': label '{label}' may only hold letters, digits and inner hyphens"
        )
    return ".".join(labels)


def normalize_subtree(subtree: str) -> str:
    """A name-constraint subtree in normal form: a name, or ``.name`` for its subdomains only."""
    if isinstance(subtree, str) and subtree.startswith("."):
        return "." + normalize(subtree[1:])
    return normalize(subtree)


def is_subdomain(name: str, zone: str) -> bool:
    """True when ``name`` equals ``zone`` or lies below it (both normalized; ``""`` is the root)."""
    return zone == "" or name == zone or name.endswith("." + zone)


def base_name(name: str) -> str:
    """The name a wildcard stands on: ``*.example.test`` -> ``example.test``."""
    return name[2:] if name.startswith("*.") else name


def _in_subtree(name: str, subtree: str) -> bool:
    """A plain (non-wildcard) name in a subtree."""
    if subtree.startswith("."):
        return subtree == "." or name.endswith(subtree)
    return is_subdomain(name, subtree)


def within_subtree(name: str, subtree: str) -> bool:
    """True when every name ``name`` stands for lies in ``subtree`` (a permitted subtree).

    A wildcard ``*.base`` stands for one more label on ``base``: all of those are inside when
    ``base`` is the subtree's domain or below it, with or without the leading dot.
    """
    if name.startswith("*."):
        return is_subdomain(name[2:], subtree.removeprefix("."))
    return _in_subtree(name, subtree)


def touches_subtree(name: str, subtree: str) -> bool:
    """True when some name ``name`` stands for lies in ``subtree`` (an excluded subtree)."""
    if not name.startswith("*."):
        return _in_subtree(name, subtree)
    base = name[2:]
    domain = subtree.removeprefix(".")
    if is_subdomain(base, domain):
        return True
    # *.base also stands for the subtree's own domain when that is one label under base; only
    # a subtree without the leading dot contains its domain.
    return not subtree.startswith(".") and domain.partition(".")[2] == base


def subtree_within(inner: str, outer: str) -> bool:
    """True when every name of the subtree ``inner`` lies in the subtree ``outer``."""
    domain = inner.removeprefix(".")
    if inner.startswith("."):
        # Only names below `domain`: inside whenever `domain` is `outer`'s domain or below it.
        return is_subdomain(domain, outer.removeprefix("."))
    return _in_subtree(domain, outer)
