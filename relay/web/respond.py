"""Running a coroutine per request and ending it with a status, logged without secrets."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from relay.store.errors import StoreFull, StoreUnavailable
from relay.web.errors import HTTPError

log = Logger(namespace="relay.http")


def set_common_headers(request: Request) -> None:
    request.setHeader(b"Access-Control-Allow-Origin", b"*")
    request.setHeader(b"Access-Control-Expose-Headers", b"X-Error-Details")


def error_status(failure: Failure) -> tuple[int, str]:
    """The status and detail for an exception; unexpected ones are logged in full."""
    error = failure.value
    if isinstance(error, HTTPError):
        return error.status, error.details
    if isinstance(error, StoreFull):
        return 507, str(error)
    if isinstance(error, StoreUnavailable):
        return 500, "storage back end unavailable"
    log.failure("unexpected error handling a request", failure)
    return 500, "internal error"


def respond_later(request: Request, work: Callable[[], Awaitable[tuple[bytes, str]]],
                  endpoint: str, content_type: bytes = b"text/plain") -> object:
    """Run work() (returning (body, log detail)); finish the request with its outcome.

    Errors end with an empty body and an X-Error-Details header, as Zax clients expect.
    """
    started = time.monotonic()
    finished = []
    request.notifyFinish().addBoth(finished.append)

    def succeeded(result: tuple[bytes, str]) -> None:
        body, detail = result
        _finish(request, finished, 200, body, content_type)
        _log(endpoint, 200, detail, started)

    def failed(failure: Failure) -> None:
        status, detail = error_status(failure)
        request.setHeader(b"X-Error-Details", detail.encode("ascii", "replace"))
        _finish(request, finished, status, b"", content_type)
        _log(endpoint, status, detail, started)

    Deferred.fromCoroutine(work()).addCallbacks(succeeded, failed)
    return NOT_DONE_YET


def _finish(request: Request, finished: list, status: int, body: bytes,
            content_type: bytes) -> None:
    if finished:  # the client went away; there is no one to answer
        return
    request.setResponseCode(status)
    set_common_headers(request)
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Content-Length", str(len(body)).encode())
    request.write(body)
    request.finish()


def _log(endpoint: str, status: int, detail: str, started: float) -> None:
    log.info("{endpoint} {status} {detail} {ms:.1f}ms", endpoint=endpoint, status=status,
             detail=detail, ms=1000 * (time.monotonic() - started))
