"""Connected socket pairs through each system the rendezvous benchmark compares.

Each opener is a callable returning (sender's socket, recipient's socket), blocking, both
already past their system's handshake, so the throughput and idle-pair clients treat every
system alike:

- `DirectPairs`: the recipient listens, the sender connects (the ceiling: no hop at all);
- `ForwarderPairs`: the sender connects to a plain TCP forwarder (socat) that connects on to
  the recipient's listener;
- `TransitPairs`: magic-wormhole's transit relay: both connect and say
  `please relay <token> for side <side>\\n`, the relay answers `ok\\n` once both are there;
- `staple_handshake.StapleClient(url).open_pair`: our relay (/join, /channel, staple).
"""

from __future__ import annotations

import os
import socket

from bench.staple_handshake import open_greeted_pair

HOST = "127.0.0.1"
TIMEOUT = 30.0

Pair = tuple[socket.socket, socket.socket]


class DirectPairs:
    def __init__(self) -> None:
        self.listener = socket.create_server((HOST, 0), backlog=1024)

    def __call__(self) -> Pair:
        a = socket.create_connection(self.listener.getsockname(), timeout=TIMEOUT)
        b, _ = self.listener.accept()
        b.settimeout(TIMEOUT)
        return a, b

    def close(self) -> None:
        self.listener.close()


class ForwarderPairs:
    """The forwarder listens on `port` and connects each connection on to `listener`."""

    def __init__(self, port: int, listener: socket.socket) -> None:
        self.port, self.listener = port, listener

    def __call__(self) -> Pair:
        a = socket.create_connection((HOST, self.port), timeout=TIMEOUT)
        b, _ = self.listener.accept()
        b.settimeout(TIMEOUT)
        return a, b

    def close(self) -> None:
        self.listener.close()


class TransitPairs:
    def __init__(self, port: int) -> None:
        self.port = port

    def __call__(self) -> Pair:
        token = os.urandom(32).hex()
        return open_greeted_pair((HOST, self.port),
                                 f"please relay {token} for side {os.urandom(8).hex()}\n",
                                 f"please relay {token} for side {os.urandom(8).hex()}\n")

    def close(self) -> None:
        pass
