"""Redis's memory, seen from the relay: the eviction policy check and the upload headroom.

Eviction policy: with any maxmemory-policy but noeviction, Redis at its maxmemory silently
drops keys, among them claimed nonces (a captured /command replays with 200) and messages
whose upload was acknowledged. So every connection is checked before the pool uses it
(`eviction_refusal`): CONFIG GET maxmemory-policy, or INFO memory's maxmemory_policy where
CONFIG is disabled or renamed. An evicting policy refuses the connection, and the service
stops the relay with one line, unless `[store] allow_evicting_redis` is true.

Headroom (`RedisMemory`): INFO memory is read every `redis_memory_poll_interval` seconds;
client data writes (message uploads; file chunks may use it too) are refused with StoreFull
(HTTP 507) once used_memory, plus what this process wrote since the last reading, would pass
`redis_memory_ratio` of maxmemory (or `redis_max_bytes`). What stays free keeps nonce claims,
sessions, handshakes and deletes working: Redis itself never reaches maxmemory through us.
"""

from __future__ import annotations

from typing import Any

import txredisapi
from twisted.logger import Logger

from relay.config import StoreConfig
from relay.store.errors import StoreError, StoreFull

NO_EVICTION = "noeviction"

log = Logger(namespace="relay.store")


def parse_info(reply: bytes | str) -> dict[str, str]:
    """The `field:value` lines of an INFO reply."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    fields = {}
    for line in text.splitlines():
        name, colon, value = line.partition(":")
        if colon and not name.startswith("#"):
            fields[name.strip()] = value.strip()
    return fields


async def read_eviction_policy(connection: Any) -> str | None:
    """The server's maxmemory-policy, or None if neither CONFIG nor INFO tells it."""
    try:
        reply = await connection.execute_command("CONFIG", "GET", "maxmemory-policy")
        if isinstance(reply, list) and len(reply) == 2:
            value = reply[1]
            return value.decode() if isinstance(value, bytes) else str(value)
    except txredisapi.ResponseError:
        pass  # CONFIG is disabled or renamed (common on managed Redis): INFO tells it too
    try:
        info = parse_info(await connection.execute_command("INFO", "memory"))
    except txredisapi.ResponseError:
        return None
    return info.get("maxmemory_policy")


def eviction_refusal(policy: str | None, allow_evicting: bool) -> str | None:
    """Why the relay must not use a Redis with this policy (one line), or None."""
    if policy is None or policy == NO_EVICTION or allow_evicting:
        return None
    return (f"Redis's maxmemory-policy is {policy}: evicting keys lets replayed commands "
            "through and loses acknowledged messages; set maxmemory-policy noeviction "
            "(or [store] allow_evicting_redis = true to run anyway)")


class RedisMemory:
    """The last INFO memory reading and the refusal of writes near maxmemory."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.used: int | None = None  # used_memory at the last reading
        self.maxmemory = 0
        self.policy: str | None = None
        # Client data this process wrote since the last reading (an estimate on top of it).
        self.written_since_reading = 0
        self._warned_unlimited = False
        self._warned_policy: str | None = None

    @property
    def limit(self) -> int | None:
        """used_memory at which writes of client data are refused; None: no limit known."""
        limits = []
        if self.config.redis_max_bytes:
            limits.append(self.config.redis_max_bytes)
        if self.maxmemory:
            limits.append(int(self.maxmemory * self.config.redis_memory_ratio))
        return min(limits) if limits else None

    def check(self, size: int) -> None:
        """Raise StoreFull if writing size more bytes of client data would pass the limit."""
        limit = self.limit
        if limit is None or self.used is None:
            return
        if self.used + self.written_since_reading + size > limit:
            raise StoreFull("the relay's Redis store is full")

    def written(self, size: int) -> None:
        self.written_since_reading += size

    def update(self, info: dict[str, str]) -> None:
        try:
            self.used = int(info["used_memory"])
            self.maxmemory = int(info.get("maxmemory", "0"))
        except (KeyError, ValueError):
            return
        self.written_since_reading = 0
        self.policy = info.get("maxmemory_policy", self.policy)
        if self.limit is None and not self._warned_unlimited:
            self._warned_unlimited = True
            log.warn("Redis has no maxmemory and [store] redis_max_bytes is 0: nothing stops "
                     "it from growing until the system runs out of memory")
        if (self.policy not in (None, NO_EVICTION, self._warned_policy)
                and not self.config.allow_evicting_redis):
            self._warned_policy = self.policy
            log.critical("Redis's maxmemory-policy changed to {policy} while the relay runs: "
                         "replay protection and acknowledged messages are at risk",
                         policy=self.policy)

    async def poll(self, backend: Any) -> None:
        """Read INFO memory through the backend; failures keep the last reading."""
        try:
            reply = await backend.run(lambda redis: redis.execute_command("INFO", "memory"))
        except StoreError:
            return
        self.update(parse_info(reply))

    def usage(self) -> dict[str, Any]:
        return {"used_bytes": self.used, "limit_bytes": self.limit,
                "maxmemory": self.maxmemory, "policy": self.policy}
