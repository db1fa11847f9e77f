"""Where a webhook may be sent: public addresses only, checked when it is registered and again
at each delivery (a name may resolve elsewhere by then: DNS rebinding).

``KEYSERVICE_WEBHOOKS_ALLOW_PRIVATE=true`` lets private, loopback and link-local addresses
through (a receiver inside the operator's own network, and the tests).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from ..core.errors import InvalidInput


def _refused(detail: str) -> InvalidInput:
    return InvalidInput(detail, errors={"json": {"url": [detail]}})


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_url(url: str, allow_private: bool) -> tuple[str, int, list[str]]:
    """The host, port and addresses ``url`` reaches, if it may be sent to: an http(s) URL whose
    host resolves to public addresses only (any address, with ``allow_private``).
    Raises :class:`InvalidInput` (a 422 naming ``url``) otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise _refused("Must be an http or https URL.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _refused("Must be an http or https URL.")
    try:
        addresses = [str(info[4][0]) for info in socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)]
    except (OSError, UnicodeError):
        raise _refused("Its host does not resolve.") from None
    if not allow_private and not all(_is_public(address) for address in addresses):
        raise _refused(
            "Its host is a private, loopback or link-local address"
            " (allowed only with KEYSERVICE_WEBHOOKS_ALLOW_PRIVATE=true)."
        )
    return parts.hostname, port, addresses
