"""Open a TCP connection for one of the client's own protocols, without Twisted's endpoints.

    await connect_tcp(reactor, "relay.example.org", 8080, protocol, timeout=30)

`twisted.internet.endpoints` imports pyOpenSSL (about a third of the command's start-up
CPU), and the client needs none of its generality for the staple and its plain HTTP calls:
an IP address is connected at once; a name is resolved with getaddrinfo in a thread (IPv4
and IPv6) and its addresses are tried in turn until one connects, all within `timeout`.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import ClientFactory
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure


class _OneConnection(ClientFactory):
    """Hands the given protocol to the first (and only) connection it builds."""

    def __init__(self, protocol: IProtocol, reactor: Any) -> None:
        self.protocol_instance = protocol
        self.reactor = reactor
        self.done: Deferred[None] = Deferred()

    def buildProtocol(self, addr: Any) -> IProtocol:
        # The transport calls makeConnection right after this returns: report the
        # connection on the next turn of the reactor, once the protocol has it.
        self.reactor.callLater(0, self._connected)
        return self.protocol_instance

    def _connected(self) -> None:
        if not self.done.called:
            self.done.callback(None)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self.done.called:
            self.done.errback(reason)


def _attempt(reactor: Any, host: str, port: int, protocol: IProtocol, timeout: float,
             bind_host: str | None) -> Deferred[None]:
    factory = _OneConnection(protocol, reactor)
    bind = (bind_host, 0) if bind_host else None
    connector = reactor.connectTCP(host, port, factory, timeout=max(1, int(timeout + 0.999)),
                                   bindAddress=bind)

    def cancel(_: Deferred[None]) -> None:
        connector.disconnect()  # stops connecting, or drops a connection just made

    outcome: Deferred[None] = Deferred(cancel)
    factory.done.chainDeferred(outcome)
    return outcome


def _addresses(host: str, port: int) -> list[str]:  # a thread of the reactor's pool
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for _family, _type, _proto, _name, address in infos:
        if address[0] not in seen:
            seen.append(address[0])
    return seen


async def connect_tcp(reactor: Any, host: str, port: int, protocol: IProtocol, *,
                      timeout: float, bind_host: str | None = None) -> None:
    """Connect protocol to host:port (its connectionMade has run when this returns).
    ConnectError (or a subclass) when no address connects; cancelling stops connecting."""
    if isIPAddress(host) or isIPv6Address(host):
        await _attempt(reactor, host, port, protocol, timeout, bind_host)
        return
    started = reactor.seconds()
    try:
        addresses = await deferToThreadPool(reactor, reactor.getThreadPool(), _addresses,
                                            host, port)
    except OSError as e:
        raise ConnectError(string=f"cannot resolve {host}: {e}") from None
    last: BaseException = ConnectError(string=f"{host} has no address")
    for address in addresses:
        left = timeout - (reactor.seconds() - started)
        if left <= 0:
            break
        try:
            await _attempt(reactor, address, port, protocol, left, bind_host)
            return
        except CancelledError:
            raise
        except ConnectError as e:
            last = e
    raise last
