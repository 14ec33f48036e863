"""RelayChannel on a fake clock and transport: idle, keep-alive, request deadline, body rate,
and no further pipelined request read while an answer is unsent."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from relay.config import HTTPConfig
from relay.web.channel import ABORT_AFTER
from relay.web.guard import ConnectionGuard, DescriptorGuard, RefusalLog
from relay.web.request import RelaySite

PEER = IPv4Address("TCP", "192.0.2.7", 40000)
HOST = IPv4Address("TCP", "198.51.100.1", 8080)


class Answers(Resource):
    """GET /N answers N bytes at once; /wait/ answers when the test says so."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.rendered: list[bytes] = []
        self.waiting: list = []

    def render(self, request):
        self.rendered.append(request.path)
        if request.path.startswith(b"/wait"):
            d = Deferred()
            d.addCallback(lambda body: (request.write(body), request.finish()))
            self.waiting.append(d)
            return NOT_DONE_YET
        if request.method == b"POST":
            return b"got %d" % len(request.content.read())
        size = int(request.path.strip(b"/"))
        return request.path[-1:] * size


class PausingTransport(StringTransport):
    """Like a TCP transport: pauses its producer above 64 KiB unsent, resumes when the
    test drains it."""

    buffer_size = 64 * 1024

    def write(self, data: bytes) -> None:
        super().write(data)
        self._maybe_pause()

    def writeSequence(self, data) -> None:
        super().writeSequence(data)
        self._maybe_pause()

    def _maybe_pause(self) -> None:
        if (len(self.io.getvalue()) > self.buffer_size and self.producer is not None
                and not getattr(self, "_paused_producer", False)):
            self._paused_producer = True
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        data = self.value()
        self.clear()
        if getattr(self, "_paused_producer", False) and self.producer is not None:
            self._paused_producer = False
            self.producer.resumeProducing()
        return data


def connect(clock: Clock, resource: Resource | None = None, guard=None, transport=None,
            **settings):
    config = HTTPConfig(**settings)
    site = RelaySite(resource or Answers(), config, reactor=clock, guard=guard)
    channel = site.buildProtocol(PEER)
    transport = transport or PausingTransport(peerAddress=PEER, hostAddress=HOST)
    channel.makeConnection(transport)
    return channel, transport


def get(path: str, *headers: str) -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: relay.test", *headers]) + "\r\n\r\n"
            ).encode()


def statuses(data: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1.1 (\d{3}) ", data)]


def test_a_connection_that_sends_nothing_is_closed_quietly():
    clock = Clock()
    channel, transport = connect(clock, request_timeout=30.0)
    clock.advance(29)
    assert not transport.disconnecting
    clock.advance(2)
    assert transport.disconnecting
    assert transport.value() == b""


def test_keep_alive_idle_is_shorter():
    clock = Clock()
    channel, transport = connect(clock, request_timeout=30.0, keepalive_timeout=5.0)
    channel.dataReceived(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nAB")
    assert statuses(transport.value()) == [200]
    clock.advance(4)
    assert not transport.disconnecting
    clock.advance(2)
    assert transport.disconnecting
    assert statuses(transport.value()) == [200]  # closed quietly: no request had begun


def test_header_lines_dripped_hit_the_request_deadline():
    clock = Clock()
    channel, transport = connect(clock, request_timeout=30.0, request_deadline=30.0)
    channel.dataReceived(b"GET /3 HTTP/1.1\r\n")
    for _ in range(2):
        clock.advance(12)
        channel.dataReceived(b"X-Drip: 1\r\n")
    assert not transport.disconnecting
    clock.advance(6.5)  # 30.5 s after the first byte, though a header came 6.5 s ago
    assert statuses(transport.value()) == [408]
    assert transport.disconnecting
    assert channel.cuts.lines == 1 and channel.cuts.counts == {}  # logged once, at once


@pytest.mark.parametrize("pipelined", [False, True])
def test_a_deadline_shorter_than_the_idle_timeout_fires_on_time(pipelined):
    clock = Clock()
    channel, transport = connect(clock, request_timeout=30.0, request_deadline=2.0)
    if pipelined:  # the second request starts when the first is answered
        channel.dataReceived(get("/3") + b"GET /3 HTTP/1.1\r\n")
    else:
        channel.dataReceived(b"GET /3 HTTP/1.1\r\n")
    clock.advance(1.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert statuses(transport.value())[-1] == 408 and transport.disconnecting


def test_a_dripped_body_is_cut_after_the_grace_period():
    clock = Clock()
    channel, transport = connect(clock, min_body_rate=4096, body_rate_grace=5.0)
    channel.dataReceived(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
    cut_at = None
    for second in range(1, 30):
        clock.advance(1)
        channel.dataReceived(b"A" * 100)
        if transport.disconnecting:
            cut_at = second
            break
    assert cut_at == 6  # the first drip after the 5 s grace
    assert statuses(transport.value()) == [408]


def test_a_stalled_body_is_cut_by_the_timer_without_more_data():
    clock = Clock()
    channel, transport = connect(clock, request_timeout=10.0, request_deadline=30.0)
    channel.dataReceived(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nAB")
    clock.advance(10.5)
    assert statuses(transport.value()) == [408]
    clock.advance(ABORT_AFTER + 1)
    assert transport.disconnected  # the client never read its 408: aborted


def test_a_body_at_a_fair_rate_is_served():
    clock = Clock()
    channel, transport = connect(clock, min_body_rate=4096, body_rate_grace=5.0)
    size = 200_000
    channel.dataReceived(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
    sent = 0
    while sent < size:
        clock.advance(1)
        channel.dataReceived(b"A" * 10_000)
        sent += 10_000
    assert statuses(transport.value()) == [200]
    assert transport.value().endswith(b"got 200000")


def test_a_long_answer_in_progress_is_not_timed_out():
    clock = Clock()
    resource = Answers()
    channel, transport = connect(clock, resource, request_timeout=5.0, request_deadline=5.0)
    channel.dataReceived(get("/wait"))
    clock.advance(60)
    assert not transport.disconnecting
    resource.waiting[0].callback(b"late")
    assert statuses(transport.value()) == [200]


def test_pipelined_requests_wait_while_an_answer_is_unsent():
    clock = Clock()
    resource = Answers()
    channel, transport = connect(clock, resource)
    channel.dataReceived(b"".join(get(f"/{200_000 + i}") for i in range(50)))
    # One answer built and buffered; the rest of the pipeline waits, unread.
    assert len(resource.rendered) == 1
    assert transport.producerState == "paused"
    answers = b""
    for _ in range(60):
        answers += transport.drain()
    assert len(resource.rendered) == 50
    assert statuses(answers) == [200] * 50
    assert transport.producerState == "producing"


def test_an_unread_answer_is_aborted_after_send_timeout():
    clock = Clock()
    channel, transport = connect(clock, send_timeout=60.0)
    channel.dataReceived(get("/300000") + get("/3"))
    clock.advance(59)
    assert not transport.disconnected
    clock.advance(2)
    assert transport.disconnected


def test_pipelined_small_requests_are_answered_in_one_go():
    clock = Clock()
    resource = Answers()
    channel, transport = connect(clock, resource)
    channel.dataReceived(b"".join(get(f"/{i + 1}") for i in range(20)))
    assert statuses(transport.value()) == [200] * 20


@settings(max_examples=40)
@given(sizes=st.lists(st.integers(1, 150_000), min_size=1, max_size=12),
       split=st.integers(1, 4000))
def test_pipelined_answers_come_in_order_however_the_bytes_arrive(sizes, split):
    clock = Clock()
    resource = Answers()
    channel, transport = connect(clock, resource)
    data = b"".join(get(f"/{size}") for size in sizes)
    answers = b""
    for start in range(0, len(data), split):
        channel.dataReceived(data[start:start + split])
        answers += transport.drain()
    for _ in range(len(sizes) + 2):
        answers += transport.drain()
    lengths = [int(n) for n in re.findall(rb"Content-Length: (\d+)", answers)]
    assert lengths == sizes
    assert statuses(answers) == [200] * len(sizes)


class FakeSocketTransport(PausingTransport):
    def __init__(self, fileno: int, peer=PEER) -> None:
        super().__init__(peerAddress=peer, hostAddress=HOST)
        self._fileno = fileno

    def fileno(self) -> int:
        return self._fileno


def make_guard(clock, total=3, per_client=2, limit=1000, reserve=100):
    return ConnectionGuard(total, per_client, DescriptorGuard(limit, reserve),
                           RefusalLog(clock, "HTTP"))


def test_caps_answer_503_or_429_and_free_up_when_connections_close():
    clock = Clock()
    guard = make_guard(clock)
    peer_b = IPv4Address("TCP", "192.0.2.8", 40000)
    a1 = connect(clock, guard=guard, transport=FakeSocketTransport(10))
    a2 = connect(clock, guard=guard, transport=FakeSocketTransport(11))
    a3 = connect(clock, guard=guard, transport=FakeSocketTransport(12))
    assert statuses(a3[1].value()) == [429] and a3[1].disconnecting
    b1 = connect(clock, guard=guard, transport=FakeSocketTransport(13, peer_b))
    b2 = connect(clock, guard=guard, transport=FakeSocketTransport(14, peer_b))
    assert statuses(b2[1].value()) == [503]
    for _channel, transport in (a1, a2, b1):
        assert transport.value() == b"" and not transport.disconnecting
    a3[0].connectionLost(None)  # a refused connection releases nothing
    a1[0].connectionLost(None)
    b3 = connect(clock, guard=guard, transport=FakeSocketTransport(15, peer_b))
    assert b3[1].value() == b""
    assert guard.total == 3 and guard.per_client == {"192.0.2.7/32": 1, "192.0.2.8/32": 2}


def test_near_the_descriptor_limit_new_connections_get_503():
    clock = Clock()
    guard = make_guard(clock, total=100, per_client=100, limit=1000, reserve=100)
    ok = connect(clock, guard=guard, transport=FakeSocketTransport(899))
    refused = connect(clock, guard=guard, transport=FakeSocketTransport(900))
    assert ok[1].value() == b""
    assert statuses(refused[1].value()) == [503]
    assert b"relay busy" in refused[1].value()


def test_refusals_are_logged_once_per_interval():
    clock = Clock()
    guard = make_guard(clock, total=0)
    for _ in range(1000):
        connect(clock, guard=guard, transport=FakeSocketTransport(5))
    assert guard.refusals.lines == 1
    clock.advance(10)
    assert guard.refusals.lines == 2  # "refused 999 ... in the last 10s"
    clock.advance(10)
    clock.advance(10)
    assert guard.refusals.lines == 2  # quiet intervals write nothing
    connect(clock, guard=guard, transport=FakeSocketTransport(5))
    assert guard.refusals.lines == 3


@settings(max_examples=60)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3)), max_size=60))
def test_guard_counts_match_a_model(operations):
    clock = Clock()
    guard = make_guard(clock, total=5, per_client=2)
    open_: list[str] = []
    for opening, client in operations:
        key = f"client{client}"
        if opening:
            admitted = guard.admit(key, FakeSocketTransport(3)) is None
            expected = len(open_) < 5 and open_.count(key) < 2
            assert admitted == expected
            if admitted:
                open_.append(key)
        elif key in open_:
            open_.remove(key)
            guard.release(key)
        assert guard.total == len(open_)
        assert all(guard.per_client[k] == open_.count(k) for k in set(open_))
        assert set(guard.per_client) == set(open_)


@pytest.mark.parametrize("limit, reserve, threshold", [
    (1024, 256, 768), (65536, 256, 65280), (200, 256, 100), (None, 256, None)])
def test_descriptor_threshold(limit, reserve, threshold):
    assert DescriptorGuard(limit, reserve).threshold == threshold


@settings(max_examples=80)
@given(body_size=st.integers(0, 300_000), pieces=st.integers(1, 40),
       pause=st.floats(0, 2.0), data=st.data())
def test_a_request_within_the_limits_is_served_however_it_arrives(body_size, pieces, pause,
                                                                  data):
    """Split anywhere, paced within the deadline and above the body rate: never a 408."""
    clock = Clock()
    channel, transport = connect(clock, request_deadline=30.0, min_body_rate=4096,
                                 body_rate_grace=5.0)
    request = (b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % body_size
               + b"A" * body_size)
    cuts = sorted(data.draw(st.lists(st.integers(1, max(1, len(request) - 1)),
                                     max_size=pieces - 1, unique=True)))
    bounds = [0, *cuts, len(request)]
    # Pauses fit the deadline; the body keeps above 4096 B/s as long as each piece is at
    # least pause * 4096 bytes, so pace by the piece's size.
    for start, end in zip(bounds, bounds[1:], strict=False):
        clock.advance(min(pause, 25.0 / len(bounds), (end - start) / 8192))
        channel.dataReceived(request[start:end])
    assert statuses(transport.value()) == [200]
    assert transport.value().endswith(b"got %d" % body_size)


@settings(max_examples=40)
@given(rate=st.integers(1, 3000), grace=st.floats(1.0, 10.0))
def test_a_body_under_the_rate_is_always_cut_soon_after_the_grace(rate, grace):
    clock = Clock()
    channel, transport = connect(clock, min_body_rate=4096, body_rate_grace=grace,
                                 request_deadline=600.0, request_timeout=600.0)
    channel.dataReceived(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
    seconds = 0.0
    while not transport.disconnecting and seconds < 60:
        clock.advance(0.5)
        seconds += 0.5
        channel.dataReceived(b"A" * (rate // 2 or 1))
    assert statuses(transport.value()) == [408]
    assert seconds <= grace + 0.5


def post_head(size: int | None) -> bytes:
    length = b"Transfer-Encoding: chunked" if size is None else b"Content-Length: %d" % size
    return b"POST /p HTTP/1.1\r\nHost: x\r\n" + length + b"\r\n\r\n"


def test_bodies_held_at_once_are_capped_relay_wide():
    clock = Clock()
    resource = Answers()
    config = HTTPConfig(max_command_body=200_000, max_buffered_bodies=300_000)
    site = RelaySite(resource, config, reactor=clock)

    def open_connection():
        channel = site.buildProtocol(PEER)
        transport = PausingTransport(peerAddress=PEER, hostAddress=HOST)
        channel.makeConnection(transport)
        return channel, transport

    a, a_out = open_connection()
    a.dataReceived(post_head(200_000) + b"A" * 150_000)
    assert site.bodies.held == 150_000
    b, b_out = open_connection()
    b.dataReceived(post_head(200_000))  # announced: does not fit beside a's
    assert statuses(b_out.value()) == [503] and b_out.disconnecting
    c, c_out = open_connection()
    c.dataReceived(post_head(None) + b"%x\r\n%s\r\n" % (100_000, b"C" * 100_000))
    c.dataReceived(b"%x\r\n%s\r\n" % (100_000, b"C" * 100_000))  # chunked: cut when over
    assert statuses(c_out.value()) == [503]
    c.connectionLost(None)
    a.dataReceived(b"A" * 50_000)
    assert statuses(a_out.value()) == [200]
    assert site.bodies.held == 0  # released when answered
    d, d_out = open_connection()
    d.dataReceived(post_head(200_000) + b"D" * 200_000)
    assert statuses(d_out.value()) == [200]
    b.connectionLost(None)
    assert site.bodies.held == 0


@settings(max_examples=50)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 120_000)), max_size=30))
def test_the_body_budget_always_returns_to_zero(steps):
    clock = Clock()
    config = HTTPConfig(max_command_body=200_000, max_buffered_bodies=300_000)
    site = RelaySite(Answers(), config, reactor=clock)
    connections = []
    for _ in range(4):
        channel = site.buildProtocol(PEER)
        channel.makeConnection(PausingTransport(peerAddress=PEER, hostAddress=HOST))
        channel.dataReceived(post_head(200_000))
        connections.append(channel)
    for index, size in steps:
        channel = connections[index]
        if not channel.transport.disconnecting:
            channel.dataReceived(b"x" * size)
        assert 0 <= site.bodies.held <= 300_000
    for channel in connections:
        channel.connectionLost(None)
    assert site.bodies.held == 0
