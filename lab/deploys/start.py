"""The lab's daemons started where they are not running, after deploys/services.py has put
their files in place (on a first run they start with their certificates already there); and
nginx's HTTPS server on web1, enabled only once its certificate is delivered (nginx refuses to
start with a server whose certificate file is missing)."""

from io import StringIO

from pyinfra import host
from pyinfra.facts.server import Command
from pyinfra.operations import files, server

from operations.context import this_host
from operations.util import q

spec = this_host()
services = {s.name for s in spec.services}
MONITORING_ROLE = (
    "DO $$BEGIN CREATE ROLE monitoring LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$"
)


NGINX_TLS = f"""# pkinfra lab: HTTPS with the files pkinfra delivers (see inventory.py, web1)
server {{
    listen 443 ssl;
    server_name {" ".join(n for c in spec.certificates if c.name == "web" for n in c.names)};
    ssl_certificate /etc/nginx/tls/web.crt;
    ssl_certificate_key /etc/nginx/tls/web.key;
    root /var/www/html;
}}
"""


def answer(command: str) -> bool:
    return host.get_fact(Command, f"{command} >/dev/null 2>&1 && echo yes || echo no") == "yes"


if "postgresql" in services and not answer("pgrep -x postgres"):
    server.shell(
        name="Start PostgreSQL",
        commands=[
            "pg_ctlcluster 15 main start >/var/log/postgresql/pkinfra-start.log 2>&1"
            " || { cat /var/log/postgresql/pkinfra-start.log; exit 1; }",
            f"su postgres -c {q('psql -q -c ' + q(MONITORING_ROLE))}",
        ],
    )

if "backup-agent" in services and not answer("pgrep -f '^openssl s_server -accept 9102'"):
    server.shell(name="Start the backup agent", commands=["/usr/local/sbin/lab-backup-agent start"])

if "postfix" in services and not answer("postfix status"):
    server.shell(
        name="Start Postfix",
        commands=["postfix start >/dev/null 2>&1 || { tail -n 5 /var/log/postfix.log; exit 1; }"],
    )

if "nginx" in services:
    site = files.put(
        name="nginx HTTPS server",
        src=StringIO(NGINX_TLS),
        dest="/etc/nginx/sites-enabled/pkinfra-tls",
        mode="644",
    )
    # After the delivery, so the certificate it names is in place; nginx may have been started
    # earlier in this same run (deploys/acme.py), hence the check at execution time.
    server.shell(
        name="Reload nginx (HTTPS server changed)",
        commands=[
            "if pgrep -x nginx >/dev/null && nginx -t -q 2>/dev/null; then nginx -s reload; fi"
        ],
        _if=site.did_change,
    )
