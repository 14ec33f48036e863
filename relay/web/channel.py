"""The relay's HTTP connection: deadlines, a minimum body rate, bounded unsent output.

Twisted's HTTPChannel has one idle timeout, reset by every byte, so a client that sends a
header line every few seconds or drips a body keeps its connection (and its buffered body)
for ever. And it keeps reading pipelined requests while an answer is still unsent, so a
client that pipelines many large requests and never reads makes the relay build and buffer
every answer. RelayChannel adds, with one timer per connection (checked lazily: the hot path
only notes the time of each read):

- idle: `request_timeout` without a byte before or within a request, `keepalive_timeout`
  between requests: the connection closes (408 if a request had begun);
- `request_deadline` from a request's first byte to its last (408);
- `min_body_rate`: a body averaging less once `body_rate_grace` has passed is cut (408);
- bounded output: while the transport holds more than its buffer size (64 KiB) unsent,
  the channel reads no further request, and an answer that stays unsent `send_timeout`
  aborts the connection. A client that never reads costs one answer, not one per request.
- admission (relay.web.guard): over a cap or near the descriptor limit, a canned 503/429.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.protocols import basic
from twisted.python.failure import Failure
from twisted.web import http

try:  # private in Twisted; without it, PROXY connections are admitted at once as before
    from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper
except ImportError:  # pragma: no cover
    HAProxyProtocolWrapper = None  # type: ignore[assignment,misc]

from relay.config import HTTPConfig
from relay.web.guard import BodyBudget, ConnectionGuard, RefusalLog

# Seconds a connection we close (after a 408, a 413, an answer on a non-persistent
# connection) may take to flush before it is aborted.
ABORT_AFTER = 10.0


def canned(status: int, phrase: str, details: str, retry_after: int | None = None) -> bytes:
    """A complete short answer that closes the connection, written without a Request."""
    lines = [f"HTTP/1.1 {status} {phrase}", "Content-Length: 0",
             "Access-Control-Allow-Origin: *",
             "Access-Control-Expose-Headers: X-Error-Details",
             f"X-Error-Details: {details}", "Connection: close"]
    if retry_after is not None:
        lines.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


TIMED_OUT = canned(408, "Request Timeout", "request too slow")
BODIES_FULL = canned(503, "Service Unavailable", "relay busy", 10)
REFUSALS = {
    "descriptors": canned(503, "Service Unavailable", "relay busy", 10),
    "busy": canned(503, "Service Unavailable", "relay busy", 10),
    "client": canned(429, "Too Many Requests", "too many connections", 10),
}


@attrs.frozen
class ChannelLimits:
    request_timeout: float
    keepalive_timeout: float
    request_deadline: float
    min_body_rate: float
    body_rate_grace: float
    send_timeout: float

    @classmethod
    def from_config(cls, config: HTTPConfig) -> ChannelLimits:
        return cls(config.request_timeout, config.keepalive_timeout, config.request_deadline,
                   float(config.min_body_rate), config.body_rate_grace, config.send_timeout)


class RelayChannel(http.HTTPChannel):
    # Set by RelaySite.buildProtocol.
    limits: ChannelLimits
    clock: IReactorTime
    guard: ConnectionGuard | None = None
    client_key: Any = None
    cuts: RefusalLog | None = None  # logs cut requests once an interval
    bodies: BodyBudget | None = None  # shared by the site's connections

    _timer: Any = None
    _admitted_as: str | None = None
    _admission_pending = False  # behind the PROXY protocol, until its header has come
    _last_read = 0.0  # the last byte's arrival, or the end of the last answer
    _served = False  # a request was answered: idle means keep-alive now
    _request_started: float | None = None  # set while a request is being received
    _body_started: float | None = None
    _body_received = 0
    _body_held = 0  # of the current body, bytes counted in `bodies`
    _blocked_since: float | None = None  # the transport holds more than it can take
    _held = False  # answered, but unsent: what the client pipelined waits
    _closing_since: float | None = None
    _close_grace = ABORT_AFTER

    # -- admission ------------------------------------------------------------------

    def connectionMade(self) -> None:
        if self.guard is not None:
            if _awaits_proxy_header(self.transport):
                # Twisted's PROXY wrapper connects us before the header names the client:
                # counted in all now, per client once the header has come (the timers
                # below run meanwhile, so a header must come within request_timeout).
                refusal = self.guard.admit_unknown(self.transport)
                if refusal is not None:
                    self._refuse(refusal)
                    return
                self._admission_pending = True
                _on_proxy_header(self.transport, self._header_came)
            elif not self._admit():
                return
        super().connectionMade()
        self._last_read = self.clock.seconds()
        self._arm(self._last_read + self.limits.request_timeout)

    def _client(self) -> str:
        host = getattr(self.transport.getPeer(), "host", None)  # None: a UNIX socket
        return self.client_key(host) if (host and self.client_key) else "-"

    def _admit(self) -> bool:
        """Count the connection against the caps, or answer the refusal and close."""
        assert self.guard is not None
        key = self._client()
        refusal = self.guard.admit(key, self.transport)
        if refusal is not None:
            self._refuse(refusal)
            return False
        self._admitted_as = key
        return True

    def _header_came(self) -> bool:
        """The PROXY header named the client: count it against its cap, or refuse."""
        if not self._admission_pending:
            return self._admitted_as is not None
        assert self.guard is not None
        self._admission_pending = False
        key = self._client()
        refusal = self.guard.identify(key)
        if refusal is not None:
            self._refuse(refusal)
            return False
        self._admitted_as = key
        return True

    def _refuse(self, refusal: str) -> None:
        # Nothing parsed: answer and go.
        self.dataReceived = _ignore  # type: ignore[method-assign]
        close_now(self.transport, REFUSALS[refusal])

    def connectionLost(self, reason: Any) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._admitted_as is not None:
            key, self._admitted_as = self._admitted_as, None
            self.guard.release(key)  # type: ignore[union-attr]
        elif self._admission_pending:  # closed before its PROXY header came
            self._admission_pending = False
            self.guard.release_unknown()  # type: ignore[union-attr]
        self._release_body()
        super().connectionLost(reason)

    # -- receiving --------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._admission_pending and not self._header_came():
            return
        now = self._last_read = self.clock.seconds()
        if self._request_started is None:
            if not self._handlingRequest:
                self._start_request(now)
        elif (now > self._request_started + self.limits.request_deadline
              and not self._handlingRequest):
            self._time_out("request deadline")
            return
        # Not HTTPChannel.dataReceived: its TimeoutMixin reset is replaced by our timer.
        basic.LineReceiver.dataReceived(self, data)

    def _start_request(self, now: float) -> None:
        self._request_started = now
        self._arm(now + self.limits.request_deadline)  # if shorter than the idle timeout

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()
        if self.length != 0:
            self._body_started = self._last_read
            self._body_received = 0
            if self.length and self.bodies is not None and not self.bodies.fits(self.length):
                self._refuse_body()

    def rawDataReceived(self, data: bytes) -> None:
        if self._handlingRequest:
            # A pipelined request while one is being answered (or its answer is unsent):
            # buffer a little, then stop reading. Twisted stops only when the transport
            # is not already full, i.e. never in the case that matters.
            self._dataBuffer.append(data)
            if self._held or self._waitingForTransport or (
                    sum(map(len, self._dataBuffer)) > self._optimisticEagerReadSize):
                self._networkProducer.pauseProducing()
            return
        if self._body_started is not None:
            self._body_received += len(data)
            if self.bodies is not None:
                if not self.bodies.take(len(data)):
                    self._refuse_body()
                    return
                self._body_held += len(data)
            if self._too_slow(self._last_read):
                self._time_out("body too slow")
                return
        super().rawDataReceived(data)

    def _refuse_body(self) -> None:
        if self._closing_since is None:
            self._note("bodies over max_buffered_bodies")
            self.close_with(BODIES_FULL)

    def _release_body(self) -> None:
        if self._body_held:
            self.bodies.give(self._body_held)  # type: ignore[union-attr]
            self._body_held = 0

    def _too_slow(self, now: float) -> bool:
        elapsed = now - self._body_started  # type: ignore[operator]
        return (elapsed > self.limits.body_rate_grace
                and self._body_received < self.limits.min_body_rate * elapsed)

    # -- answering --------------------------------------------------------------------

    def requestDone(self, request: Any) -> None:
        self._served = True
        self._release_body()
        self._last_read = self.clock.seconds()
        if self.persistent and self._waitingForTransport:
            # The answer is still unsent: hold what the client pipelined until it drains
            # (resumeProducing), reading nothing meanwhile.
            if request is not self.requests[0]:
                raise TypeError(request)
            del self.requests[0]
            self._held = True
            self._networkProducer.pauseProducing()
            return
        # Requests left in the buffer start now (their bytes waited on ours).
        self._request_started = self._body_started = None
        if self._buffer or any(self._dataBuffer):
            self._start_request(self._last_read)
        super().requestDone(request)
        if self.persistent:
            self._arm(self._last_read + self.limits.keepalive_timeout)

    def pauseProducing(self) -> None:
        if self._blocked_since is None:
            self._blocked_since = self.clock.seconds()
            self._arm(self._blocked_since + self.limits.send_timeout)
        super().pauseProducing()

    def resumeProducing(self) -> None:
        self._blocked_since = None
        if not self._held:
            super().resumeProducing()
            return
        # The unsent answer drained: go on with what the client pipelined, as
        # HTTPChannel.requestDone would have.
        self._held = False
        self._waitingForTransport = False
        self._handlingRequest = False
        self._last_read = self.clock.seconds()
        data = b"".join(self._dataBuffer)
        self._dataBuffer = []
        self._request_started = self._body_started = None
        self._arm(self._last_read + self.limits.keepalive_timeout)
        if data or self._buffer:
            self._start_request(self._last_read)
        self._networkProducer.resumeProducing()
        self.setLineMode(data)

    def loseConnection(self) -> None:
        # After an answer (a non-persistent connection) its reader gets send_timeout.
        self._closing(self.limits.send_timeout)
        super().loseConnection()

    # -- the timer --------------------------------------------------------------------

    def _arm(self, due: float) -> None:
        """Make sure the timer fires by `due` (it may fire earlier and look again)."""
        timer = self._timer
        if timer is not None and timer.active():
            if timer.getTime() > due:
                timer.reset(max(0.0, due - self.clock.seconds()))
            return
        self._timer = self.clock.callLater(max(0.0, due - self.clock.seconds()), self._check)

    def _check(self) -> None:
        self._timer = None
        if self.transport is None:
            return
        now = self.clock.seconds()
        limits = self.limits
        if self._closing_since is not None:
            due = self._closing_since + self._close_grace
            if now >= due:
                self.transport.abortConnection()
            else:
                self._arm(due)
            return
        if self._blocked_since is not None and now >= self._blocked_since + limits.send_timeout:
            self._note("answer unread (aborted)")
            self.transport.abortConnection()
            return
        elif self._handlingRequest:
            due = now + limits.request_timeout  # the handler's own timeouts apply; look later
        elif self._request_started is not None:
            due = min(self._request_started + limits.request_deadline,
                      self._last_read + limits.request_timeout)
            if now >= self._request_started + limits.request_deadline:
                self._time_out("request deadline")
                return
            if now >= due:
                self._time_out("idle within a request")
                return
            if self._body_started is not None and self._too_slow(now):
                self._time_out("body too slow")
                return
        else:
            due = self._last_read + (limits.keepalive_timeout if self._served
                                     else limits.request_timeout)
            if now >= due:
                self.loseConnection()  # idle: nothing to answer
                return
        if self._blocked_since is not None:
            due = min(due, self._blocked_since + limits.send_timeout)
        self._arm(due)

    def _time_out(self, reason: str) -> None:
        """The request being received is too slow: 408, then close."""
        if self._closing_since is not None:
            return
        self._note(reason)
        self.close_with(TIMED_OUT)

    def _note(self, reason: str) -> None:
        if self.cuts is not None:
            self.cuts.refused(reason)

    def _closing(self, grace: float) -> None:
        if self._closing_since is None:
            self._closing_since = self.clock.seconds()
            self._close_grace = grace
            self._arm(self._closing_since + grace)

    def close_with(self, answer: bytes) -> None:
        """Write a canned answer and close (a refused request, e.g. an oversized body); a
        client that does not read it is aborted after ABORT_AFTER."""
        self.dataReceived = _ignore  # type: ignore[method-assign]
        self.transport.write(answer)
        self._closing(ABORT_AFTER)
        super().loseConnection()


def close_now(transport: Any, answer: bytes) -> None:
    """Send a short answer and close, freeing the descriptor before returning if we can.

    tcp.Port accepts a batch of connections in one go (100 and more); a refused connection
    closed the usual way (loseConnection) keeps its descriptor until the next reactor turn,
    so a flood would run the process into EMFILE within one batch, which is what the
    refusal is there to prevent. A plain TCP transport is closed on the spot: the answer
    fits a fresh socket's send buffer. Other transports (TLS, PROXY protocol) close as
    usual."""
    skt = getattr(transport, "socket", None)
    if isinstance(transport, tcp.Connection) and skt is not None and not transport.disconnected:
        try:
            skt.send(answer)
        except OSError:
            pass
        transport.connectionLost(Failure(ConnectionDone("refused")))
        return
    transport.write(answer)
    transport.loseConnection()


def _awaits_proxy_header(transport: Any) -> bool:
    """Is this a PROXY-protocol connection (whose client is not known yet when it opens)?"""
    return HAProxyProtocolWrapper is not None and isinstance(transport, HAProxyProtocolWrapper)


def _on_proxy_header(wrapper: Any, header_came: Any) -> None:
    """Call header_came() once the PROXY header has been read, even if no byte follows it
    (the wrapper passes on only what comes after the header)."""
    parse = wrapper.dataReceived

    def data_received(data: bytes) -> None:
        parse(data)  # passes what follows the header to the channel, which admits first
        if getattr(wrapper, "_proxyInfo", None) is not None:
            wrapper.dataReceived = parse  # header read: the wrapper's own path from now on
            header_came()

    wrapper.dataReceived = data_received


def _ignore(data: bytes) -> None:
    pass
