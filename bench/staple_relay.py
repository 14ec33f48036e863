#!/usr/bin/env python3
"""A rendezvous-only relay in the foreground, for the benchmarks (bench/rendezvous_bench.py
starts it on free ports):

    python bench/staple_relay.py --http tcp:4100:interface=127.0.0.1 \\
        --staple tcp:4101:interface=127.0.0.1:backlog=1024

Same code as `twistd relay` (relay.rendezvous.service.make_rendezvous on the memory store),
with the per-client limits and the channel cap raised: every benchmark client is on
127.0.0.1.
The open-file soft limit is raised to the hard limit: a stapled pair holds two sockets.
"""

from __future__ import annotations

import argparse
import resource
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString

from relay.config import RelayConfig, RendezvousConfig
from relay.rendezvous.service import make_rendezvous
from relay.store import open_store
from relay.web.request import RelaySite
from relay.web.root import RelayRoot


async def serve(reactor: Any, args: argparse.Namespace) -> None:
    config = RelayConfig(rendezvous=RendezvousConfig(
        staple_endpoint=args.staple, joins_per_ip_per_minute=10**9, max_channels=50000,
        max_channels_per_client=50000, max_pairs_per_client=50000,
        max_waits_per_client=50000, max_waits=50000,
        channel_ttl=3600.0, data_path=args.data_path))
    store = open_store(config, reactor)
    store.service.startService()
    children, service = make_rendezvous(config, store, reactor)
    service.startService()
    await service.staple.when_listening()
    await serverFromString(reactor, args.http).listen(
        RelaySite(RelayRoot(children), config.http, reactor))
    await Deferred()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--http", required=True)
    parser.add_argument("--staple", required=True)
    parser.add_argument("--data-path", default="splice", choices=["splice", "copy"])
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    task.react(lambda reactor: Deferred.fromCoroutine(serve(reactor, args)))


if __name__ == "__main__":
    main()
