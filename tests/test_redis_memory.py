"""Redis's memory: evicting policies are refused, uploads stop (507) before maxmemory while
reads, deletes and nonce claims go on, and even a Redis at maxmemory never accepts a replay.

In-process stores against redis-servers of their own, and real `twistd relay` processes."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from relay.config import MailboxConfig, RelayConfig, StoreConfig
from relay.store import open_store
from relay.store.errors import StoreFull, StoreUnavailable
from relay.store.interfaces.sessions import Session
from relay.store.quota import MessageQuota
from relay.store.redis.memory import RedisMemory, eviction_refusal, parse_info
from tests.redis_server import RedisServer
from tests.relay_process import RelayProcess, twistd_command
from tests.zax import ZaxClient

LONG_TTL = 3600.0
POLL = 0.05
# Small enough to fill in a second, big enough for Redis's own start-up memory (about 1 MB).
MAXMEMORY = 6_000_000
QUOTA = MessageQuota.from_config(MailboxConfig())


# -- units ------------------------------------------------------------------------------------


def test_parse_info():
    reply = b"# Memory\r\nused_memory:1000\r\nmaxmemory:0\r\nmaxmemory_policy:noeviction\r\n"
    assert parse_info(reply) == {"used_memory": "1000", "maxmemory": "0",
                                 "maxmemory_policy": "noeviction"}


@pytest.mark.parametrize("policy, allowed, refused", [
    ("noeviction", False, False), (None, False, False), ("allkeys-lru", False, True),
    ("volatile-ttl", False, True), ("allkeys-lru", True, False)])
def test_eviction_refusal(policy, allowed, refused):
    reason = eviction_refusal(policy, allowed)
    assert (reason is not None) == refused
    if reason:
        assert policy in reason and "noeviction" in reason and "\n" not in reason


def test_memory_limit_from_maxmemory_and_own_cap():
    memory = RedisMemory(StoreConfig(url="redis://h", redis_memory_ratio=0.5))
    memory.check(10**12)  # nothing read yet: no limit known
    memory.update({"used_memory": "100", "maxmemory": "1000"})
    assert memory.limit == 500
    memory.check(400)
    memory.written(300)
    with pytest.raises(StoreFull):
        memory.check(101)
    memory.update({"used_memory": "100", "maxmemory": "1000"})  # a new reading
    memory.check(400)
    capped = RedisMemory(StoreConfig(url="redis://h", redis_max_bytes=300))
    capped.update({"used_memory": "100", "maxmemory": "0"})
    assert capped.limit == 300
    assert capped.usage()["limit_bytes"] == 300


# -- in-process stores ------------------------------------------------------------------------


async def started(server: RedisServer, **settings):
    config = StoreConfig(url=server.url, redis_memory_poll_interval=POLL, **settings)
    store = open_store(RelayConfig(store=config), reactor)
    reasons: list[str] = []
    store.service.on_refused = lambda reason, clock: reasons.append(reason)
    store.service.startService()
    return store, reasons


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await deferLater(reactor, 0.02)


@pytest.mark.parametrize("extra_args", [(), ("--rename-command", "CONFIG", "")],
                         ids=["config", "info"])
@pytest_twisted.ensureDeferred
async def test_an_evicting_redis_is_refused(extra_args):
    with RedisServer.running(policy="allkeys-lru", extra_args=extra_args) as server:
        store, reasons = await started(server)
        try:
            await until(lambda: reasons)
            assert len(reasons) == 1 and "allkeys-lru" in reasons[0]
            with pytest.raises(StoreUnavailable, match="allkeys-lru"):
                await store.mailbox.count(os.urandom(32))
        finally:
            await store.service.stopService()


@pytest_twisted.ensureDeferred
async def test_an_evicting_redis_can_be_allowed():
    with RedisServer.running(policy="allkeys-lru") as server:
        store, reasons = await started(server, allow_evicting_redis=True)
        try:
            assert await store.mailbox.count(os.urandom(32)) == 0
            assert reasons == []
        finally:
            await store.service.stopService()


async def fill(store, hpk: bytes, size: int = 50_000) -> tuple[list[bytes], StoreFull]:
    """Upload until refused; the ids stored and the refusal."""
    ids = []
    for _ in range(1000):
        msg_id = os.urandom(24)
        try:
            await store.mailbox.store_message(hpk, msg_id, os.urandom(size), os.urandom(32),
                                              LONG_TTL, 10_000)
        except StoreFull as refusal:
            return ids, refusal
        ids.append(msg_id)
    raise AssertionError("never refused")


@pytest_twisted.ensureDeferred
async def test_uploads_stop_before_maxmemory_and_the_rest_goes_on():
    with RedisServer.running(maxmemory=MAXMEMORY, policy="noeviction") as server:
        store, _ = await started(server)
        try:
            hpk = os.urandom(32)
            await until(lambda: store.usage()["limit_bytes"] is not None)
            assert store.usage()["limit_bytes"] == int(MAXMEMORY * 0.85)
            ids, refusal = await fill(store, hpk)
            assert "Redis store is full" in str(refusal) and len(ids) > 20
            assert int(server.info()["used_memory"]) < MAXMEMORY * 0.9
            # Everything but uploads still works: sessions, nonce claims, reads, deletes.
            session = Session(os.urandom(32), os.urandom(32))
            await store.sessions.put_session(hpk, session, LONG_TTL)
            nonce = os.urandom(24)
            assert await store.sessions.get_session_claiming_nonce(hpk, nonce, 60) == \
                (session, True)
            assert await store.mailbox.count(hpk) == len(ids)
            assert len(await store.mailbox.read(hpk, 0, 5)) == 5
            assert await store.mailbox.delete(hpk, ids[:20]) == len(ids) - 20
            # Recovery: the next reading sees the freed memory.
            await deferLater(reactor, 4 * POLL)
            await store.mailbox.store_message(hpk, os.urandom(24), b"again", os.urandom(32),
                                              LONG_TTL, 10_000)
        finally:
            await store.service.stopService()


@pytest_twisted.ensureDeferred
async def test_at_maxmemory_claims_land_replays_fail_and_deletes_free_space():
    with RedisServer.running(maxmemory=MAXMEMORY, policy="noeviction") as server:
        # No headroom of the relay's own: Redis itself says OOM.
        store, _ = await started(server, redis_memory_ratio=1.0)
        try:
            hpk = os.urandom(32)
            session = Session(os.urandom(32), os.urandom(32))
            await store.sessions.put_session(hpk, session, LONG_TTL)
            ids, _ = await fill(store, hpk)
            # Firmly past maxmemory (as if someone else had filled Redis).
            used = int(server.info()["used_memory"])
            server.command("CONFIG", "SET", "maxmemory", used - 200_000)
            with pytest.raises(StoreFull):
                await store.mailbox.store_message(hpk, os.urandom(24), b"r", os.urandom(32),
                                                  LONG_TTL, 10_000)
            nonce = os.urandom(24)
            assert await store.sessions.get_session_claiming_nonce(hpk, nonce, 60) == \
                (session, True)
            assert await store.sessions.get_session_claiming_nonce(hpk, nonce, 60) == \
                (session, False)
            assert await store.mailbox.count(hpk) == len(ids)
            assert await store.mailbox.delete(hpk, ids) == 0
            # The relay's own check goes by its last INFO reading: the next one sees the space.
            await until(lambda: store.usage()["used_bytes"] < used - 1_000_000)
            await store.mailbox.store_message(hpk, os.urandom(24), b"r", os.urandom(32),
                                              LONG_TTL, 10_000)
        finally:
            await store.service.stopService()


# -- real relays ------------------------------------------------------------------------------


def test_twistd_exits_with_one_line_on_an_evicting_redis(tmp_path):
    with RedisServer.running(policy="allkeys-lru") as server:
        result = subprocess.run(
            [*twistd_command(), "-n", "--pidfile=", "relay", "--port",
             "tcp:0:interface=127.0.0.1", "--no-rendezvous", "--no-files", "--store",
             server.url], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert output.count("maxmemory-policy is allkeys-lru") == 1, output
    assert "Traceback" not in output


@pytest.fixture
def small_redis():
    with RedisServer.running(maxmemory=MAXMEMORY, policy="noeviction") as server:
        yield server


def test_real_relay_on_a_small_redis_answers_507_then_recovers(small_redis, tmp_path):
    config = tmp_path / "relay.toml"
    config.write_text(f"[store]\nredis_memory_poll_interval = {POLL}\n")
    relay = RelayProcess(tmp_path, ["--store", small_redis.url, "--no-files",
                                    "--config", str(config)])
    relay.start()
    try:
        alice, bob = ZaxClient(relay.post, time.time), ZaxClient(relay.post, time.time)
        alice.connect(), bob.connect()
        sent, tokens, status = [], [], 200
        for _ in range(200):
            status, token, msg_id = alice.upload(bob, os.urandom(100_000))
            if status != 200:
                break
            sent.append(msg_id), tokens.append(token)
        assert status == 507 and len(sent) > 10
        status, body = alice.command({"cmd": "messageStatus", "token": tokens[0].decode()})
        assert status == 200 and int(body) > 0
        # Reads, deletes and new sessions go on.
        carol = ZaxClient(relay.post, time.time)
        assert carol.connect() == 0
        assert bob.command({"cmd": "count"})[0] == 200
        status, body = bob.command({"cmd": "download", "count": 2})
        assert status == 200 and len(bob.open(body)) == 2
        status, body = bob.command({"cmd": "delete", "payload": [
            m["nonce"] for m in bob.open(bob.command({"cmd": "download"})[1])]})
        assert status == 200
        time.sleep(5 * POLL)
        assert alice.upload(bob, os.urandom(100_000))[0] == 200
        assert "Traceback" not in relay.log()
    finally:
        relay.kill()
