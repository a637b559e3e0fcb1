"""certbot's DNS-01 hooks on a managed host: ``pkinfra-certbot-hook auth|cleanup``.

certbot runs the hook once per name with ``CERTBOT_DOMAIN`` and ``CERTBOT_VALIDATION`` set
(``--manual-auth-hook`` / ``--manual-cleanup-hook``, saved in the renewal configuration, so a
renewal started by cron or by hand behaves the same). ``auth`` follows the CNAME chain from
``_acme-challenge.<name>`` to wherever it ends (the shadow zone, found, never configured), adds
the validation value there with the host's TSIG key, and returns once every authoritative server
of that zone serves it (and, unless turned off, once this host's resolvers do: an ACME server
that shares them would otherwise see an answer they cached from an earlier order). ``cleanup``
deletes exactly that value, so the other values of the RRset (another name of the same order,
``*.example.test`` beside ``example.test``) stay.

Everything the hook needs is in one file written by the deploy (``/etc/pkinfra/acme-hook.conf``)::

    [dns-01]
    tsig_key = /etc/pkinfra/tsig.key
    ttl = 5
    propagation_timeout = 60

Optional: ``resolvers`` (``addr[#port]`` list, default resolv.conf), ``port``, ``primary``,
``server_addresses`` (``ns2.example.test=addr#port`` list), ``query_timeout`` (s),
``resolver_check`` (yes/no), ``zone_cache`` (a path, or ``none``).

Failures print one line on stderr and exit 1, after at most about ``propagation_timeout`` plus a
few query timeouts. A value that is not served everywhere in time is deleted again before ``auth``
fails (certbot 2.1 asks for validation even after a failed auth hook). Standard library and
dnspython 2.3 only: this runs on Debian 12 hosts.
"""

from __future__ import annotations

import configparser
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rdatatype

from pkinfra.agent import paths
from pkinfra.agent.errors import PkinfraError
from pkinfra.agent.files import write_atomic
from pkinfra.dnsupdate import (
    DNSUpdateError,
    RFC2136Client,
    Server,
    TSIGKey,
    default_resolvers,
)

PROG = "pkinfra-certbot-hook"
SECTION = "dns-01"
FIRST_POLL_DELAY = 0.05
MAX_POLL_DELAY = 1.0


class HookError(PkinfraError):
    """A failure of the hook, already worded for the one stderr line."""


@dataclass(frozen=True)
class HookConfig:
    """The hook's settings, read from the host's configuration file."""

    tsig_key: str
    ttl: int = 5
    propagation_timeout: float = 60.0
    query_timeout: float = 3.0
    resolvers: tuple[str, ...] = ()
    port: int = 53
    primary: str | None = None
    server_addresses: tuple[tuple[str, str], ...] = ()
    resolver_check: bool = True
    zone_cache: str | None = paths.HOOK_ZONE_CACHE

    @classmethod
    def from_file(cls, path: str) -> HookConfig:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with open(path, encoding="utf-8") as handle:
                parser.read_file(handle)
        except OSError as exc:
            raise HookError(f"reading {path}: {exc.strerror or exc}") from None
        except configparser.Error as exc:
            raise HookError(f"reading {path}: {exc.message}") from None
        if not parser.has_section(SECTION):
            raise HookError(f"reading {path}: no [{SECTION}] section")
        return cls.from_mapping(dict(parser[SECTION]), path)

    @classmethod
    def from_mapping(cls, values: Mapping[str, str], where: str) -> HookConfig:
        known = {
            "tsig_key",
            "ttl",
            "propagation_timeout",
            "query_timeout",
            "resolvers",
            "port",
            "primary",
            "server_addresses",
            "resolver_check",
            "zone_cache",
        }
        unknown = sorted(set(values) - known)
        if unknown:
            raise HookError(f"{where}: unknown setting(s) {', '.join(unknown)}")
        if not values.get("tsig_key"):
            raise HookError(f"{where}: tsig_key is missing")

        def number(key: str, default: float, kind: type[int] | type[float]) -> float:
            text = values.get(key)
            if text is None:
                return default
            try:
                value = kind(text)
            except ValueError:
                raise HookError(f"{where}: {key} must be a number, got {text!r}") from None
            if value <= 0:
                raise HookError(f"{where}: {key} must be positive, got {text!r}")
            return value

        check = values.get("resolver_check", "yes").strip().lower()
        if check not in ("yes", "no", "true", "false", "1", "0"):
            raise HookError(f"{where}: resolver_check must be yes or no, got {check!r}")
        pairs: list[tuple[str, str]] = []
        for item in values.get("server_addresses", "").split():
            host, sep, address = item.partition("=")
            if not sep or not host or not address:
                raise HookError(f"{where}: server_addresses wants name=address, got {item!r}")
            pairs.append((host, address))
        return cls(
            tsig_key=values["tsig_key"],
            ttl=int(number("ttl", 5, int)),
            propagation_timeout=number("propagation_timeout", 60.0, float),
            query_timeout=number("query_timeout", 3.0, float),
            resolvers=tuple(values.get("resolvers", "").split()),
            port=int(number("port", 53, int)),
            primary=values.get("primary") or None,
            server_addresses=tuple(pairs),
            resolver_check=check in ("yes", "true", "1"),
            zone_cache=None
            if values.get("zone_cache", "").strip().lower() == "none"
            else values.get("zone_cache") or paths.HOOK_ZONE_CACHE,
        )

    def client(self) -> RFC2136Client:
        return RFC2136Client(
            TSIGKey.from_file(self.tsig_key),
            resolvers=list(self.resolvers) or None,
            port=self.port,
            primary=self.primary,
            server_addresses=dict(self.server_addresses),
            timeout=self.query_timeout,
        )


def challenge_name(domain: str) -> str:
    """Where ACME looks for the TXT of ``domain``; a wildcard shares its base name's."""
    base = domain.strip().rstrip(".").lower()
    if base.startswith("*."):
        base = base[2:]
    if not base:
        raise HookError("CERTBOT_DOMAIN is empty")
    return f"_acme-challenge.{base}"


def txt_value(validation: str) -> str:
    """The presentation form of the validation string as one TXT character-string."""
    if not validation or any(c in validation for c in ' "\\;') or not validation.isprintable():
        raise HookError("CERTBOT_VALIDATION is missing or not a key authorization digest")
    return f'"{validation}"'


class Hook:
    """The protocol work of one hook run: find the target, change it, wait for it.

    Finding the zone of a target that does not exist yet asks the resolver for a name it then
    holds as nonexistent for a second or two, and an ACME server using the same resolver would
    be told so. So where each challenge name led last time is kept (``zone_cache``) and given
    to the client as a hint; a hint that no longer holds costs one retry without it.
    """

    def __init__(self, config: HookConfig, client: RFC2136Client | None = None) -> None:
        self.config = config
        self.client = client or config.client()
        self.hints = _read_hints(config.zone_cache)
        self.hinted = False

    def _seed(self, owner: str) -> None:
        hint = self.hints.get(owner)
        if hint is None:
            return
        try:
            self.client.hint_zone(hint[0], hint[1])
        except DNSUpdateError:
            return  # a damaged cache entry: find the zone the slow way
        self.hinted = True

    def _retry_without_hints(self) -> bool:
        if not self.hinted:
            return False
        self.client = self.config.client()
        self.hints, self.hinted = {}, False
        return True

    def target(self, domain: str) -> dns.name.Name:
        owner = challenge_name(domain)
        self._seed(owner)
        target, _chain = self.client.follow_cnames(owner)
        return target

    def auth(self, domain: str, validation: str) -> dns.name.Name:
        """Publish the value; return once the servers (and resolvers) serve it."""
        value = txt_value(validation)
        started = time.monotonic()
        deadline = started + self.config.propagation_timeout
        try:
            target = self.target(domain)
            self.client.add(target, "TXT", value, self.config.ttl)
        except DNSUpdateError:
            if not self._retry_without_hints():
                raise
            target = self.target(domain)
            self.client.add(target, "TXT", value, self.config.ttl)
        self._remember(challenge_name(domain), target)
        try:
            self.client.wait_visible(
                target, "TXT", value, timeout=self.config.propagation_timeout, started=started
            )
            if self.config.resolver_check:
                self.wait_resolvers(challenge_name(domain), value, deadline)
        except (DNSUpdateError, HookError) as exc:
            # certbot 2.1 ignores the auth hook's exit status and asks for validation anyway: a
            # value some servers serve could pass by chance and hide the fault. Withdrawn, the
            # validation fails every time.
            raise HookError(f"{exc}; {self._withdraw(target, value)}") from None
        return target

    def _withdraw(self, target: dns.name.Name, value: str) -> str:
        try:
            self.client.delete(target, "TXT", value)
        except DNSUpdateError as exc:
            return f"withdrawing the value failed too ({exc.reason})"
        return "value withdrawn"

    def cleanup(self, domain: str, validation: str) -> dns.name.Name:
        """Delete exactly the value ``auth`` added (other values of the RRset stay)."""
        value = txt_value(validation)
        try:
            target = self.target(domain)
            self.client.delete(target, "TXT", value)
        except DNSUpdateError:
            if not self._retry_without_hints():
                raise
            target = self.target(domain)
            self.client.delete(target, "TXT", value)
        return target

    def _remember(self, owner: str, target: dns.name.Name) -> None:
        path = self.config.zone_cache
        if path is None:
            return
        zone = self.client.zone_of(target).name
        entry = [target.to_text(), zone.to_text()]
        if self.hints.get(owner) == entry:
            return
        hints = {**_read_hints(path), owner: entry}
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            text = json.dumps(hints, indent=1, sort_keys=True)
            write_atomic(Path(path), text.encode(), sync_dir=False)
        except OSError:
            pass  # a hint only: the next run finds the zone the slow way

    def wait_resolvers(self, owner: str, value: str, deadline: float) -> None:
        """Poll this host's resolvers (RD=1) through the CNAME chain until each has ``value``."""
        resolvers: Sequence[str] = self.config.resolvers or default_resolvers()
        servers = [Server.from_text(text, self.config.port) for text in resolvers]
        qname = dns.name.from_text(owner)
        pending = {str(server): "not asked" for server in servers}
        delay = FIRST_POLL_DELAY
        while True:
            for server in servers:
                if str(server) not in pending:
                    continue
                seen, said = _resolver_serves(server, qname, value, self.config.query_timeout)
                if seen:
                    del pending[str(server)]
                else:
                    pending[str(server)] = said
            if not pending:
                return
            now = time.monotonic()
            if now >= deadline:
                lagging = ", ".join(f"{name} ({said})" for name, said in pending.items())
                raise HookError(
                    f"waiting for TXT at {owner} through the resolvers: "
                    f"after {self.config.propagation_timeout:g} s still not on {lagging}"
                )
            time.sleep(min(delay, deadline - now))
            delay = min(delay * 2, MAX_POLL_DELAY)


def _read_hints(path: str | None) -> dict[str, list[str]]:
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        str(owner): [str(entry[0]), str(entry[1])]
        for owner, entry in data.items()
        if isinstance(entry, list) and len(entry) == 2
    }


def _resolver_serves(
    server: Server, qname: dns.name.Name, value: str, timeout: float
) -> tuple[bool, str]:
    query = dns.message.make_query(qname, dns.rdatatype.TXT)
    try:
        response, _ = dns.query.udp_with_fallback(
            query, server.address, timeout=timeout, port=server.port
        )
    except (dns.exception.DNSException, OSError) as exc:
        return False, type(exc).__name__
    texts = {
        rdata.to_text()
        for rrset in response.answer
        if rrset.rdtype == dns.rdatatype.TXT
        for rdata in rrset
    }
    if value in texts:
        return True, "serves it"
    return False, f"{len(texts)} other value(s)" if texts else "no TXT"


def run(action: str, environ: Mapping[str, str], config_path: str) -> str:
    """One hook run; returns what was done (for stdout), raises ``HookError``."""
    domain = environ.get("CERTBOT_DOMAIN", "")
    validation = environ.get("CERTBOT_VALIDATION", "")
    if not domain:
        raise HookError("CERTBOT_DOMAIN is not set (run me as certbot's manual hook)")
    config = HookConfig.from_file(config_path)
    try:
        hook = Hook(config)
        if action == "auth":
            target = hook.auth(domain, validation)
            return f"published at {target.to_text(omit_final_dot=True)}"
        target = hook.cleanup(domain, validation)
        return f"removed from {target.to_text(omit_final_dot=True)}"
    except DNSUpdateError as exc:
        raise HookError(str(exc)) from None


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if environ is None else environ
    if len(args) != 1 or args[0] not in ("auth", "cleanup"):
        print(f"usage: {PROG} auth|cleanup (certbot sets CERTBOT_DOMAIN, ...)", file=sys.stderr)
        return 2
    action = args[0]
    config_path = env.get("PKINFRA_HOOK_CONFIG", paths.HOOK_CONFIG)
    domain = env.get("CERTBOT_DOMAIN", "?")
    try:
        done = run(action, env, config_path)
    except HookError as exc:
        print(f"{PROG}: {action} {domain}: {exc}", file=sys.stderr)
        return 1
    print(f"{PROG}: {action} {domain}: {done}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
