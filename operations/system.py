"""The host's own system: Debian packages pkinfra needs.

A site's hosts may have package lists that are missing (a fresh image, ``apt-get clean`` of
lists) or stale: installing then fails with "Unable to locate package". Updating the lists on
every run would cost each run a trip to the mirror, so they are updated only when a package is
actually missing.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import apt

from operations.context import announce


@operation()
def packages(packages: Sequence[str]):
    """
    Ensure Debian packages are installed; the package lists are updated first only when one
    of them is missing.

    + packages: Debian package names

    **Example:**

    .. code:: python

        system.packages(name="BIND", packages=["bind9", "bind9-utils"])
    """
    installed = host.get_fact(DebPackages) or {}
    missing = [name for name in packages if name not in installed]
    if not missing:
        host.noop(f"packages installed: {', '.join(packages)}")
        return
    announce(f"packages missing: {', '.join(missing)}; updating the package lists first")
    yield from apt.update._inner()
    yield from apt.packages._inner(packages=missing, update=False)
