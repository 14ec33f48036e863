"""Every relay setting the abuse suite relies on, in ONE place (tests and bench/abuse.py).

The settings marked "provisional" are being added by the hardening branches of issues 8 and
9 (named here as those branches name them at the time of writing); their final names may
differ. When a branch lands under another name, rename the key
here and nowhere else. The relay refuses unknown settings at start: the suite then fails
with a one-line message naming the setting (see tests/abuse/relays.py), or, with
RELAY_ABUSE_LENIENT=1, drops the settings this relay does not know and runs anyway (to try
the attacks against a partial merge; the tests of the missing limits then fail on their
own assertions).

Times are scaled down from production (a 30 s request deadline becomes 5 s) so that every
attack plays out within seconds.
"""

from __future__ import annotations

import copy
from typing import Any

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

# The shared base: generous enough that no limit trips by accident, tight enough that each
# attack meets the limit it is about. Profiles below override what their attack needs.
BASE: dict[str, dict[str, Any]] = {
    "http": {
        # Existing: the idle timeout. Kept long, so only the deadline can cut a slow client.
        "request_timeout": 30.0,
        "request_deadline": 5.0,            # provisional: whole request within this long
        "min_body_rate": 1024,              # provisional: bytes/s a body must keep up
        "max_connections": 3000,            # provisional: relay-wide open connections
        "max_connections_per_client": 256,  # provisional: per client key
    },
    "rendezvous": {
        "max_waits": 1000,                  # provisional: long-polls held relay-wide
        "max_waits_per_client": 100,        # provisional: long-polls held per client key
        "idle_timeout": 2.0,                # existing: idle stapled pairs are closed
        "max_pairs_per_client": 8,          # provisional: stapled pairs per client key
        "max_channels": 400,                # existing: open channels relay-wide
        "max_channels_per_client": 10,      # provisional: open channels per client key
        "joins_per_ip_per_minute": 1000,    # existing: high, so the caps are what is tested
    },
    "mailbox": {
        "mailbox_max_bytes": 8 * MIB,       # provisional: bytes one mailbox holds
        "sender_max_bytes": 4 * MIB,        # provisional: bytes one identity holds in all
        "client_max_bytes": 8 * MIB,        # provisional: bytes one client key holds in all
        # provisional: upload bytes per client key per window (429); high, so the quotas
        # are what the storage attacks meet.
        "client_upload_bytes": 256 * MIB,
    },
    "store": {
        "memory_max_bytes": 32 * MIB,       # existing: the memory store's whole budget
    },
    "files": {},
}

# Overrides per attack (merged over BASE).
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "base": {},
    # 20 pipelined downloads of a full mailbox: room for ~12 MiB in one mailbox; pages of
    # 20 messages (~5.5 MB answers), so that one answer's own cost stays well under the
    # bound while 20 buffered answers are far over it.
    "pipelining": {"mailbox": {"mailbox_max_bytes": 32 * MIB, "sender_max_bytes": 32 * MIB,
                               "client_max_bytes": 32 * MIB, "download_page": 20},
                   "store": {"memory_max_bytes": 64 * MIB}},
    # Many connections: the connection caps, not the per-client ones, are under test.
    "flood": {"http": {"max_connections": 900, "max_connections_per_client": 64}},
    "per_client_connections": {"http": {"max_connections_per_client": 32}},
    # 5,000 waits from one address, with the per-client connection cap at the relay's own
    # default (128): the relay-wide cap must not be what refuses them. (With the per-client
    # connection cap lifted, one address opening 5,000 connections in a burst costs a core
    # for seconds whatever the wait caps do: see tests/abuse/README.md.)
    "long_polls": {"http": {"max_connections": 8000, "max_connections_per_client": 128}},
    # 2,000 accepted waiters (20 addresses x 50 channels x 2 roles) to measure their cost.
    "idle_waiters": {"http": {"max_connections": 8000, "max_connections_per_client": 500},
                     "rendezvous": {"max_waits": 4000, "max_waits_per_client": 200,
                                    "max_channels": 2000, "max_channels_per_client": 100,
                                    "max_wait": 30.0}},
    # Stuck pairs: a small channel cap, channels that expire while their pair lives on.
    "pairs": {"rendezvous": {"max_channels": 30, "max_pairs_per_client": 5,
                             "max_channels_per_client": 30, "channel_ttl": 2.0,
                             "idle_timeout": 1.5}},
    "channels": {"rendezvous": {"max_channels": 400, "max_channels_per_client": 10}},
    # /channel probes for unknown names share the join budget (per client key, per minute).
    "probes": {"rendezvous": {"joins_per_ip_per_minute": 30}},
    # Storage fairness: a small store, small per-sender share.
    "storage": {"store": {"memory_max_bytes": 32 * MIB},
                "mailbox": {"mailbox_max_bytes": 4 * MIB, "sender_max_bytes": 4 * MIB,
                            "client_max_bytes": 8 * MIB}},
    # Filling Redis itself (maxmemory): quotas high enough that Redis fills first.
    "redis_full": {"mailbox": {"mailbox_max_bytes": 64 * MIB, "sender_max_bytes": 64 * MIB,
                               "client_max_bytes": 64 * MIB}},
    # File reservations: a relay total of 8 GiB (the default is 32 GiB; same attack, fewer
    # requests) and 1 GiB files.
    "reservations": {"files": {"total_max_bytes": 8 * GIB, "max_file_size": GIB}},
}

# What the tests and the bench expect of a bystander (a fresh client from another address):
# a full mailbox handshake and a /join within this many seconds.
BYSTANDER_SECONDS = 2.5
# A Redis maxmemory small enough to fill within seconds.
REDIS_MAXMEMORY = "24mb"


def settings(profile: str) -> dict[str, dict[str, Any]]:
    """BASE with the profile's overrides, as {section: {setting: value}}."""
    merged = copy.deepcopy(BASE)
    for section, values in PROFILES[profile].items():
        merged.setdefault(section, {}).update(values)
    return merged


def setting(profile: str, section: str, name: str) -> Any:
    return settings(profile)[section][name]


def to_toml(config: dict[str, dict[str, Any]]) -> str:
    lines = []
    for section, values in config.items():
        if not values:
            continue
        lines.append(f"[{section}]")
        for name, value in values.items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            else:
                text = repr(value)
            lines.append(f"{name} = {text}")
        lines.append("")
    return "\n".join(lines)
