"""Request counting for metrics: labels only ever come from fixed sets, whatever a request
says, and the refusal table names messages the relay really sends."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from relay.admin.requests import COMMANDS, CONNECTION_LIMITS, ENDPOINTS, LIMITS, OTHER, RequestStats
from relay.web.guard import _REASONS

RELAY = Path(__file__).resolve().parent.parent / "relay"


@given(st.lists(st.tuples(st.text(max_size=30) | st.sampled_from(ENDPOINTS),
                          st.integers(100, 599), st.floats(0, 1e6),
                          st.text(max_size=60) | st.sampled_from(sorted(LIMITS)))))
def test_labels_come_from_fixed_sets(requests):
    stats = RequestStats()
    for endpoint, status, seconds, detail in requests:
        stats.observe(endpoint, status, seconds, detail)
        stats.connection_refused("http", detail)
    endpoints = {*ENDPOINTS, OTHER}
    assert {endpoint for endpoint, _ in stats.requests} <= endpoints
    assert set(stats.latency_buckets) == endpoints
    assert set(stats.commands) <= COMMANDS | {OTHER}
    assert {limit for _, limit in stats.refusals} <= set(LIMITS.values()) | {OTHER}
    assert {limit for _, limit in stats.connection_refusals} <= \
        set(CONNECTION_LIMITS.values()) | {OTHER}
    assert sum(stats.requests.values()) == len(requests)
    assert sum(sum(b) for b in stats.latency_buckets.values()) == len(requests)


def test_commands_and_refusals_are_counted_by_name():
    stats = RequestStats()
    stats.observe("/command", 200, 0.001, "upload 1a2b3c4d")
    stats.observe("/command", 200, 0.001, "mystery 1a2b3c4d")
    stats.observe("/command", 507, 0.001, "the mailbox is full")
    stats.observe("/join", 429, 0.001, "too many joins from this network; try again in a minute")
    stats.observe("/nope", 503, 0.0, "")  # an unknown path: not a limit's refusal
    assert stats.commands == {"upload": 1, OTHER: 1}
    assert stats.refusals == {(507, "mailbox.max_messages"): 1,
                              (429, "rendezvous.joins_per_ip_per_minute"): 1}
    assert stats.requests[(OTHER, 503)] == 1


def test_every_refusal_message_in_the_table_is_one_the_relay_sends():
    source = "".join(path.read_text() for path in RELAY.rglob("*.py")
                     if "admin" not in path.parts and "client" not in path.parts)
    for message in LIMITS:
        assert f'"{message}"' in source, message
    assert set(CONNECTION_LIMITS) == set(_REASONS.values())
