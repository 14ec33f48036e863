"""A Redis pub/sub subscription on its own connection: the feed of changed channel names.

The channel scripts PUBLISH a channel's name on every stored change; each relay node keeps
ONE subscriber connection (a subscribed connection can run no other command, so it is not
one of the pool's) and hands every name to the rendezvous registry, which wakes the
long-polls of that channel on this node. The connection reconnects by itself (a
ClientService with the pool's short capped backoff); while it is not subscribed `live` is
False and the registry falls back to re-reading the store slowly, so nothing hangs.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.application.internet import ClientService
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from relay.store.redis.pool import RETRY_INITIAL_DELAY, RETRY_MAX_DELAY

log = Logger(namespace="relay.store.redis")


class _Subscriber(txredisapi.SubscriberProtocol):
    feed: RedisChangeFeed

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.feed._message(message)


class _SubscriberFactory(Factory):
    noisy = False
    # txredisapi's protocol reads these when AUTH or SELECT fails.
    isLazy = False

    def __init__(self, feed: RedisChangeFeed) -> None:
        self.feed = feed

    def buildProtocol(self, addr: Any) -> _Subscriber:
        address = self.feed.backend.address
        protocol = _Subscriber(charset=None, convertNumbers=False, password=address.password,
                               username=address.username, dbid=address.db or None)
        protocol.factory = self
        protocol.feed = self.feed
        protocol.whenConnected().addCallback(self.feed._connected)
        protocol.whenDisconnected().addCallback(self.feed._disconnected)
        return protocol

    def stopTrying(self) -> None:
        pass  # keep retrying, as the pool does

    def connectionError(self, why: str) -> None:
        log.warn("the Redis change feed could not set up its connection: {why}", why=why)


class RedisChangeFeed:
    """Calls on_change(name, version or None) per notice, on_live(bool) when subscribed or
    not."""

    def __init__(self, backend: Any, topic: str,
                 on_change: Callable[[str, int | None], None],
                 on_live: Callable[[bool], None]) -> None:
        self.backend = backend
        self.topic = topic
        self.on_change = on_change
        self.on_live = on_live
        self.live = False
        self.messages = 0  # for tests and metrics
        # The backend's endpoint: with Sentinel it asks where the master is first.
        self._service = ClientService(backend.endpoint, _SubscriberFactory(self),
                                      retryPolicy=_retry_delay, clock=backend.clock)
        self._protocol: _Subscriber | None = None

    def start(self) -> None:
        self._service.startService()

    def stop(self) -> Any:
        self._set_live(False)
        return self._service.stopService()

    def _connected(self, protocol: _Subscriber) -> _Subscriber:
        self._protocol = protocol

        def subscribed(_: Any) -> None:
            if self._protocol is protocol and protocol.connected:
                self._set_live(True)

        def failed(failure: Any) -> None:
            log.warn("subscribing to the Redis change feed failed: {e}", e=failure.value)
            if protocol.transport is not None:
                protocol.transport.loseConnection()  # the service reconnects

        protocol.subscribe(self.topic).addCallbacks(subscribed, failed)
        return protocol

    def _disconnected(self, protocol: _Subscriber) -> _Subscriber:
        if self._protocol is protocol:
            self._protocol = None
            self._set_live(False)
        return protocol

    def _set_live(self, live: bool) -> None:
        if live != self.live:
            self.live = live
            self.on_live(live)

    def _message(self, message: Any) -> None:
        """`<name> <version>` (a change) or `<name>` (deleted)."""
        self.messages += 1
        if isinstance(message, str):
            message = message.encode()
        if not isinstance(message, bytes):
            return
        name, _, version = message.partition(b" ")
        try:
            self.on_change(name.decode("ascii"), int(version) if version else None)
        except ValueError:  # UnicodeDecodeError too: not one of ours
            return


def _retry_delay(attempt: int) -> float:
    delay = min(RETRY_INITIAL_DELAY * 2.0 ** max(attempt - 1, 0), RETRY_MAX_DELAY)
    return delay * random.uniform(0.9, 1.1)
