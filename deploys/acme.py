"""ACME certificates on every host that has one: certbot, its account, the lineages.

What a renewal needs lives on the host, so ``certbot renew`` from cron or by hand (in a clean
environment) behaves like this deploy: the ACME server's TLS CA in the system store (when it is
not public), the lineage's renewal configuration (server, webroot or hooks, key type,
``reuse_key``), pkinfra's DNS-01 hook in ``/usr/local/bin`` with its code in
``/usr/local/lib/pkinfra`` and its configuration naming the host's TSIG key (installed by
deploys/dns.py). HTTP-01 hosts get an nginx snippet serving the webroots'
``/.well-known/acme-challenge/``, included by a port-80 server block of pkinfra's for the names no
port-80 server of the admin's answers (``acme.nginx_challenge``). Renewals: Debian's certbot
package ships its systemd timer and ``/etc/cron.d/certbot`` (used where systemd does not run).
"""

from __future__ import annotations

from io import StringIO

from pyinfra.api import DeployError
from pyinfra.operations import files

from operations import acme as acme_ops
from operations import system
from operations.context import inventory, this_host, track_certificate_op
from pkinfra import acme
from pkinfra.agent import paths

inv = inventory()
spec = this_host()
settings = inv.settings.acme
certificates = [c for c in spec.certificates if c.is_acme]
if certificates:
    if settings is None:
        raise DeployError(f"pkinfra: {spec.fqdn} has ACME certificates but no acme settings")
    http01 = [c for c in certificates if c.challenge == "http-01"]
    system.packages(name="certbot", packages=["certbot", "python3-dnspython"])
    # Debian's timer and cron job already start renewals at a random time; certbot's own
    # extra sleep (up to 8 minutes whenever stdin is not a terminal) only delays a renewal
    # started by hand or by a test.
    files.line(
        name="certbot: no second random sleep",
        path="/etc/letsencrypt/cli.ini",
        line=r"^no-random-sleep-on-renew\b.*$",
        replace="no-random-sleep-on-renew = True",
    )

    if settings.ca_bundle is not None:
        bundle = inv.base_dir / settings.ca_bundle
        if not bundle.is_file():
            raise DeployError(
                f"pkinfra: acme.ca_bundle {bundle} does not exist (in the lab, the Pebble deploy"
                " on the acme_servers group makes it: run lab/site.py without --limit once)"
            )
        acme_ops.server_trust(
            name="Trust the ACME server's TLS CA",
            pem=bundle.read_text(),
            source=str(settings.ca_bundle),
        )

    # The agents, on every host with ACME certificates: DNS-01 hooks, the TLSA publisher and
    # the key rollover (deploys/dane.py).
    system.agent_once()
    files.put(
        name="pkinfra agent: certbot hook",
        src=StringIO(acme.hook_wrapper()),
        dest=paths.HOOK,
        mode="0755",
    )
    files.put(
        name="pkinfra agent: hook configuration",
        src=StringIO(acme.hook_config(paths.TSIG_KEY, ttl=inv.settings.shadow_zone.challenge_ttl)),
        dest=paths.HOOK_CONFIG,
        mode="0644",
        create_remote_dir=True,
    )

    if http01:
        webroots = sorted({c.webroot for c in http01 if c.webroot is not None})
        for webroot in webroots:
            files.directory(name=f"Webroot {webroot}", path=webroot, mode="0755")
        # The admin's port-80 servers keep their names; pkinfra's server block answers only
        # the names none of them answers (see pkinfra/nginx.py and the README).
        acme_ops.nginx_challenge(
            name="nginx: HTTP-01 challenges",
            webroots=webroots,
            names=[n for c in http01 for n in c.names],
        )
        acme_ops.nginx(name="nginx running")

    # Runs first: each lineage below compares its saved account with what this step finds.
    acme_ops.account(
        name=f"certbot account on {settings.directory}",
        server=settings.directory,
        contact=settings.contact,
    )
    for cert in certificates:
        assert cert.challenge is not None, "validated: ACME certificates have a challenge"
        op = acme_ops.certificate(
            name="ACME certificate (certbot lineage)",
            cert_name=cert.name,
            names=cert.names,
            challenge=cert.challenge,
            server=settings.directory,
            key_type=cert.key_type,
            webroot=cert.webroot,
            renew_before_days=cert.renew_before_days,
            certbot_args=settings.certbot_args,
        )
        track_certificate_op(op)  # first issuance: services get their files in this run
