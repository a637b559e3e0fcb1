"""DNS name syntax: the one place that says what a valid name is.

Everything else in pkinfra handles names as lower-case text without the trailing dot; this
module turns user input into that form or says precisely what is wrong with it.
"""

from __future__ import annotations

import re

MAX_NAME_OCTETS = 253
MAX_LABEL_OCTETS = 63

# Host names are LDH (RFC 1123); service labels such as _acme-challenge or _25 also allow a
# leading underscore (RFC 8552), which only the callers that need it turn on.
_LDH = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
_UNDERSCORE = re.compile(r"^_[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")


class NameError_(ValueError):
    """A DNS name is not valid where it is used."""


def normalize(
    name: str,
    *,
    wildcard: bool = False,
    underscore: bool = False,
) -> str:
    """Return ``name`` lower-cased without the trailing dot, or raise ``NameError_``.

    + wildcard: allow ``*.`` as the whole first label
    + underscore: allow labels that start with ``_`` (service names such as ``_25._tcp``)
    """
    if not isinstance(name, str):
        raise NameError_(f"a DNS name must be text, got {type(name).__name__}")
    text = name.strip().lower()
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise NameError_("empty DNS name")
    if len(text) > MAX_NAME_OCTETS:
        raise NameError_(f"DNS name '{name}' is {len(text)} octets long (at most 253)")
    labels = text.split(".")
    for index, label in enumerate(labels):
        if label == "*" and index == 0:
            if not wildcard:
                raise NameError_(f"wildcard name '{name}' is not allowed here")
            if len(labels) < 3:
                raise NameError_(f"wildcard '{name}' is too broad (needs at least two labels)")
            continue
        if not label:
            raise NameError_(f"DNS name '{name}' has an empty label")
        if len(label) > MAX_LABEL_OCTETS:
            raise NameError_(
                f"DNS name '{name}': label '{label[:20]}...' is {len(label)} octets (at most 63)"
            )
        if "*" in label:
            raise NameError_(f"DNS name '{name}': '*' is only allowed as the whole first label")
        if _LDH.match(label):
            continue
        if underscore and _UNDERSCORE.match(label):
            continue
        raise NameError_(
            f"DNS name '{name}': label '{label}' may only hold letters, digits and inner hyphens"
        )
    return ".".join(labels)


def is_subdomain(name: str, zone: str) -> bool:
    """True when ``name`` equals ``zone`` or lies below it (both normalized)."""
    return name == zone or name.endswith("." + zone)


def base_name(name: str) -> str:
    """The name a wildcard stands on: ``*.example.test`` -> ``example.test``."""
    return name[2:] if name.startswith("*.") else name


def within_subtree(name: str, subtree: str) -> bool:
    """RFC 5280 dNSName constraint matching: ``example.test`` permits itself and its children.

    A subtree written with a leading dot (``.example.test``) permits only the children.
    """
    if subtree.startswith("."):
        return name.endswith(subtree)
    return is_subdomain(name, subtree)
