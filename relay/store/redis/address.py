"""Parse the store URL into what the Redis connection pool needs.

Accepted forms (user and password are percent-decoded; db defaults to 0):
    redis://[[user]:password@]host[:port][/db]        port defaults to 6379
    unix://[[user]:password@]/path/to/redis.sock[?db=N]
    redis+sentinel://[[user]:password@]host[:port],host[:port],.../master_name[/db][?db=N]
        Sentinels (port 26379 by default; IPv6 hosts in brackets) and the name of the master
        they watch; user and password are the Redis master's (a password of the sentinels'
        own is [store] redis_sentinel_password). The relay asks the sentinels where the
        master is before every connection (relay.store.redis.sentinel).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote, urlsplit

import attrs

from relay.config import ConfigError

DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
SENTINEL_SCHEME = "redis+sentinel"


@attrs.frozen
class RedisAddress:
    host: str | None = None
    port: int = DEFAULT_PORT
    # Set for unix:// URLs (host is then None).
    socket_path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    # Set for redis+sentinel:// URLs (host is then None): where the sentinels listen and the
    # name of the master they watch.
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str | None = None


def _db_number(text: str, url_kind: str) -> int:
    if not text.isdigit():
        raise ConfigError(f"the {url_kind} store url has a bad database number {text!r}")
    return int(text)


def parse_redis_url(url: str) -> RedisAddress:
    """The address in a redis://, unix:// or redis+sentinel:// URL, or ConfigError with a
    one-line reason."""
    if url.startswith(SENTINEL_SCHEME + "://"):
        return _parse_sentinel_url(url)
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
        raise ConfigError("the store url must start with redis://, unix:// or "
                          f"redis+sentinel://, not {url[:16]!r}")
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


def _parse_sentinel_url(url: str) -> RedisAddress:
    # urlsplit cannot read a comma-separated host list as a port, so the netloc is split here.
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise ConfigError(f"the store url is malformed: {e}") from None
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_sentinel_host(host) for host in hosts.split(","))
    names = [part for part in parts.path.split("/") if part]
    if not names:
        raise ConfigError("a redis+sentinel:// store url needs the master's name: "
                          "redis+sentinel://host:26379,host:26379/mymaster")
    if len(names) > 2:
        raise ConfigError("a redis+sentinel:// store url's path is /master_name[/db]")
    db_values = parse_qs(parts.query).get("db", [])
    if len(names) == 2:
        db = _db_number(names[1], "redis+sentinel://")
    elif db_values:
        db = _db_number(db_values[-1], "redis+sentinel://")
    else:
        db = 0
    return RedisAddress(db=db, username=username, password=password, sentinels=sentinels,
                        master_name=unquote(names[0]))


_HOST_PORT = re.compile(r"^(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]+))(?::(?P<port>\d+))?$")


def _sentinel_host(text: str) -> tuple[str, int]:
    match = _HOST_PORT.match(text)
    if match is None:
        raise ConfigError(f"a redis+sentinel:// store url has a bad sentinel address {text!r}")
    port = int(match["port"]) if match["port"] else DEFAULT_SENTINEL_PORT
    if not 0 < port < 65536:
        raise ConfigError(f"a redis+sentinel:// store url has a bad sentinel port {text!r}")
    return match["ipv6"] or match["host"], port
