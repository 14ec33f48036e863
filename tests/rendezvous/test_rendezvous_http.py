"""POST /join and /channel over real loopback HTTP, from several 127.0.0.x addresses."""

from __future__ import annotations

import json
from io import BytesIO

import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rendezvous_node import node_config, start_node
from staple_peer import Caller, b64
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from relay.config import RelayConfig, RendezvousConfig
from relay.rendezvous.http import make_resources
from relay.rendezvous.registry import ChannelRegistry
from relay.rendezvous.requests import parse_channel
from relay.store.memory.channels import MemoryChannelStore

A, B, C = "127.0.0.2", "127.0.0.3", "127.0.0.4"
X = b"x" * 33


async def joined_pair(node):
    a, b = Caller(reactor, node.url, A), Caller(reactor, node.url, B)
    code, sender, headers = await a.post("/join", {"role": "sender"})
    assert code == 200, sender
    assert headers.getRawHeaders(b"Access-Control-Allow-Origin") == [b"*"]
    code, recipient, _ = await b.post("/join", {"role": "recipient", "channel": sender["channel"]})
    assert code == 200, recipient
    return a, b, sender, recipient


@pytest_twisted.ensureDeferred
async def test_join_and_channel_flow():
    node = await start_node(reactor, node_config())
    try:
        a, b, sender, recipient = await joined_pair(node)
        assert sender["staple"] == f"127.0.0.1:{node.staple_port}"
        assert recipient["staple"] == sender["staple"] and sender["expires_in"] > 0
        ch = sender["channel"]
        code, state, _ = await a.post("/channel", {"channel": ch, "uuid": sender["uuid"],
                                                   "x": b64(X)})
        assert code == 200 and state["x"] == b64(X) and state["y"] is None
        assert state["version"] == 3  # created, joined, x
        # second write, wrong role, wrong uuid, unknown channel, third address
        code, err, h = await a.post("/channel", {"channel": ch, "uuid": sender["uuid"],
                                                 "x": b64(X)})
        assert code == 409 and "error" in err
        assert h.getRawHeaders(b"Access-Control-Allow-Origin") == [b"*"]
        code, _, _ = await b.post("/channel", {"channel": ch, "uuid": recipient["uuid"],
                                               "x": b64(X)})
        assert code == 403
        code, _, _ = await b.post("/channel", {"channel": ch, "uuid": b64(bytes(32))})
        assert code == 401
        code, _, _ = await b.post("/channel", {"channel": "zzzz9999", "uuid": b64(bytes(32))})
        assert code == 404
        c = Caller(reactor, node.url, C)
        code, _, _ = await c.post("/join", {"role": "recipient", "channel": ch})
        assert code == 403
        code, _, _ = await c.post("/channel", {"channel": ch, "uuid": sender["uuid"]})
        assert code == 403
        code, _, _ = await b.post("/join", {"role": "recipient", "channel": ch})
        assert code == 409
        code, _, _ = await b.post("/join", {"role": "recipient", "channel": "zzzz9999"})
        assert code == 404
        # a long-poll is woken by the other side's write
        seen = state["version"]  # from the x write: the poll cannot miss the y write
        poll = Deferred.fromCoroutine(b.post("/channel", {"channel": ch, "uuid": recipient["uuid"],
                                                          "wait": 20, "since": seen}))
        started = reactor.seconds()
        await b.post("/channel", {"channel": ch, "uuid": recipient["uuid"], "y": b64(X),
                                  "hh_k": b64(b"t" * 32)})
        code, state, _ = await poll
        assert code == 200 and state["hh_k"] == b64(b"t" * 32)
        assert reactor.seconds() - started < 5
        code, state, _ = await a.post("/channel", {"channel": ch, "uuid": sender["uuid"],
                                                   "close": True})
        assert code == 200 and state["closed"]
    finally:
        await node.stop()


@pytest_twisted.ensureDeferred
async def test_bad_bodies():
    node = await start_node(reactor, node_config())
    try:
        a = Caller(reactor, node.url, A)
        code, err, _ = await a.post("/join", None, raw=b"{" + b" " * 5000 + b"}")
        assert code == 413 and err == {"error": "request body too large"}
        for raw in (b"", b"nope", b'{"role":"admin"}', b"[1]"):
            code, err, _ = await a.post("/join", None, raw=raw)
            assert code == 400 and "error" in err
        code, _, _ = await a.post("/channel", None, raw=b'{"channel":"abcd"}')
        assert code == 400
        response = await a.http.request("OPTIONS", node.url + "/join")
        assert response.code == 204
        assert response.headers.getRawHeaders(b"Access-Control-Allow-Origin") == [b"*"]
    finally:
        await node.stop()


@pytest_twisted.ensureDeferred
async def test_disconnected_long_poll_is_cancelled():
    node = await start_node(reactor, node_config())
    try:
        a = Caller(reactor, node.url, A)
        _, sender, _ = await a.post("/join", {"role": "sender"})
        poll = Deferred.fromCoroutine(a.post("/channel", {"channel": sender["channel"],
                                                          "uuid": sender["uuid"], "wait": 25}))
        for _ in range(100):
            if node.registry.waiting():
                break
            await deferLater(0.01)
        assert node.registry.waiting() == 1
        poll.cancel()
        poll.addErrback(lambda f: None)
        for _ in range(100):
            if not node.registry.waiting():
                break
            await deferLater(0.01)
        assert node.registry.waiting() == 0
    finally:
        await node.stop()


def deferLater(seconds: float) -> Deferred:
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)


def render(resource, body: bytes, address: str = A) -> tuple[int, dict]:
    """Render synchronously (the memory store answers at once) with a DummyRequest."""
    request = DummyRequest([b""])
    request.method = b"POST"
    request.client = IPv4Address("TCP", address, 40000)
    request.content = BytesIO(body)
    result = resource.render(request)
    assert result == NOT_DONE_YET and request.finished
    return request.responseCode or 200, json.loads(b"".join(request.written))


def sync_resources(**settings):
    clock = Clock()
    store = MemoryChannelStore(clock.seconds)
    config = RelayConfig(rendezvous=RendezvousConfig(**settings))
    registry = ChannelRegistry(config.rendezvous, store, clock, node_id="n")
    return make_resources(config, registry, lambda: 9009), store


FUZZ_RESOURCES, FUZZ_STORE = sync_resources(joins_per_ip_per_minute=10**9)
_, JOINED = render(FUZZ_RESOURCES[b"join"], b'{"role":"sender"}')
_, _RECIPIENT = render(FUZZ_RESOURCES[b"join"],
                       json.dumps({"role": "recipient", "channel": JOINED["channel"]}).encode(),
                       B)
VALID_CHANNEL = json.dumps({"channel": JOINED["channel"], "uuid": JOINED["uuid"],
                            "x": b64(X)}).encode()


PRISTINE = dict(FUZZ_STORE.channels._entries)


def snapshot():
    return sorted((k, v) for k, (_, v) in FUZZ_STORE.channels._entries.items())


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=120), st.integers(0, len(VALID_CHANNEL)), st.sampled_from([A, B, C]))
def test_fuzzed_channel_bodies_never_500_nor_change_state(noise, position, address):
    before = snapshot()
    body = VALID_CHANNEL[:position] + noise + VALID_CHANNEL[position + len(noise):]
    if body == VALID_CHANNEL:
        return
    code, answer = render(FUZZ_RESOURCES[b"channel"], body, address)
    assert code in (200, 400, 401, 403, 404, 409, 413), (code, answer)
    if code != 200:
        assert set(answer) == {"error"}
        assert snapshot() == before
    elif snapshot() != before:
        # only a well-formed write by the sender (x bytes mutated, say) may change anything
        parsed = parse_channel(body, 30)
        assert parsed.write.x is not None and b64(parsed.uuid) == JOINED["uuid"]
        FUZZ_STORE.channels._entries.clear()
        FUZZ_STORE.channels._entries.update(PRISTINE)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=120), st.integers(0, 40))
def test_fuzzed_join_bodies_never_500(noise, position):
    valid = json.dumps({"role": "recipient", "channel": JOINED["channel"]}).encode()
    body = valid[:position] + noise + valid[position + len(noise):]
    before = snapshot()
    code, answer = render(FUZZ_RESOURCES[b"join"], body, C)
    assert code in (200, 400, 403, 404, 409, 413), (code, answer)
    if code != 200:
        assert snapshot() == before
