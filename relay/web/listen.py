"""Listening services that bind before twistd drops privileges, and fail in one line.

twistd calls privilegedStartService as root (for `--uid` after binding a low port), then
startService as the relay's user. A listener that cannot bind must stop the relay at once:
a relay serving HTTP without its staple listener would hand out staple addresses that lead
nowhere. The failure is one line (which endpoint, why), not a traceback.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger(namespace="relay")


class ListenError(Exception):
    """A listener could not bind; the message is one line for the operator."""


class ListeningService(Service):
    """Listens on a Twisted endpoint string with `factory`; knows its port once bound."""

    def __init__(self, what: str, endpoint: str, factory: Any, reactor: Any) -> None:
        self.what = what
        self.endpoint = endpoint
        self.factory = factory
        self.reactor = reactor
        self.port: Any = None
        self._binding = False
        self._waiters: list[Deferred] = []

    def port_number(self) -> int | None:
        return None if self.port is None else self.port.getHost().port

    def when_listening(self) -> Deferred:
        """Fires with the listening port (at once if listening already)."""
        if self.port is not None:
            return succeed(self.port)
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        failure = self._bind()
        if failure is not None:
            raise ListenError(self._explain(failure))

    def startService(self) -> None:
        super().startService()
        if not self._binding:  # started without privilegedStartService (tests, tools)
            failure = self._bind()
            if failure is not None:
                log.error("{message}", message=self._explain(failure))

    def _bind(self) -> Failure | None:
        """Listen; the failure if binding failed at once (TCP, UNIX: always at once)."""
        self._binding = True
        failed: list[Failure] = []
        try:
            d = serverFromString(self.reactor, self.endpoint).listen(self.factory)
        except Exception:  # noqa: BLE001 - a malformed endpoint string
            d = Deferred()
            d.errback()

        def listening(port: Any) -> None:
            self.port = port
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(port)

        def failure(reason: Failure) -> None:
            failed.append(reason)
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.errback(reason)

        d.addCallbacks(listening, failure)
        return failed[0] if failed else None

    def _explain(self, failure: Failure) -> str:
        error = failure.value
        if isinstance(error, CannotListenError) and error.socketError is not None:
            reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
        else:
            reason = str(error) or type(error).__name__
        return f"cannot listen for {self.what} on {self.endpoint}: {reason}"

    def stopService(self) -> Deferred | None:
        super().stopService()
        self._binding = False
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None


def report_in_one_line(error: ListenError) -> None:
    """Make the coming uncaught ListenError print as one line instead of a traceback
    (twistd lets it escape after writing it to a daemon's status pipe)."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if value is error:
            print(f"relay: {error}", file=sys.stderr, flush=True)
        else:
            previous(kind, value, tb)

    sys.excepthook = hook
