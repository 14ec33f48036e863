"""Two clients run the PAKE through the relay, staple, and move data; a wrong code closes."""

from __future__ import annotations

import hashlib

import pytest
import pytest_twisted
from nacl.secret import SecretBox
from rendezvous_node import node_config, start_node
from staple_peer import Caller, b64
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import Protocol

from relay.client.codes import make_code
from relay.client.errors import ChannelClosed, RelayError, WrongCode
from relay.client.live.pake import Exchange
from relay.client.live.rendezvous import connect_recipient
from relay.client.live.session import start_live_send

A, B = "127.0.0.2", "127.0.0.3"
MB = 1000 * 1000


def test_exchange_keys_and_reflection():
    code = make_code("abcd1234")
    s, r = Exchange("sender", code), Exchange("recipient", code)
    s.finish(r.message())
    r.finish(s.message())
    s.check_peer_tag(r.own_tag())
    r.check_peer_tag(s.own_tag())
    assert s.traffic_keys().send_key == r.traffic_keys().receive_key
    assert s.traffic_keys().receive_key == r.traffic_keys().send_key
    assert s.traffic_keys().send_key != s.traffic_keys().receive_key
    with pytest.raises(WrongCode):  # a reflected tag never verifies
        s.check_peer_tag(s.own_tag())
    wrong = Exchange("recipient", "abcd1234-" + "-".join(code.split("-")[1:][::-1]) + "x")
    wrong.finish(s.message())
    with pytest.raises(WrongCode):
        s.check_peer_tag(wrong.own_tag())


class Pump(Protocol):
    """Sends `total` bytes of a deterministic stream (as a push producer) while hashing
    what arrives; done fires with the received digest and count when the peer finishes."""

    def __init__(self, total: int, seed: bytes) -> None:
        self.total, self.sent, self.paused = total, 0, False
        self.block = hashlib.sha256(seed).digest() * (65536 // 32)
        self.sent_hash, self.got_hash, self.got = hashlib.sha256(), hashlib.sha256(), 0
        self.done: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.sent < self.total:
            chunk = self.block[: self.total - self.sent]
            self.sent_hash.update(chunk)
            self.sent += len(chunk)
            self.transport.write(chunk)
        if self.sent >= self.total and self.transport.producer is self:
            self.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True

    def dataReceived(self, data: bytes) -> None:
        self.got_hash.update(data)
        self.got += len(data)
        if self.got >= self.total and self.sent >= self.total and not self.done.called:
            self.done.callback(None)
            self.transport.loseConnection()


@pytest.mark.slow
@pytest.mark.parametrize("data_path", ["splice", "copy"])
@pytest_twisted.ensureDeferred
async def test_pake_staple_and_100_mb_both_ways(data_path):
    node = await start_node(reactor, node_config(data_path=data_path))
    try:
        start = await start_live_send(reactor, node.url, bind_host=A)
        sender_d = Deferred.fromCoroutine(start.connect(timeout=30))
        recipient = await connect_recipient(reactor, node.url, start.code, timeout=30,
                                            bind_host=B)
        sender = await sender_d
        assert sender.keys.send_key == recipient.keys.receive_key
        assert sender.keys.receive_key == recipient.keys.send_key
        # the keys work for records: one sealed record from the sender opens at the recipient
        sealed = SecretBox(sender.keys.send_key).encrypt(b"offer")
        assert SecretBox(recipient.keys.receive_key).decrypt(sealed) == b"offer"
        total = 100 * MB
        ps, pr = Pump(total, b"sender"), Pump(total, b"recipient")
        sender.hand_off(ps)
        recipient.hand_off(pr)
        await gatherResults([ps.done, pr.done])
        assert pr.got == ps.sent == total and ps.got == pr.sent == total
        assert pr.got_hash.digest() == ps.sent_hash.digest()
        assert ps.got_hash.digest() == pr.sent_hash.digest()
    finally:
        await node.stop()


@pytest_twisted.ensureDeferred
async def test_wrong_code_closes_the_channel_after_one_attempt():
    node = await start_node(reactor, node_config())
    try:
        start = await start_live_send(reactor, node.url, bind_host=A)
        sender_d = Deferred.fromCoroutine(start.connect(timeout=30))
        words = start.code.split("-")
        guess = "-".join([words[0], "baba", "baba", "baba"])
        with pytest.raises(ChannelClosed):
            await connect_recipient(reactor, node.url, guess, timeout=30, bind_host=B)
        with pytest.raises(WrongCode):
            await sender_d
        # the channel is closed for good: no second guess, not even with the right code
        state = await Caller(reactor, node.url, A).post(
            "/channel", {"channel": start.joined.channel,
                         "uuid": b64(start.joined.uuid)})
        assert state[1]["closed"] is True
        with pytest.raises(RelayError) as e:
            await connect_recipient(reactor, node.url, start.code, timeout=5, bind_host=B)
        assert e.value.status == 404
    finally:
        await node.stop()
