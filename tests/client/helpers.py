"""Test helpers for the client: StubTreq that delivers asynchronous responses too."""

from __future__ import annotations

import time
from typing import Any

from nacl.public import PrivateKey
from treq.testing import StubTreq
from twisted.internet.task import Clock

from relay.client.mailbox.client import MailboxClient

BASE_URL = "http://relay.test"


class FlushingStubTreq:
    """StubTreq needs flush() to move bytes when a resource answers after render returns
    (NOT_DONE_YET); the relay's store answers without the reactor, so one flush suffices."""

    def __init__(self, root: Any) -> None:
        self.stub = StubTreq(root)

    def post(self, *args: Any, **kwargs: Any) -> Any:
        d = self.stub.post(*args, **kwargs)
        self.stub.flush()
        return d

    def collect(self, response: Any, collector: Any) -> Any:
        d = self.stub.collect(response, collector)
        self.stub.flush()
        return d


class RecordingStubTreq(FlushingStubTreq):
    """Also keeps every request's (path, body), to check what went over the wire."""

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self.requests: list[tuple[bytes, bytes]] = []

    def post(self, url: str, *args: Any, **kwargs: Any) -> Any:
        path = url[len(BASE_URL):].encode()
        self.requests.append((path, kwargs.get("data") or (args[0] if args else b"")))
        return super().post(url, *args, **kwargs)

    def count(self, path: bytes) -> int:
        return sum(p == path for p, _ in self.requests)


def wall_clock() -> Clock:
    """A task.Clock at the current time, so timestamped nonces look fresh."""
    clock = Clock()
    clock.advance(time.time())
    return clock


def make_client(root: Any, clock: Clock, identity: PrivateKey | None = None,
                http: Any = None, **kwargs: Any) -> MailboxClient:
    return MailboxClient(BASE_URL, identity or PrivateKey.generate(),
                         http=http or FlushingStubTreq(root), clock=clock, **kwargs)
