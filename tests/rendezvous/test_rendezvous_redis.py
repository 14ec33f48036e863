"""Two relay processes sharing one Redis: A joins through node 1, B through node 2, both
staple on the owner (node 1) and the transfer completes. Plus the Redis channel store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from redis_server import RedisServer
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults

from relay.config import StoreConfig
from relay.store.errors import StoreFull
from relay.store.redis import RedisBackend
from relay.store.redis.channels import RedisChannelStore

HERE = Path(__file__).parent
A, B = "127.0.0.2", "127.0.0.3"


@pytest.fixture(scope="module")
def redis():
    with RedisServer.running() as server:
        yield server


def start_node_process(url: str) -> tuple[subprocess.Popen, int, int]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent.parent)])}
    process = subprocess.Popen([sys.executable, str(HERE / "rendezvous_node.py"), url],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    line = process.stdout.readline().split()
    if line[:1] != [b"ports"]:
        process.kill()
        process.wait()
        raise RuntimeError("the node did not start")
    return process, int(line[1]), int(line[2])


@pytest_twisted.ensureDeferred
async def test_redis_channel_store(redis):
    backend = RedisBackend(StoreConfig(url=redis.url), reactor)
    service = backend.make_service()
    service.startService()
    try:
        store = RedisChannelStore(backend)
        assert await store.create("abcd1111", b"one", 5, 2)
        assert not await store.create("abcd1111", b"two", 5, 2)
        assert await store.load("abcd1111") == (b"one", 1)
        assert not await store.replace("abcd1111", 2, b"x", 5)
        assert await store.replace("abcd1111", 1, b"two", 5)
        assert await store.load("abcd1111") == (b"two", 2)
        assert await store.create("abcd2222", b"one", 5, 2)
        with pytest.raises(StoreFull):
            await store.create("abcd3333", b"one", 5, 2)
        assert await store.replace("abcd2222", 1, b"gone", 0)  # deleted: frees a slot
        assert await store.load("abcd2222") is None
        assert await store.create("abcd3333", b"one", 5, 2)
        assert [await store.count_hit("join:127.0.0.1", 60) for _ in range(3)] == [1, 2, 3]
        assert all(int(redis.command("PTTL", k)) > 0 for k in redis.keys())
    finally:
        await service.stopService()
        redis.flush()


@pytest_twisted.ensureDeferred
async def test_two_nodes_one_redis(redis):
    from test_rendezvous_e2e import Pump

    from relay.client.live.rendezvous import connect_recipient
    from relay.client.live.session import start_live_send

    processes = []
    try:
        node1, http1, staple1 = start_node_process(redis.url)
        processes.append(node1)
        node2, http2, staple2 = start_node_process(redis.url)
        processes.append(node2)
        start = await start_live_send(reactor, f"http://127.0.0.1:{http1}", bind_host=A)
        assert start.joined.staple == f"127.0.0.1:{staple1}"
        sender_d = Deferred.fromCoroutine(start.connect(timeout=30))
        recipient = await connect_recipient(reactor, f"http://127.0.0.1:{http2}", start.code,
                                            timeout=30, bind_host=B)
        sender = await sender_d
        assert sender.keys.send_key == recipient.keys.receive_key
        total = 10 * 1000 * 1000
        ps, pr = Pump(total, b"s"), Pump(total, b"r")
        sender.hand_off(ps)
        recipient.hand_off(pr)
        await gatherResults([ps.done, pr.done])
        assert pr.got_hash.digest() == ps.sent_hash.digest()
        assert ps.got_hash.digest() == pr.sent_hash.digest()
    finally:
        for process in processes:
            process.kill()
            process.wait()
        redis.flush()
