"""SSRF guard: webhooks may only target public http(s) addresses unless allowed."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

ALLOWED_SCHEMES = ("http", "https")


class UnsafeUrl(ValueError):
    """The URL is not one Parcours will send to; the message says why."""


def resolve_host(host: str, port: int) -> list[str]:
    """Every address the host resolves to (IP literals resolve to themselves)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as exc:
        raise UnsafeUrl(f"cannot resolve host {host!r}: {exc}") from None
    return sorted({str(info[4][0]) for info in infos})


def _refusal(address: str) -> str | None:
    """Why an address must not be reached from the server, or None when it is public."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # Most specific label first: the private ranges also cover most of the others.
    for label, flag in (("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
                        ("multicast", ip.is_multicast), ("unspecified", ip.is_unspecified),
                        ("reserved", ip.is_reserved), ("private", ip.is_private)):
        if flag:
            return label
    if not ip.is_global:
        return "non-global"
    return None


def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse non-http(s) URLs and, unless allowed, hosts resolving to internal addresses."""
    if any(char.isspace() or ord(char) < 32 or ord(char) == 127 for char in url):
        raise UnsafeUrl("the URL must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise UnsafeUrl(f"malformed URL: {exc}") from None
    if parts.scheme not in ALLOWED_SCHEMES:
        raise UnsafeUrl(f"only http and https URLs are allowed, not {parts.scheme or 'none'!r}")
    host = parts.hostname
    if not host:
        raise UnsafeUrl("the URL has no host")
    if not allow_private:
        vetted_addresses(host, port, allow_private=False)


def vetted_addresses(host: str, port: int, *, allow_private: bool) -> list[str]:
    """The host's addresses, refusing it when any is internal (unless allowed).

    The sender connects to one of these very addresses (``webhooks.transport``), so a
    name that resolves differently between the check and the connection (DNS
    rebinding) cannot reach an internal service.
    """
    addresses = resolve_host(host, port)
    for address in addresses if not allow_private else ():
        reason = _refusal(address)
        if reason is not None:
            raise UnsafeUrl(f"{host} resolves to {reason} address {address}; webhooks may only "
                            "target public addresses (set PARCOURS_WEBHOOK_ALLOW_PRIVATE=1 "
                            "to allow internal targets)")
    return addresses
