"""Who a client is, for limits: its address folded to a prefix.

One IPv4 address is one client; an IPv6 client usually owns a whole /64 (SLAAC, privacy
addresses), so counting IPv6 addresses one by one would let one host look like billions.
Limits, quotas and rate counters key on `client_key`; the rendezvous's two-address rule keeps
using exact addresses.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache


@lru_cache(maxsize=65536)
def canonical_host(host: str) -> str:
    """One spelling per address: IPv6 in RFC 5952 form, an IPv4-mapped IPv6 address as IPv4.

    The rendezvous compares exact addresses between the HTTP port and the staple port; a
    dual-stack listener (tcp6:) sees an IPv4 client as "::ffff:192.0.2.7", a plain one as
    "192.0.2.7", and a client must be the same on both."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address) if address.version == 4 or "%" not in host else host


def client_key(host: str, ipv4_prefix: int = 32, ipv6_prefix: int = 64) -> str:
    """The network of `host` at the configured prefix length, as text ("192.0.2.7/32",
    "2001:db8:1:2::/64"). An IPv4-mapped IPv6 address counts as IPv4; anything that is not
    an IP address (a UNIX socket's path, a test's fake peer) is its own key."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = ipv4_prefix if address.version == 4 else ipv6_prefix
    network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    return str(network)
