"""Small network facts shared by the sender and the web side."""

from __future__ import annotations

import ipaddress
import re


def is_loopback(host: str) -> bool:
    """Return whether ``host`` names this machine only: ``localhost``, 127.0.0.0/8 or ``::1``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_nameserver(entry: str) -> tuple[str, int]:
    """Return (address, port) from ``"192.0.2.1"``, ``"127.0.0.1:5353"`` or ``"[::1]:5353"``."""
    match = re.fullmatch(
        r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([0-9.]+)(?::(\d+))?|([0-9A-Fa-f:]+)", entry.strip()
    )
    if match is None:
        raise ValueError(
            f"expected an IP address with an optional port, e.g. '127.0.0.1:5353', got {entry!r}"
        )
    address = match.group(1) or match.group(3) or match.group(5)
    port = int(match.group(2) or match.group(4) or 53)
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"expected an IP address with an optional port, got {entry!r}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} of {entry!r} is not from 1 to 65535")
    return address, port
