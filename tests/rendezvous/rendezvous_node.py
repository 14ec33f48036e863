"""A rendezvous-only relay node for tests: in-process (start_node) or as a subprocess
(`python rendezvous_node.py STORE_URL`, which prints `ports HTTP STAPLE` once listening)."""

from __future__ import annotations

import sys
from typing import Any

import attrs
from twisted.internet.endpoints import serverFromString

from relay.config import RelayConfig, RendezvousConfig, StoreConfig
from relay.rendezvous.service import make_rendezvous
from relay.store import open_store
from relay.web.request import RelaySite
from relay.web.root import RelayRoot


@attrs.define
class Node:
    config: RelayConfig
    store: Any
    service: Any
    http_port: Any

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port.getHost().port}"

    @property
    def staple_port(self) -> int:
        return self.service.staple.port_number()

    @property
    def registry(self) -> Any:
        return self.service.registry

    @property
    def listener(self) -> Any:
        return self.service.staple.listener

    async def stop(self) -> None:
        await self.http_port.stopListening()
        await self.service.stopService()
        await self.store.service.stopService()


def node_config(store_url: str = "memory", **rendezvous: Any) -> RelayConfig:
    settings = {"staple_endpoint": "tcp:0:interface=127.0.0.1", **rendezvous}
    return RelayConfig(store=StoreConfig(url=store_url), rendezvous=RendezvousConfig(**settings))


async def start_node(reactor: Any, config: RelayConfig) -> Node:
    store = open_store(config, reactor)
    store.service.startService()
    children, service = make_rendezvous(config, store, reactor)
    service.startService()
    await service.staple.when_listening()
    site = RelaySite(RelayRoot(children), config.http, reactor)
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site)
    return Node(config, store, service, port)


def main() -> None:
    from twisted.internet import task
    from twisted.internet.defer import Deferred

    async def run(reactor: Any) -> None:
        node = await start_node(reactor, node_config(sys.argv[1]))
        print(f"ports {node.http_port.getHost().port} {node.staple_port}", flush=True)
        await Deferred()  # serve until killed

    task.react(lambda reactor: Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main()
