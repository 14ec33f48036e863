"""The relay on Redis, as a real process: nothing acknowledged is lost to a kill -9, and a
Redis outage means fast 500s, then service again by itself."""

from __future__ import annotations

import concurrent.futures
import time

import pytest

from relay.crypto import b64encode
from tests.redis_server import RedisServer
from tests.relay_process import RelayProcess
from tests.zax import ZaxClient


@pytest.fixture
def redis():
    with RedisServer.running() as server:
        yield server


@pytest.fixture
def relay_on(tmp_path):
    started: list[RelayProcess] = []

    def start(redis: RedisServer, *extra: str) -> RelayProcess:
        relay = RelayProcess(tmp_path, ["--store", redis.url, "--no-files", *extra])
        relay.start()
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.kill()


def test_kill_9_loses_no_acknowledged_message(redis, relay_on):
    relay = relay_on(redis)
    alice = ZaxClient(relay.post, time.time)
    bob = ZaxClient(relay.post, time.time)
    alice.connect(), bob.connect()
    sent = []
    for i in range(40):
        status, _, msg_id = alice.upload(bob, b"message %d" % i)
        assert status == 200
        sent.append(msg_id)
    relay.kill()  # SIGKILL: no shutdown hooks run

    relay.start()
    # The sessions survived too (they live in Redis), but a fresh session must work as well.
    assert bob.command({"cmd": "count"})[0] == 200
    bob2 = ZaxClient(relay.post, time.time, identity=bob.identity)
    assert bob2.connect() == 40
    received = [m["nonce"] for m in bob2.open(bob2.command({"cmd": "download"})[1])]
    assert received == [b64encode(i) for i in sent]


def test_redis_outage_is_fast_500s_then_recovery(redis, relay_on, tmp_path):
    config = tmp_path / "relay.toml"
    config.write_text("[store]\noperation_timeout = 1.0\n")
    relay = relay_on(redis, "--config", str(config))
    alice = ZaxClient(relay.post, time.time)
    alice.connect()

    redis.stop()
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(lambda _: ZaxClient(relay.post, time.time).start()[0],
                                 range(40)))
    elapsed = time.monotonic() - started
    assert set(statuses) == {500}
    # 40 requests over 20 connections, each bounded by the 1 s operation timeout.
    assert elapsed < 2 * 1.0 + 3, elapsed

    redis.start()  # same port
    deadline = time.monotonic() + 15
    while True:
        status = ZaxClient(relay.post, time.time).start()[0]
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status == 200
    fresh = ZaxClient(relay.post, time.time)
    assert fresh.connect() == 0
    assert relay.process is not None and relay.process.poll() is None
    assert "Traceback" not in relay.log()


def test_frozen_redis_answers_500_within_the_timeout(redis, relay_on, tmp_path):
    config = tmp_path / "relay.toml"
    config.write_text("[store]\noperation_timeout = 0.5\n")
    relay = relay_on(redis, "--config", str(config))
    redis.pause()  # connections stay open; nothing is answered
    try:
        started = time.monotonic()
        assert ZaxClient(relay.post, time.time).start()[0] == 500
        assert time.monotonic() - started < 0.5 + 1.5
    finally:
        redis.resume()
    deadline = time.monotonic() + 10
    while ZaxClient(relay.post, time.time).start()[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)
