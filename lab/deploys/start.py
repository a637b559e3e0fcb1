"""The lab's daemons running, after deploys/services.py has put their files in place: systemd
units enabled and started where they are not (on a first run they start with their
certificates already there), PostgreSQL's monitoring role, and nginx's HTTPS server on web1,
enabled only once its certificate is delivered (nginx refuses to start with a server whose
certificate file is missing)."""

from io import StringIO

from pyinfra import host
from pyinfra.facts.server import Command
from pyinfra.operations import files, server, systemd

from operations.context import this_host
from operations.util import q

spec = this_host()
services = {s.name for s in spec.services}
MONITORING_ROLE = (
    "DO $$BEGIN CREATE ROLE monitoring LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$"
)
ROLE_QUERY = "SELECT 1 FROM pg_roles WHERE rolname = 'monitoring'"


def listens_on_all(port: int) -> bool:
    """Whether a daemon listens on every address at ``port`` (not only on loopback)."""
    sockets = host.get_fact(Command, f"ss -Hltn 'sport = :{port}' || true") or ""
    return any(s.split()[3] in (f"0.0.0.0:{port}", f"*:{port}") for s in sockets.splitlines())


# The daemons came up at boot with Debian's defaults (loopback only); the settings that make them
# listen on the network (lab/deploys/services.py) take a restart, not a reload. Only now, after
# the delivery, are the certificate files they name in place.


NGINX_TLS = f"""# pkinfra lab: HTTPS with the files pkinfra delivers (see inventory.py, web1)
server {{
    listen 443 ssl;
    server_name {" ".join(n for c in spec.certificates if c.name == "web" for n in c.names)};
    ssl_certificate /etc/nginx/tls/web.crt;
    ssl_certificate_key /etc/nginx/tls/web.key;
    root /var/www/html;
}}
"""

if "postgresql" in services:
    systemd.service(
        name="PostgreSQL running",
        service="postgresql",
        running=True,
        enabled=True,
        restarted=not listens_on_all(5432),
    )
    role = host.get_fact(Command, f"su postgres -c {q('psql -tAc ' + q(ROLE_QUERY))} || true")
    if (role or "").strip() != "1":
        server.shell(
            name="PostgreSQL monitoring role",
            commands=[f"su postgres -c {q('psql -q -c ' + q(MONITORING_ROLE))}"],
        )

if "backup-agent" in services:
    systemd.service(
        name="Backup agent running",
        service="lab-backup-agent",
        running=True,
        enabled=True,
    )

if "postfix" in services:
    systemd.service(
        name="Postfix running",
        service="postfix",
        running=True,
        enabled=True,
        restarted=not listens_on_all(25),
    )

if "nginx" in services:
    site = files.put(
        name="nginx HTTPS server",
        src=StringIO(NGINX_TLS),
        dest="/etc/nginx/sites-enabled/pkinfra-tls",
        mode="644",
    )
    # After the delivery, so the certificate it names is in place.
    server.shell(
        name="Reload nginx (HTTPS server changed)",
        commands=["nginx -t -q && systemctl reload-or-restart nginx"],
        _if=site.did_change,
    )
