"""The relay's metrics, read on scrape from what the relay already counts.

Nothing here runs on a request's path: `RelayCollector.refresh()` (awaited by /metrics before
each exposition) takes the usage log's snapshot (relay.usage: store, proof of work, files,
rendezvous, HTTP connections) and the open channel count; `collect()` then turns that, the
request counts (relay.admin.requests) and the Redis backend's call counters into metric
families. A figure a source could not give (Redis down) is left out of that scrape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from relay import __version__
from relay.admin.requests import BUCKETS, RequestStats
from relay.store import Store
from relay.store.redis import CALL_BUCKETS
from relay.usage import UsageLog

# usage snapshot key -> (metric name, help). Gauges: what is held or open right now.
_GAUGES = {
    "store.used_bytes": ("relay_store_used_bytes", "Bytes the store holds (memory store: "
                         "messages and file data; Redis: used_memory at the last reading)"),
    "store.limit_bytes": ("relay_store_limit_bytes", "Store bytes at which uploads are "
                          "refused with 507"),
    "store.messages": ("relay_store_messages", "Messages held (memory store)"),
    "store.message_bytes": ("relay_store_message_bytes", "Bytes of messages held (memory "
                            "store)"),
    "files.bytes": ("relay_file_bytes", "File bytes charged plus reserved (what counts "
                    "against [files] total_max_bytes)"),
    "files.reserved": ("relay_file_reserved_bytes", "File bytes reserved by open uploads"),
    "pow.difficulty": ("relay_pow_difficulty", "Proof-of-work difficulty (bits) announced "
                       "now"),
    "pow.handshakes_per_s": ("relay_pow_handshakes_per_second", "Handshakes per second the "
                             "difficulty is measured on (this node)"),
    "rendezvous.waits": ("relay_rendezvous_long_polls", "/channel long-polls waiting now"),
    "rendezvous.pairs": ("relay_rendezvous_stapled_pairs", "Stapled pairs moving bytes"),
    "rendezvous.unpaired": ("relay_rendezvous_unpaired_connections", "Staple connections "
                            "waiting for identification or their partner"),
    "rendezvous.open_channels": ("relay_rendezvous_open_channels", "Open rendezvous channels "
                                 "(in the store: all nodes; expired ones count until purged)"),
    "http.connections": ("relay_http_connections", "Open HTTP connections"),
}


async def open_channels(store: Store) -> int | None:
    """Open channels: the memory store's table, or the Redis index's size (one ZCARD)."""
    channels = store.channels
    if channels is None:
        return None
    index, backend = getattr(channels, "index", None), getattr(channels, "backend", None)
    if index is not None and backend is not None:
        return int(await backend.run(lambda redis: redis.execute_command("ZCARD", index)))
    table = getattr(channels, "channels", None)
    return len(table) if table is not None else None


class RelayCollector(Collector):
    def __init__(self, stats: RequestStats, usage: UsageLog, store: Store,
                 bytes_relayed: Callable[[], int] | None = None) -> None:
        self.stats = stats
        self.usage = usage
        self.store = store
        self.bytes_relayed = bytes_relayed
        self.figures: dict[str, Any] = {}

    async def refresh(self) -> None:
        figures = await self.usage.snapshot()
        try:
            figures["rendezvous.open_channels"] = await open_channels(self.store)
        except Exception:  # noqa: BLE001, S110 - a store that does not answer: left out
            pass
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        yield from self._requests()
        yield from self._figures()
        yield from self._store_calls()
        if self.bytes_relayed is not None:
            yield CounterMetricFamily("relay_rendezvous_relayed_bytes", "Bytes stapled pairs "
                                      "moved, both ways together", value=self.bytes_relayed())
        info = GaugeMetricFamily("relay_info", "The relay's version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info

    def _requests(self) -> Iterator[Metric]:
        stats = self.stats
        requests = CounterMetricFamily("relay_http_requests", "Finished API requests by "
                                       "endpoint and status", labels=["endpoint", "status"])
        for (endpoint, status), count in sorted(stats.requests.items()):
            requests.add_metric([endpoint, str(status)], count)
        yield requests
        latency = HistogramMetricFamily("relay_http_request_duration_seconds", "Time from a "
                                        "request's arrival to its answer, by endpoint",
                                        labels=["endpoint"])
        for endpoint, counts in stats.latency_buckets.items():
            buckets = _cumulative(BUCKETS, counts)
            if buckets[-1][1]:
                latency.add_metric([endpoint], buckets, stats.latency_sums[endpoint])
        yield latency

        def count(endpoint: str) -> int:
            return stats.requests.get((endpoint, 200), 0)

        yield CounterMetricFamily("relay_handshakes", "Handshakes started (/start_session "
                                  "answered 200)", value=count("/start_session"))
        yield CounterMetricFamily("relay_sessions", "Sessions proven (/prove answered 200)",
                                  value=count("/prove"))
        commands = CounterMetricFamily("relay_commands", "Mailbox and file commands answered "
                                       "200, by command", labels=["command"])
        for name, n in sorted(stats.commands.items()):
            commands.add_metric([name], n)
        yield commands
        refusals = CounterMetricFamily("relay_refusals", "Requests refused by a limit (429 "
                                       "rate, 503 relay-wide cap, 507 storage full), by the "
                                       "setting that refused them", labels=["status", "limit"])
        for (status, limit), n in sorted(stats.refusals.items()):
            refusals.add_metric([str(status), limit], n)
        yield refusals
        connections = CounterMetricFamily("relay_connection_refusals", "Connections closed on "
                                          "arrival by a limit, by listener and setting",
                                          labels=["listener", "limit"])
        for (listener, limit), n in sorted(stats.connection_refusals.items()):
            connections.add_metric([listener, limit], n)
        yield connections

    def _figures(self) -> Iterator[Metric]:
        for key, (name, help_text) in _GAUGES.items():
            value = self.figures.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                yield GaugeMetricFamily(name, help_text, value=value)

    def _store_calls(self) -> Iterator[Metric]:
        backend = getattr(self.store.service, "backend", None)
        up = GaugeMetricFamily("relay_store_up", "1 while the store has a live connection "
                               "(always 1 for the memory store)")
        if self.store.kind != "redis" or backend is None:
            up.add_metric([], 1)
            yield up
            return
        pool = backend.pool
        up.add_metric([], 1 if pool.live_count and not pool.is_down else 0)
        yield up
        yield GaugeMetricFamily("relay_store_connections", "Live Redis connections in the "
                                "pool", value=pool.live_count)
        yield GaugeMetricFamily("relay_store_pending_calls", "Redis calls under way or "
                                "waiting", value=backend.pending_calls)
        yield CounterMetricFamily("relay_store_calls", "Redis calls finished (answered or "
                                  "failed)", value=backend.calls)
        yield CounterMetricFamily("relay_store_call_seconds", "Seconds spent in Redis calls "
                                  "(divide by relay_store_calls_total for the mean latency)",
                                  value=backend.call_seconds)
        latency = HistogramMetricFamily("relay_store_call_duration_seconds", "Redis calls by "
                                        "duration (a call: one or more scripts or commands "
                                        "sent together, waiting for a connection included)")
        latency.add_metric([], _cumulative(CALL_BUCKETS, backend.call_buckets),
                           backend.call_seconds)
        yield latency
        errors = CounterMetricFamily("relay_store_errors", "Redis calls that failed, by kind",
                                     labels=["kind"])
        for kind, n in sorted(backend.call_errors.items()):
            errors.add_metric([kind], n)
        yield errors


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, int]]:
    """Prometheus buckets (upper bound, cumulative count) from per-bucket counts, the last
    count being the calls above every bound."""
    cumulative, buckets = 0, []
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        cumulative += count
        buckets.append((_bound(bound), cumulative))
    return buckets


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
