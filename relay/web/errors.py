"""An exception that carries the HTTP status a request should end with."""

from __future__ import annotations


class HTTPError(Exception):
    def __init__(self, status: int, details: str) -> None:
        super().__init__(details)
        self.status = status
        self.details = details


def bad_request(details: str) -> HTTPError:
    return HTTPError(400, details)


def unauthorized(details: str) -> HTTPError:
    return HTTPError(401, details)
