"""The one way a request is run: body cap, the work as a coroutine, cancellation when the
client goes away, error mapping, and a log line without secrets. Each API keeps its own
reply format (a `Replies`): the mailbox answers text with X-Error-Details on errors, the
rendezvous answers JSON. The connection's deadlines live in relay.web.channel."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import attrs
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from relay.store.errors import StoreFull, StoreRateLimited, StoreUnavailable
from relay.web.errors import HTTPError

log = Logger(namespace="relay.http")

T = TypeVar("T")


def set_common_headers(request: Request) -> None:
    request.setHeader(b"Access-Control-Allow-Origin", b"*")
    request.setHeader(b"Access-Control-Expose-Headers", b"X-Error-Details")


def error_status(failure: Failure) -> tuple[int, str]:
    """The status and detail for an exception; unexpected ones are logged in full."""
    error = failure.value
    if isinstance(error, HTTPError):  # ChannelError too
        return error.status, error.details
    if isinstance(error, StoreRateLimited):
        return 429, str(error)
    if isinstance(error, StoreFull):
        return 507, str(error)
    if isinstance(error, StoreUnavailable):
        return 500, "storage back end unavailable"
    log.failure("unexpected error handling a request", failure)
    return 500, "internal error"


def read_body(request: Request, cap: int) -> bytes:
    """The request's body; 413 if over `cap` (CappedRequest refuses most such bodies before
    they arrive; this covers a site with a larger cap than the endpoint's)."""
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    body = content.read(cap + 1)
    if len(body) > cap:
        raise HTTPError(413, "request body too large")
    return body


@attrs.frozen
class Replies(Generic[T]):
    """How one API writes its answers: `ok(request, result)` and
    `error(request, status, detail)` set status, headers and body (not finish)."""

    ok: Callable[[Request, T], bytes]
    error: Callable[[Request, int, str], bytes]


def serve(request: Request, work: Callable[[bytes], Awaitable[tuple[T, str]]], *,
          endpoint: str, max_body: int, replies: Replies[T], logger: Logger = log,
          cancel_on_disconnect: bool = False) -> object:
    """Run work(body) -> (result, what to log) and finish the request with its outcome.

    With cancel_on_disconnect a client that goes away cancels the work at once (a
    long-poll and its timers); without it, the work runs to its end (a store update must
    not stop half way) and its answer is dropped.
    """
    started = time.monotonic()
    # The site's metrics (relay.admin.requests.RequestStats), if it keeps any.
    stats = getattr(getattr(request, "site", None), "request_stats", None)
    finished: list = []
    request.notifyFinish().addBoth(finished.append)

    try:
        d = Deferred.fromCoroutine(work(read_body(request, max_body)))
    except HTTPError:
        d = fail()
    if cancel_on_disconnect and not d.called:
        request.notifyFinish().addErrback(lambda _: d.cancel())

    def succeeded(outcome: tuple[T, str]) -> None:
        result, detail = outcome
        if not finished:
            _finish(request, replies.ok(request, result))
        _log(logger, endpoint, 200, detail, started, stats)

    def failed(failure: Failure) -> None:
        if finished and failure.check(CancelledError):
            _log(logger, endpoint, 499, "client went away", started, stats)
            return
        status, detail = error_status(failure)
        if not finished:
            request.setResponseCode(status)
            _finish(request, replies.error(request, status, detail))
        _log(logger, endpoint, status, detail, started, stats)

    d.addCallbacks(succeeded, failed)
    return NOT_DONE_YET


def _finish(request: Request, body: bytes) -> None:
    set_common_headers(request)
    request.setHeader(b"Content-Length", str(len(body)).encode())
    request.write(body)
    request.finish()


def _log(logger: Logger, endpoint: str, status: int, detail: str, started: float,
         stats: Any = None) -> None:
    seconds = time.monotonic() - started
    logger.info("{endpoint} {status} {detail} {ms:.1f}ms", endpoint=endpoint, status=status,
                detail=detail, ms=1000 * seconds)
    if stats is not None:
        stats.observe(endpoint, status, seconds, detail)


def text_replies(content_type: bytes = b"text/plain") -> Replies[bytes]:
    """Zax's format: the body as is; errors with an empty body and X-Error-Details."""

    def ok(request: Request, body: bytes) -> bytes:
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", content_type)
        return body

    def error(request: Request, status: int, detail: str) -> bytes:
        request.setHeader(b"X-Error-Details", detail.encode("ascii", "replace"))
        request.setHeader(b"Content-Type", content_type)
        return b""

    return Replies(ok, error)
