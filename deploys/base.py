"""What every managed host needs before pkinfra's own deploys: facts and base packages.

In the lab every package is already in the image (the lab network has no way out), so the
package operation is a no-op there, as on a prepared production host.
"""

from pyinfra import host
from pyinfra.facts.server import Hostname, LinuxDistribution

from operations import system
from operations.context import this_host

BASE_PACKAGES = [
    "ca-certificates",
    "openssl",
    "python3",
    "python3-cryptography",
    "python3-dnspython",
]

spec = this_host()
distro = host.get_fact(LinuxDistribution)
if (distro or {}).get("name") != "Debian":
    host.noop(f"{spec.fqdn}: not Debian ({(distro or {}).get('name')}); packages may differ")
hostname = host.get_fact(Hostname)
if hostname not in (spec.fqdn, spec.fqdn.split(".")[0]):
    host.noop(f"{spec.fqdn}: the host calls itself '{hostname}'")

system.packages(name="Base packages for pkinfra", packages=BASE_PACKAGES)
