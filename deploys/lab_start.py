"""The lab's daemons started where they are not running, after deploys/services.py has put
their files in place (on a first run they start with their certificates already there)."""

from pyinfra import host
from pyinfra.facts.server import Command
from pyinfra.operations import server

from operations.context import this_host
from operations.util import q

spec = this_host()
services = {s.name for s in spec.services}
MONITORING_ROLE = (
    "DO $$BEGIN CREATE ROLE monitoring LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$"
)


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
