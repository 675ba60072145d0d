"""Which hosts an output may be fetched from: checked before the first request of a download
and again before every redirect is followed.

An output URL comes from the service (or, forged, from whoever reached the webhook): left
unchecked it can point a download at this machine, its network or a cloud metadata service,
and have the answer saved as an output. The rule:

- ``https`` only; plain ``http`` only to a host whose every address is allowed and not
  public (the sandbox's loopback, or a private network the user allowed);
- loopback only when the API itself is on loopback (the sandbox);
- never a link-local, private, shared, reserved, multicast or unspecified address, unless
  ``allow_private`` (``--allow-private-outputs``) says so;
- a host name is resolved first and every address it resolves to must pass, so a name
  cannot stand in for a refused address.

The download session resolves through ``PolicyResolver``, which checks the addresses again
at the moment of connecting: a name that resolved to a public address for the check and to
a private one for the connection (DNS rebinding) is refused too. With a proxy from the
environment the proxy makes the connection (its own host is not checked); the output's name
is still resolved and checked, and refused when it does not resolve.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from styldod_batch.errors import NetworkError, StyldodError
from styldod_batch.settings import Settings, is_loopback_host

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the addresses the host resolves to.
Resolver = Callable[[str, int], Awaitable[list[str]]]

ALLOW_FLAG = "--allow-private-outputs"


class OutputRefused(StyldodError):
    """An output URL the host policy refuses (never fetched, never retried)."""


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the system's resolver, off the event loop)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise NetworkError(f"cannot resolve the output host {host!r}: {exc}") from exc
    return [str(info[4][0]) for info in infos]


def _kind(address: Address) -> str | None:
    """What makes ``address`` non-public ("loopback", "link-local", ...), or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if address.is_reserved or not address.is_global:
        return "reserved or shared"
    return None


@dataclass(frozen=True, slots=True)
class OutputHostPolicy:
    """``await policy.check(url)`` raises ``OutputRefused`` for a URL outputs may not come
    from (or ``NetworkError`` when its host does not resolve)."""

    # Loopback addresses are allowed (the API itself is on loopback: the sandbox).
    allow_loopback: bool = False
    # Every non-public address is allowed (``--allow-private-outputs``).
    allow_private: bool = False
    resolver: Resolver = resolve_host

    @classmethod
    def for_settings(cls, settings: Settings) -> OutputHostPolicy:
        api_host = urlsplit(settings.base_url).hostname or ""
        return cls(
            allow_loopback=is_loopback_host(api_host),
            allow_private=bool(getattr(settings, "allow_private_outputs", False)),
        )

    def refusal(self, address: Address) -> str | None:
        """Why outputs may not come from ``address``; None when they may."""
        kind = _kind(address)
        if kind is None or self.allow_private or (kind == "loopback" and self.allow_loopback):
            return None
        allowed_by = (
            f"{ALLOW_FLAG} allows it"
            if kind != "loopback"
            else f"allowed only when the API itself is on loopback, or with {ALLOW_FLAG}"
        )
        return f"{address}, a {kind} address ({allowed_by})"

    async def check(self, url: URL) -> None:
        shown = str(url.with_query(None).with_fragment(None).with_user(None))
        if url.scheme not in ("https", "http") or not url.host:
            raise OutputRefused(f"the output URL {shown!r} is not an https URL")
        for address in await self._addresses(url):
            if _kind(address) is None and url.scheme == "http":
                raise OutputRefused(
                    f"the output URL {shown!r} uses plain http:// to a public address; "
                    "outputs are fetched over https only"
                )
            refused = self.refusal(address)
            if refused is not None:
                raise OutputRefused(f"the output URL {shown!r} leads to {refused}")

    async def _addresses(self, url: URL) -> list[Address]:
        host = (url.host or "").strip("[]")
        try:
            return [ipaddress.ip_address(host.split("%", 1)[0])]
        except ValueError:
            pass
        if is_loopback_host(host.lower().rstrip(".")):
            # RFC 6761: localhost names are loopback, whatever a resolver says.
            return [ipaddress.ip_address("127.0.0.1")]
        port = url.port or (443 if url.scheme == "https" else 80)
        found = []
        for text in await self.resolver(host, port):
            try:
                found.append(ipaddress.ip_address(text.split("%", 1)[0]))
            except ValueError as exc:
                raise OutputRefused(f"the output host {host!r} resolves to {text!r}") from exc
        if not found:
            raise NetworkError(f"the output host {host!r} resolves to no address")
        return found


def _proxy_hosts() -> frozenset[str]:
    """The hosts of the environment's proxies: the download session connects to them."""
    hosts = set()
    for proxy in urllib.request.getproxies().values():
        host = urlsplit(proxy if "://" in proxy else f"http://{proxy}").hostname
        if host:
            hosts.add(host.lower())
    return frozenset(hosts)


class PolicyResolver(AbstractResolver):
    """A resolver for the download session's connector: every address a name resolves to
    when a connection is made passes ``policy`` (the environment's proxies excepted)."""

    def __init__(self, policy: OutputHostPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner if inner is not None else aiohttp.DefaultResolver()
        self.exempt = _proxy_hosts()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        if host.lower().rstrip(".") in self.exempt:
            return results
        for result in results:
            refused = self.policy.refusal(ipaddress.ip_address(result["host"].split("%", 1)[0]))
            if refused is not None:
                raise OutputRefused(f"the output host {host!r} now resolves to {refused}")
        return results

    async def close(self) -> None:
        await self.inner.close()
