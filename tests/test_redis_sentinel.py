"""Redis Sentinel and WAIT: redis+sentinel:// URLs, and a real failover under traffic.

The failover test runs real processes: a primary, a replica, three sentinels (short
down-after and failover timeouts), and two `twistd relay` processes on them, one without
WAIT and one with `redis_wait_replicas = 1`, both under upload traffic while the primary is
killed. Each answers only 200 or 500 throughout, and serves again by itself; the one with
WAIT has lost no message it acknowledged.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.protocols.basic import LineReceiver

from relay.config import ConfigError, StoreConfig, load_config
from relay.crypto import b64encode
from relay.store.errors import StoreUnavailable
from relay.store.redis import RedisBackend
from relay.store.redis.address import parse_redis_url
from relay.store.redis.sentinel import SentinelEndpoint
from tests.redis_server import RedisServer, ReplicatedRedis
from tests.relay_process import RelayProcess, free_port
from tests.test_files_support import AsyncZax, LoopbackRelay, SealedFile
from tests.zax import ZaxClient

# -- the URL ---------------------------------------------------------------------------------


def test_sentinel_url_forms():
    address = parse_redis_url(
        "redis+sentinel://:s%40cret@10.0.0.1:26380,sentinel-b,[2001:db8::1]:26381/relay?db=3")
    assert address.sentinels == (("10.0.0.1", 26380), ("sentinel-b", 26379),
                                 ("2001:db8::1", 26381))
    assert (address.master_name, address.db, address.password) == ("relay", 3, "s@cret")
    assert address.host is None and address.socket_path is None
    assert parse_redis_url("redis+sentinel://h/m/2").db == 2
    assert StoreConfig(url="redis+sentinel://h/m").url.startswith("redis+sentinel")


@pytest.mark.parametrize("url", [
    "redis+sentinel://h1,h2",              # no master name
    "redis+sentinel://h1/",                # no master name
    "redis+sentinel://h1,,h2/m",           # an empty sentinel
    "redis+sentinel://h1:0/m",             # bad port
    "redis+sentinel://h1:99999/m",
    "redis+sentinel://h1:x/m",
    "redis+sentinel://h1/m/zero",          # bad db
    "redis+sentinel://h1/m/0/extra",
])
def test_bad_sentinel_urls_are_one_line_config_errors(url):
    with pytest.raises(ConfigError) as refused:
        parse_redis_url(url)
    assert "\n" not in str(refused.value)


_host = st.one_of(
    st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"))


@given(st.lists(st.tuples(_host, st.integers(1, 65535)), min_size=1, max_size=5),
       st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True), st.integers(0, 15))
def test_sentinel_url_round_trip(sentinels, name, db):
    hosts = ",".join(f"{host}:{port}" for host, port in sentinels)
    address = parse_redis_url(f"redis+sentinel://{hosts}/{name}/{db}")
    assert address.sentinels == tuple((host.strip("[]"), port) for host, port in sentinels)
    assert (address.master_name, address.db) == (name, db)


@given(st.text(max_size=60))
def test_any_sentinel_url_parses_or_is_refused_cleanly(tail):
    try:
        parse_redis_url("redis+sentinel://" + tail)
    except ConfigError:
        pass


def test_wait_timeout_must_be_below_the_operation_timeout():
    with pytest.raises(ConfigError):
        StoreConfig(redis_wait_replicas=1, redis_wait_timeout=2.0, operation_timeout=2.0)
    StoreConfig(redis_wait_replicas=0, redis_wait_timeout=5.0)  # unused: not checked


# -- discovery, against fake sentinels -------------------------------------------------------


class FakeSentinel(LineReceiver):
    """Answers SENTINEL GET-MASTER-ADDR-BY-NAME with its factory's `master` (None: nil),
    AUTH with OK or an error; counts the questions."""

    delimiter = b"\r\n"

    def connectionMade(self) -> None:
        self.parts: list[bytes] = []
        self.expected = 0

    def lineReceived(self, line: bytes) -> None:
        if line.startswith(b"*"):
            self.expected, self.parts = int(line[1:]), []
            return
        if line.startswith(b"$"):
            return
        self.parts.append(line)
        if len(self.parts) == self.expected:
            self.answer([part.decode() for part in self.parts])

    def answer(self, command: list[str]) -> None:
        factory = self.factory
        if command[0].upper() == "AUTH":
            ok = command[-1] == factory.password
            self.transport.write(b"+OK\r\n" if ok else b"-WRONGPASS invalid password\r\n")
            return
        factory.questions += 1
        if factory.master is None:
            self.transport.write(b"*-1\r\n")
            return
        host, port = factory.master[0].encode(), str(factory.master[1]).encode()
        self.transport.write(b"*2\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
                             % (len(host), host, len(port), port))


class FakeSentinelFactory(Factory):
    protocol = FakeSentinel

    def __init__(self, master: tuple[str, int] | None, password: str | None = None) -> None:
        self.master = master
        self.password = password
        self.questions = 0


@pytest_twisted.ensureDeferred
async def test_discovery_asks_in_order_shares_answers_and_notices_a_new_master():
    ports, factories = [], []
    for master, password in ((None, "pw"), (("127.0.0.1", 1111), "pw"),
                             (("127.0.0.1", 2222), "pw")):
        factory = FakeSentinelFactory(master, password)
        factories.append(factory)
        ports.append(await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
                     .listen(factory))
    dead = free_port()
    try:
        addresses = [("127.0.0.1", dead)] + [("127.0.0.1", p.getHost().port) for p in ports]
        endpoint = SentinelEndpoint(reactor, addresses, "mymaster", timeout=2.0,
                                    password="pw")
        changes: list[tuple[str, int]] = []
        endpoint.on_master_changed = changes.append
        # Three at once share one discovery: the dead sentinel and the one that does not
        # know the master are passed over; the first that answers names the master.
        answers = await gatherResults([endpoint.discover() for _ in range(3)])
        assert answers == [("127.0.0.1", 1111)] * 3
        assert [f.questions for f in factories] == [1, 1, 0]
        # It is asked first from now on.
        factories[1].master = ("127.0.0.1", 3333)
        assert await endpoint.discover() == ("127.0.0.1", 3333)
        assert [f.questions for f in factories] == [1, 2, 0]
        assert changes == [("127.0.0.1", 3333)]
        # A wrong password is a sentinel that does not answer; none left: StoreUnavailable.
        factories[1].password = factories[2].password = "other"
        with pytest.raises(StoreUnavailable, match="no sentinel named"):
            await endpoint.discover()
        await endpoint.check()  # the timer's call never fails
    finally:
        for port in ports:
            await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_master_that_is_not_one_is_not_used():
    """The sentinels may name a server that is a replica (mid-failover): the backend's
    connections are refused until it is a master."""
    with RedisServer.running() as primary, RedisServer.running(replica_of=primary) as replica:
        factory = FakeSentinelFactory(("127.0.0.1", replica.port))
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        url = f"redis+sentinel://127.0.0.1:{port.getHost().port}/mymaster"
        backend = RedisBackend(StoreConfig(url=url, operation_timeout=0.5), reactor)
        service = backend.make_service()
        service.startService()
        try:
            await deferLater(reactor, 0.5, lambda: None)
            assert backend.pool.live_count == 0
            with pytest.raises(StoreUnavailable):
                await backend.run(lambda redis: redis.execute_command("PING"))
            replica.command("REPLICAOF", "NO", "ONE")  # promoted
            deadline = time.monotonic() + 10
            while backend.pool.live_count == 0:
                assert time.monotonic() < deadline
                await deferLater(reactor, 0.05, lambda: None)
            await backend.run(lambda redis: redis.execute_command("SET", "k", b"v", "PX", 9000))
            assert replica.command("GET", "k") == b"v"
            # Demoted again while connected: a write answered READONLY drops the connection.
            replica.command("REPLICAOF", "127.0.0.1", primary.port)
            with pytest.raises(StoreUnavailable):
                await backend.run(lambda redis: redis.execute_command("SET", "k", b"w"))
        finally:
            await service.stopService()
            await port.stopListening()


# -- WAIT ------------------------------------------------------------------------------------

_SET = "redis.call('SET', KEYS[1], ARGV[1], 'PX', 60000) return 1"


@pytest_twisted.ensureDeferred
async def test_replicated_writes_need_the_replicas_acknowledgement():
    with RedisServer.running() as primary:
        config = StoreConfig(url=primary.url, redis_wait_replicas=1, redis_wait_timeout=0.2)
        backend = RedisBackend(config, reactor)
        service = backend.make_service()
        service.startService()
        try:
            # No replica: a write that acknowledges client data is refused (HTTP 500)...
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="0 of 1"):
                await backend.script(_SET, [backend.key("a")], [b"1"], replicate=True)
            assert time.monotonic() - started < 0.2 + 1.0
            with pytest.raises(StoreUnavailable, match="0 of 1"):
                await backend.run(lambda redis: redis.execute_command(
                    "SET", backend.key("b"), b"1", "PX", 60000), replicate=True)
            # ... while other calls do not wait.
            assert await backend.script(_SET, [backend.key("c")], [b"1"]) == 1

            with RedisServer.running(replica_of=primary) as replica:
                deadline = time.monotonic() + 10
                while replica.info("replication").get("master_link_status") != "up":
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
                primary.command("SCRIPT", "FLUSH")  # the EVALSHA, NOSCRIPT, EVAL path too
                assert await backend.script(_SET, [backend.key("d")], [b"4"],
                                            replicate=True) == 1
                # Acknowledged means on the replica already (no waiting here).
                assert replica.command("GET", backend.key("d")) == b"4"
                await backend.run(lambda redis: redis.execute_command(
                    "SET", backend.key("e"), b"5", "PX", 60000), replicate=True)
                assert replica.command("GET", backend.key("e")) == b"5"
        finally:
            await service.stopService()


@pytest_twisted.ensureDeferred
async def test_the_relay_waits_for_a_replica_on_writes_that_acknowledge_client_data(tmp_path):
    """Through the HTTP API: /prove, uploads, file starts and chunks answer 500 while no
    replica acknowledges them; reads go on."""
    with RedisServer.running() as primary:
        config = load_config(overrides={
            "store": {"url": primary.url, "redis_wait_replicas": 1, "redis_wait_timeout": 0.1},
            "files": {"chunk_store": "store", "directory": str(tmp_path / "chunks")}})
        relay = LoopbackRelay(config)
        await relay.start()
        try:
            with RedisServer.running(replica_of=primary) as replica:
                deadline = time.monotonic() + 10
                while replica.info("replication").get("master_link_status") != "up":
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
                alice, bob = await relay.client(), await relay.client()
                upload_id = (await alice.start_upload(bob, 3000))["uploadID"]
                sealed = SealedFile(os.urandom(3000), 1000)
                command, chunk = sealed.command(upload_id, 0)
                assert await alice.enc(command, chunk) == {"status": "OK"}
            # The replica is gone.
            late = AsyncZax(relay.poster())
            with pytest.raises(AssertionError, match="500"):
                await late.connect()  # /prove stores the session: waited for
            status, _ = await alice.command({"cmd": "upload", "to": b64encode(bob.hpk),
                                             "payload": {"nonce": b64encode(os.urandom(24)),
                                                         "ctext": b64encode(b"x")}})
            assert status == 500
            assert (await alice.command({"cmd": "startFileUpload", "to": b64encode(bob.hpk),
                                         "file_size": 10, "metadata": {
                                             "nonce": b64encode(os.urandom(24)),
                                             "ctext": b64encode(b"m")}}))[0] == 500
            command, chunk = sealed.command(upload_id, 1)
            assert (await alice.command(command, chunk))[0] == 500
            # Reads do not wait.
            assert (await bob.command({"cmd": "count"}))[0] == 200
            assert await bob.download_chunk(upload_id, 0, sealed.key) == sealed.data[:1000]
        finally:
            await relay.stop()


# -- failover under traffic ------------------------------------------------------------------


class Traffic(threading.Thread):
    """Alice uploads to Bob through one relay, one message every few milliseconds; every
    answer is kept: (monotonic time, status, message id)."""

    def __init__(self, relay: RelayProcess) -> None:
        super().__init__(daemon=True)
        post = self.post = lambda path, body: relay.post(path, body, timeout=5.0)
        self.alice = ZaxClient(post, time.time)
        self.bob = ZaxClient(post, time.time)
        self.alice.connect(), self.bob.connect()
        self.results: list[tuple[float, int, bytes]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                status, _, msg_id = self.alice.upload(self.bob, b"x" * 64)
            except OSError:
                status, msg_id = 0, b""
            self.results.append((time.monotonic(), status, msg_id))
            self.stopping.wait(0.02)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=15)

    def since(self, moment: float) -> list[tuple[float, int, bytes]]:
        return [result for result in self.results if result[0] >= moment]

    def wait_for_200(self, after: float, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for moment, status, _ in self.since(after):
                if status == 200:
                    return moment
            time.sleep(0.05)
        raise AssertionError(f"no 200 within {timeout} s: {self.statuses(after)}")

    def statuses(self, after: float = 0.0) -> dict[int, int]:
        counts: dict[int, int] = {}
        for _, status, _ in self.since(after):
            counts[status] = counts.get(status, 0) + 1
        return counts

    def acknowledged(self) -> set[bytes]:
        return {msg_id for _, status, msg_id in self.results if status == 200}

    def delivered(self) -> set[bytes]:
        status, body = self.bob.command({"cmd": "download"})
        assert status == 200
        return {message["nonce"] for message in self.bob.open(body)}


@pytest.fixture
def replicated():
    # Short, but not so short that a loaded test machine looks like a dead primary.
    with ReplicatedRedis.running(down_after_ms=1000, failover_timeout_ms=2000) as group:
        yield group


@pytest.fixture
def relays(tmp_path):
    started: list[RelayProcess] = []

    def start(name: str, url: str, settings: str, staple: bool = False) -> RelayProcess:
        workdir = tmp_path / name
        workdir.mkdir()
        (workdir / "relay.toml").write_text(settings)
        relay = RelayProcess(workdir, ["--store", url, "--no-files",
                                       "--config", str(workdir / "relay.toml")],
                             staple=staple)
        relay.start()
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.kill()


_SETTINGS = """
[store]
operation_timeout = 1.0
{extra}
[mailbox]
download_page = 5000
"""


def _wait_ready(relay: RelayProcess, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while ZaxClient(relay.post, time.time).start()[0] != 200:
        assert time.monotonic() < deadline, relay.log()[-3000:]
        time.sleep(0.1)


def test_failover_under_traffic(replicated: ReplicatedRedis, relays: Any):
    # A sentinel that is not there comes first: discovery moves on to the next one.
    dead = f"127.0.0.1:{free_port()}"
    url = replicated.url.replace("redis+sentinel://", f"redis+sentinel://{dead},")
    # With the rendezvous on: its change feed (a pub/sub connection) follows the failover too.
    plain = relays("plain", url, _SETTINGS.format(extra=""), staple=True)
    waiting = relays("waiting", url, _SETTINGS.format(
        extra="redis_wait_replicas = 1\nredis_wait_timeout = 0.3"))
    _wait_ready(plain), _wait_ready(waiting)
    traffic = {relay: Traffic(relay) for relay in (plain, waiting)}
    for flow in traffic.values():
        flow.start()
    try:
        traffic[plain].wait_for_200(0.0, 10)
        traffic[waiting].wait_for_200(0.0, 10)
        time.sleep(0.5)
        killed_at = time.monotonic()
        replicated.primary.stop()  # SIGKILL

        # Without WAIT: 500s while there is no master, then 200s from the new one by itself.
        recovered_at = traffic[plain].wait_for_200(killed_at, 20)
        new_primary = replicated.wait_for_failover()
        assert new_primary is replicated.replica
        # down-after 1 s, the sentinels' election and promotion (~2 s), reconnecting.
        assert recovered_at - killed_at < 10, traffic[plain].statuses(killed_at)

        # With WAIT: the new master has no replica yet, so writes still answer 500 (never an
        # unreplicated 200) until the old primary is back as its replica.
        time.sleep(0.5)
        assert set(traffic[waiting].statuses(time.monotonic() - 0.3)) <= {500}
        replicated.primary.replica_of = replicated.replica
        replicated.primary.start()  # same port, now a replica of the new master
        traffic[waiting].wait_for_200(time.monotonic(), 20)
        time.sleep(0.3)
    finally:
        for flow in traffic.values():
            flow.stop()

    for relay, flow in traffic.items():
        assert set(flow.statuses()) <= {200, 500}, flow.statuses()
        assert relay.process is not None and relay.process.poll() is None
        assert "Traceback" not in relay.log()
    # Nothing acknowledged is lost when the relay waits for a replica.
    acknowledged = traffic[waiting].acknowledged()
    assert len(acknowledged) > 10
    delivered = traffic[waiting].delivered()
    assert {b64encode(msg_id) for msg_id in acknowledged} <= delivered
    # The one without WAIT serves from the new master (its messages are there, but those
    # acknowledged in the last moment before the kill could be lost: not checked).
    assert traffic[plain].delivered()
    deadline = time.monotonic() + 10
    while plain.log().count("the channel change feed is live") < 2:
        assert time.monotonic() < deadline, plain.log()[-3000:]
        time.sleep(0.1)
    assert "the channel change feed is down" in plain.log()
