"""Issue 8, answers nobody reads: pipelined requests whose answers back up must not make the
relay buffer them all (the relay stops reading until the client reads)."""

from __future__ import annotations

from tests.abuse import attacks
from tests.abuse.settings import BYSTANDER_SECONDS

MIB = 1024 * 1024


def test_pipelined_entropy_never_read(launch, store):
    # 1,000 getEntropy of 512,000 bytes: ~700 MB of answers if all were buffered.
    relay = launch("pipelining", store)
    report = attacks.run(relay, attacks.pipelined_entropy, count=1000, size=512000)
    assert report.facts["warm_up"] == 200, report
    assert relay.alive()
    assert report.rss_growth < 32 * MIB, report
    assert not report.bystanders_ok(BYSTANDER_SECONDS), report


def test_pipelined_downloads_never_read(launch, store):
    # 20 downloads of a full mailbox (12 MB, pages of 20 messages): ~110 MB of answers if
    # all were buffered, one answer (~5.5 MB) at a time if the relay waits for the reader.
    relay = launch("pipelining", store)
    report = attacks.run(relay, attacks.pipelined_downloads, messages=80, count=20)
    assert report.facts["uploads"] == {200: 80}, report
    assert report.facts["warm_up"] == 200, report
    assert relay.alive()
    assert report.rss_growth < 48 * MIB, report
    assert not report.bystanders_ok(BYSTANDER_SECONDS), report
