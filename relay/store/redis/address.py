"""Parse the store URL into what the Redis connection pool needs.

Accepted forms (user and password are percent-decoded; db defaults to 0):
    redis://[[user]:password@]host[:port][/db]        port defaults to 6379
    unix://[[user]:password@]/path/to/redis.sock[?db=N]
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

import attrs

from relay.config import ConfigError

DEFAULT_PORT = 6379


@attrs.frozen
class RedisAddress:
    host: str | None = None
    port: int = DEFAULT_PORT
    # Set for unix:// URLs (host is then None).
    socket_path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)


def _db_number(text: str, url_kind: str) -> int:
    if not text.isdigit():
        raise ConfigError(f"the {url_kind} store url has a bad database number {text!r}")
    return int(text)


def parse_redis_url(url: str) -> RedisAddress:
    """The address in a redis:// or unix:// URL, or ConfigError with a one-line reason."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"the store url is malformed: {e}") from None
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    query = parse_qs(parts.query)
    db_values = query.get("db", [])
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigError("a unix:// store url needs a socket path")
        db = _db_number(db_values[-1], "unix://") if db_values else 0
        return RedisAddress(socket_path=parts.path, db=db, username=username,
                            password=password)
    if parts.scheme != "redis":
        raise ConfigError(f"the store url must start with redis:// or unix://, not {url[:16]!r}")
    if not parts.hostname:
        raise ConfigError("a redis:// store url needs a host")
    path = parts.path.strip("/")
    if path:
        db = _db_number(path, "redis://")
    elif db_values:
        db = _db_number(db_values[-1], "redis://")
    else:
        db = 0
    return RedisAddress(host=parts.hostname, port=port or DEFAULT_PORT, db=db,
                        username=username, password=password)
