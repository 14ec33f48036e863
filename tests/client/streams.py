"""Two RecordStreams joined by a real loopback TCP connection (port 0), for the client tests."""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory

from relay.client.live.records import RECIPIENT_TO_SENDER, SENDER_TO_RECIPIENT, RecordStream


def stream_pair_kwargs(**kwargs: Any) -> tuple[dict, dict]:
    to_recipient, to_sender = os.urandom(32), os.urandom(32)
    sender = dict(send_key=to_recipient, send_direction=SENDER_TO_RECIPIENT,
                  receive_key=to_sender, receive_direction=RECIPIENT_TO_SENDER,
                  clock=reactor, **kwargs)
    recipient = dict(send_key=to_sender, send_direction=RECIPIENT_TO_SENDER,
                     receive_key=to_recipient, receive_direction=SENDER_TO_RECIPIENT,
                     clock=reactor, **kwargs)
    return sender, recipient


@asynccontextmanager
async def loopback_streams(**kwargs: Any):
    """(sender stream, recipient stream) over 127.0.0.1; both closed afterwards."""
    sender_kwargs, recipient_kwargs = stream_pair_kwargs(**kwargs)
    accepted: Deferred[RecordStream] = Deferred()

    def build(_addr: Any) -> RecordStream:
        stream = RecordStream(**recipient_kwargs)
        stream.connected_d.addCallback(lambda _: accepted.callback(stream))
        return stream

    factory = Factory.forProtocol(lambda: None)
    factory.buildProtocol = build  # type: ignore[method-assign]
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    sender = None
    recipient = None
    try:
        client_factory = Factory.forProtocol(lambda: RecordStream(**sender_kwargs))
        sender = await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port,
                                          timeout=5).connect(client_factory)
        recipient = await accepted.addTimeout(5, reactor)
        yield sender, recipient
    finally:
        for stream in (sender, recipient):
            if stream is not None and stream.transport is not None:
                stream.transport.abortConnection()
                await stream.closed_d
        await port.stopListening()
