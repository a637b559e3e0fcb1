"""Certificate files into services, and the services notified: through the host's delivery agent
and its mapping, the same ones certbot's deploy hook uses on renewals.
"""

from operations import services, system
from operations.context import certificate_changed, inventory, this_host
from pkinfra.services import mapping_json

site = inventory()
spec = this_host()

if spec.services:
    system.agent_once()  # the delivery agent
    mapping = mapping_json(site, spec)
    acme_lineages = {s.certificate for s in spec.services} & {
        c.name for c in spec.certificates if c.is_acme
    }
    services.delivered(
        name="Service certificate files",
        mapping=mapping,
        deploy_hook=bool(acme_lineages),
    )
    services.delivered(
        name="Service certificate files (certificate changed in this run)",
        mapping=mapping,
        after_change=True,
        _if=certificate_changed(),
    )
