"""Every HTTP call the client makes to a relay, bounded: one deadline for the whole exchange
(connecting, the headers and the body) and a cap on the body's size.

    answer = await post_bounded(http, url, body, headers, timeout=30, max_bytes=2**20,
                                clock=reactor, what="/join")

A relay is not trusted to be well-behaved: one that drips a byte every few seconds, or
announces or streams a body of gigabytes, ends the call with RelayTimeout or RelayError
(exit 3) within `timeout`, having kept at most `max_bytes` of the body in memory. The
mailbox client (relay/client/mailbox/client.py) and the rendezvous (/join and /channel,
relay/client/live/rendezvous.py) both call through here.

`http` is anything with treq's `post`, and `collect` if it has one (the treq module,
treq.testing.StubTreq, a treq.HTTPClient, whose bodies are read with treq.collect, or
relay/client/plain_http.py's PlainHTTP). treq is imported only when it is needed: it pulls
in pyOpenSSL, a third of the command's start-up.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime

from relay.client.errors import RelayError, RelayTimeout
from relay.client.plain_http import AnswerCut, BadAnswer


@attrs.frozen
class Answer:
    code: int
    headers: Any  # twisted.web.http_headers.Headers
    body: bytes


class _Abandoned(Exception):
    """Raised into the body's connection to close it once the call gave up."""


async def post_bounded(http: Any, url: str, body: bytes, headers: dict[bytes, list[bytes]],
                       *, timeout: float, max_bytes: int, clock: IReactorTime,
                       what: str) -> Answer:
    """POST body to url; the status, headers and body of the answer. RelayTimeout when the
    whole answer did not come within timeout seconds, RelayError when its body is over
    max_bytes, was cut off, or the relay could not be reached."""
    state = _Call(max_bytes, what)
    attempt = Deferred.fromCoroutine(state.run(http, url, body, headers))

    def timed_out(_result: Any, _timeout: float) -> None:
        # Whatever the cancelled request failed with, the cause was the deadline.
        raise RelayTimeout(f"{what}: no answer from the relay within {timeout:g} s")

    attempt.addTimeout(timeout, clock, onTimeoutCancel=timed_out)
    try:
        return await attempt
    finally:
        state.abandoned = True  # a body still arriving closes its connection at its next byte


class _Call:
    def __init__(self, max_bytes: int, what: str) -> None:
        self.max_bytes = max_bytes
        self.what = what
        self.abandoned = False
        self.size = 0
        self.parts: list[bytes] = []

    def _too_big(self) -> RelayError:
        return RelayError(f"{self.what}: the relay's answer is over {self.max_bytes} bytes")

    def collect(self, data: bytes) -> None:
        if self.abandoned:
            raise _Abandoned()
        self.size += len(data)
        if self.size > self.max_bytes:
            self.abandoned = True
            self.parts = []
            raise self._too_big()
        self.parts.append(data)

    async def run(self, http: Any, url: str, body: bytes,
                  headers: dict[bytes, list[bytes]]) -> Answer:
        try:
            response = await http.post(url, data=body, headers=headers)
        except (CancelledError, RelayError):
            raise
        except (BadAnswer, AnswerCut) as e:
            raise RelayError(f"{self.what}: the relay's answer is unusable ({e})") from None
        except Exception as e:  # connection refused, DNS, TLS...: all "cannot reach"
            raise RelayError(f"{self.what}: cannot reach the relay at {_origin(url)} "
                             f"({e.__class__.__name__})") from None
        collect = getattr(http, "collect", None) or _treq_collect()
        length = response.length  # an int, or None or treq's UNKNOWN_LENGTH (a str)
        announced_too_big = isinstance(length, int) and length > self.max_bytes
        if announced_too_big:
            self.abandoned = True  # read nothing of it: its first bytes close the connection
        reading = collect(response, self.collect)
        if announced_too_big:
            reading.addErrback(lambda _: None)
            raise self._too_big()
        try:
            await reading
        except (RelayError, CancelledError):
            raise
        except Exception as e:
            raise RelayError(f"{self.what}: the relay's answer was cut off "
                             f"({e.__class__.__name__})") from None
        return Answer(response.code, response.headers, b"".join(self.parts))


def _treq_collect() -> Any:
    import treq

    return treq.collect


def _origin(url: str) -> str:
    """scheme://host:port of url, for messages (never a path or a query)."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"
