"""Issue 8, slow and many clients: the request deadline cuts clients that never finish a
request, the connection caps refuse floods cleanly while others are served.

HTTP-level attacks: the store plays no part, so they run on the memory store only."""

from __future__ import annotations

from tests.abuse import attacks
from tests.abuse.settings import BYSTANDER_SECONDS, setting

MIB = 1024 * 1024
# A relay may take this long past its deadline to cut a client (its timers' granularity).
DEADLINE_SLACK = 3.0


def test_slow_headers_are_cut_at_the_deadline(launch):
    # 200 clients sending a header line every 2 s (scaled from 12 s against 30 s): an idle
    # timeout never fires, only a deadline on the whole request does.
    relay = launch("base", "memory")
    deadline = setting("base", "http", "request_deadline")
    report = attacks.run(relay, attacks.slow_headers, count=200, interval=2.0,
                         seconds=deadline + DEADLINE_SLACK)
    assert report.facts["opened"] == 200, report
    assert report.facts["open_at_end"] == 0, report
    assert not report.bystanders_ok(BYSTANDER_SECONDS), report


def test_slow_bodies_are_cut_and_bounded(launch):
    # 300 bodies announced as 1 MiB, dripped at 24 KiB/s each: ~85 MB held by the end of
    # the test if nothing cuts them, ~35 MB at most when the deadline does.
    relay = launch("base", "memory")
    deadline = setting("base", "http", "request_deadline")
    report = attacks.run(relay, attacks.slow_bodies, count=300, drip=12 * 1024, interval=0.5,
                         seconds=deadline + 2 * DEADLINE_SLACK)
    assert report.facts["opened"] == 300, report
    assert report.facts["open_at_end"] == 0, report
    assert report.rss_growth < 64 * MIB, report
    assert not report.bystanders_ok(BYSTANDER_SECONDS), report


def test_connection_flood_at_the_fd_limit(launch):
    # RLIMIT_NOFILE 1024 and 1,200 idle connections from 40 addresses: the relay refuses new
    # connections near its limit without spinning or logging each one, and a connection it
    # already holds keeps working.
    relay = launch("flood", "memory", fd_limit=1024)
    report = attacks.run(relay, attacks.connection_flood, count=1200, addresses=40)
    facts = report.facts
    assert relay.alive()
    assert facts["keeper"] == "200" and facts["keeper_seconds"] < BYSTANDER_SECONDS, report
    # Once per interval, not once per refused connection.
    assert 1 <= facts["limit_log_lines"] <= 3, report
    # Refusing is cheap: no busy loop on a listening socket it cannot accept from.
    assert facts["cpu_share_at_limit"] < 0.5, report
    # Below the fd limit: what the relay holds stays within max_connections (+ its own fds).
    assert report.fds_peak < 1024, report
    # A fresh connection during the flood may be refused (cleanly); once the flood is gone,
    # the bystander is served.
    after = report.bystanders["after"]
    assert after.ok and after.seconds < BYSTANDER_SECONDS, report


def test_connections_per_client_are_capped(launch):
    relay = launch("per_client_connections", "memory")
    cap = setting("per_client_connections", "http", "max_connections_per_client")
    report = attacks.run(relay, attacks.per_client_connections, count=300)
    assert report.facts["held"] <= cap, report
    assert not report.bystanders_ok(BYSTANDER_SECONDS), report
