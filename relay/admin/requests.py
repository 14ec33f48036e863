"""Counting requests on the one request path (relay.web.respond.serve), cheaply.

`RequestStats.observe` runs once per request, so it only adds to plain dicts and lists (no
locks, no label lookups of prometheus_client); the collector turns them into metrics when
scraped. Labels come from fixed sets: an endpoint outside ENDPOINTS counts as "other", a
command outside COMMANDS as "other", a refusal whose detail is not in LIMITS as "other".
"""

from __future__ import annotations

from bisect import bisect_left

ENDPOINTS = ("/start_session", "/verify_session", "/prove", "/command", "/join", "/channel")
OTHER = "other"

# Successful /command requests log "<command> <hash prefix>"; the command's name is counted.
COMMANDS = frozenset({
    "count", "upload", "download", "messageStatus", "message_status", "delete", "getEntropy",
    "startFileUpload", "uploadFileChunk", "fileStatus", "downloadFileChunk", "deleteFile"})

# Latency buckets (seconds): most answers take milliseconds; a /channel long-poll up to
# [rendezvous] max_wait (30 s).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REFUSAL_STATUSES = frozenset({429, 503, 507})

# A refusal's detail (X-Error-Details) -> the setting that refused it ("section.setting"),
# so that operators can tell which limit binds (docs/operations.md explains each).
LIMITS = {
    # mailbox
    "too many handshakes from this network; slow down": "mailbox.handshake_rate_per_client",
    "too many handshakes in progress": "store.memory_max_handshakes",
    "the mailbox is full": "mailbox.max_messages",
    "the mailbox's storage quota is used up": "mailbox.mailbox_max_bytes",
    "this identity's message storage quota is used up": "mailbox.sender_max_bytes",
    "this network's message storage quota is used up": "mailbox.client_max_bytes",
    "this network uploads too fast; try again later": "mailbox.client_upload_bytes",
    "the relay's memory store is full": "store.memory_max_bytes",
    "the relay's Redis store is full": "store.redis_memory_ratio",
    "the Redis store is full": "store.redis_maxmemory",
    # files
    "this identity's file storage quota is used up": "files.mailbox_max_bytes",
    "this client's file storage quota is used up": "files.client_max_bytes",
    "the relay's file storage is full": "files.total_max_bytes",
    "file storage quota used up": "files.total_max_bytes",
    "this identity has too many uploads open": "files.max_open_reservation_per_sender",
    "this client has too many uploads open": "files.max_open_reservation_per_client",
    "the relay has too many uploads open": "files.max_open_reservation_total",
    "no space left for file chunks": "files.disk",
    # rendezvous
    "too many requests in flight from this network": "rendezvous.max_waits_per_client",
    "the relay is busy; try again shortly": "rendezvous.max_waits",
    "too many long-polls from this network": "rendezvous.max_waits_per_client",
    "too many long-polls on this relay; try again shortly": "rendezvous.max_waits",
    "too many joins from this network; try again in a minute":
        "rendezvous.joins_per_ip_per_minute",
    "this network holds too many open channels": "rendezvous.max_channels_per_client",
    "too many open channels": "rendezvous.max_channels",
    "the staple listener is not running": "rendezvous.staple_listener",
}

# Connections refused on arrival (relay.web.guard's reasons) -> the setting.
CONNECTION_LIMITS = {
    "near the file descriptor limit": "http.descriptor_reserve",
    "over max_connections": "http.max_connections",
    "over max_connections_per_client": "http.max_connections_per_client",
}


class RequestStats:
    """Requests by endpoint and status, latency per endpoint, commands, refusals by limit."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.latency_buckets: dict[str, list[int]] = {
            endpoint: [0] * (len(BUCKETS) + 1) for endpoint in (*ENDPOINTS, OTHER)}
        self.latency_sums: dict[str, float] = dict.fromkeys((*ENDPOINTS, OTHER), 0.0)
        self.commands: dict[str, int] = {}
        # (status, limit) -> count; the staple and HTTP listeners' refusals on arrival too.
        self.refusals: dict[tuple[int, str], int] = {}
        self.connection_refusals: dict[tuple[str, str], int] = {}

    def observe(self, endpoint: str, status: int, seconds: float, detail: str) -> None:
        """One finished request: `detail` is what the request's log line says."""
        if endpoint not in self.latency_sums:
            endpoint = OTHER
        key = (endpoint, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.latency_buckets[endpoint][bisect_left(BUCKETS, seconds)] += 1
        self.latency_sums[endpoint] += seconds
        if status == 200:
            if endpoint == "/command":
                name = detail.partition(" ")[0]
                name = name if name in COMMANDS else OTHER
                self.commands[name] = self.commands.get(name, 0) + 1
        elif status in REFUSAL_STATUSES and endpoint != OTHER:  # "other": Zax's 503
            refusal = (status, LIMITS.get(detail, OTHER))
            self.refusals[refusal] = self.refusals.get(refusal, 0) + 1

    def connection_refused(self, listener: str, reason: str) -> None:
        """A connection closed on arrival (`listener`: "http" or "staple")."""
        key = (listener, CONNECTION_LIMITS.get(reason, OTHER))
        self.connection_refusals[key] = self.connection_refusals.get(key, 0) + 1
