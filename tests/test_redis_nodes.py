"""Three relay processes (real twistd) on one Redis, as behind a load balancer: any request may
land on any node. A handshake spread over the three nodes, commands, messages and files on
others; and the rendezvous: two peers joining (and long-polling) through different nodes are
both sent to the owning node's staple port, where they are stapled."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import Protocol

from relay.client.live.rendezvous import connect_recipient
from relay.client.live.session import start_live_send
from relay.crypto import b64decode, b64encode
from tests.redis_server import RedisServer
from tests.relay_process import RelayProcess
from tests.test_files_support import AsyncZax, HttpPoster, SealedFile

# Two client networks for the rendezvous peers (the two-address rule wants two addresses).
PEER_A, PEER_B = "127.0.0.2", "127.0.0.3"


class Pump(Protocol):
    """Sends `total` deterministic bytes while hashing what arrives; `done` fires once the
    peer has sent its `total` too."""

    def __init__(self, total: int, seed: bytes) -> None:
        self.total, self.got = total, 0
        self.data = (hashlib.sha256(seed).digest() * (total // 32 + 1))[:total]
        self.got_hash = hashlib.sha256()
        self.done: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.got_hash.update(data)
        self.got += len(data)
        if self.got >= self.total and not self.done.called:
            self.done.callback(None)


@pytest.fixture(scope="module", params=["store"])
def nodes(request, redis_server: RedisServer, tmp_path_factory):
    """Three nodes (shared by the tests of one kind); file chunks in Redis ("store") or on
    one directory they share ("disk", as on a shared filesystem)."""
    tmp_path = tmp_path_factory.mktemp(f"nodes-{request.param}")
    files = {"store": 'chunk_store = "store"',
             "disk": f'chunk_store = "disk"\ndirectory = "{tmp_path / "shared-chunks"}"'}
    started: list[RelayProcess] = []
    for name in ("a", "b", "c"):
        workdir = tmp_path / name
        workdir.mkdir()
        (workdir / "relay.toml").write_text(f"[files]\n{files[request.param]}\n")
        started.append(RelayProcess(workdir, ["--store", redis_server.url,
                                              "--config", str(workdir / "relay.toml")],
                                    staple=True))
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            list(pool.map(RelayProcess.start, started))
        yield started
    finally:
        for relay in started:
            relay.kill()
        redis_server.flush()


class SpreadClient(AsyncZax):
    """An AsyncZax whose every request may go to another node."""

    def __init__(self, posters: list[HttpPoster]) -> None:
        super().__init__(posters[0])
        self.posters = posters

    def on(self, node: int) -> SpreadClient:
        self.post = self.posters[node]
        return self

    async def connect_across(self, start: int, verify: int, prove: int) -> None:
        z = self.z
        status, body = await self.posters[start]("start_session", z.start_body())
        assert status == 200, status
        token, difficulty = body.split(b"\r\n")
        z.relay_token, z.difficulty = b64decode(token, 32), int(difficulty)
        status, body = await self.posters[verify]("verify_session", z.verify_body())
        assert status == 200, status
        z.relay_pk = b64decode(body, 32)
        status, body = await self.posters[prove]("prove", z.prove_body())
        assert status == 200, status


@pytest.mark.parametrize("nodes", ["store", "disk"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_any_request_on_any_node(nodes: list[RelayProcess]):
    posters = [HttpPoster(node.url + "/") for node in nodes]
    try:
        alice, bob = SpreadClient(posters), SpreadClient(posters)
        await alice.connect_across(start=0, verify=1, prove=2)
        await bob.connect_across(start=2, verify=0, prove=1)

        # A message uploaded through B is counted on A and downloaded on C.
        msg_id = os.urandom(24)
        status, _ = await alice.on(1).command({"cmd": "upload", "to": b64encode(bob.hpk),
                                               "payload": {"nonce": b64encode(msg_id),
                                                           "ctext": b64encode(b"hi")}})
        assert status == 200
        assert await bob.on(0).enc({"cmd": "count"}) == 1
        [message] = await bob.on(2).enc({"cmd": "download"})
        assert (message["nonce"], message["from"]) == (b64encode(msg_id), b64encode(alice.hpk))

        # A file: started on A, its chunks uploaded through B and C in turn, read on all.
        sealed = SealedFile(os.urandom(3500), 1000)
        upload_id = (await alice.on(0).start_upload(bob, 3500))["uploadID"]
        for part in range(sealed.parts):
            command, chunk = sealed.command(upload_id, part)
            assert await alice.on(1 + part % 2).enc(command, chunk) == {"status": "OK"}
        status = await bob.on(0).enc({"cmd": "fileStatus", "uploadID": upload_id})
        assert status["status"] == "COMPLETE"
        data = b"".join([await bob.on(part % 3).download_chunk(upload_id, part, sealed.key)
                         for part in range(sealed.parts)])
        assert data == sealed.data
        assert await bob.on(2).enc({"cmd": "deleteFile", "uploadID": upload_id}) == \
            {"status": "OK"}
        status = await alice.on(1).enc({"cmd": "fileStatus", "uploadID": upload_id})
        assert status["status"] == "NOT_FOUND"
        # A session proven on one node serves on every node, and a nonce used on one is
        # refused on the others (replays do not get through by changing node).
        body = alice.z.command_body({"cmd": "count"})
        assert (await posters[0]("command", body))[0] == 200
        assert (await posters[1]("command", body))[0] == 400
        assert (await posters[2]("command", body))[0] == 400
    finally:
        for poster in posters:
            await poster.close()

    for node in nodes:
        assert "Traceback" not in node.log()


@pytest_twisted.ensureDeferred
async def test_rendezvous_staples_on_the_owning_node(nodes: list[RelayProcess]):
    owner, other = nodes[1], nodes[2]
    start = await start_live_send(reactor, owner.url, bind_host=PEER_A)
    # The owner (where the channel was made) names its own staple port...
    assert start.joined.staple == f"127.0.0.1:{owner.staple_port}"
    sender_d = Deferred.fromCoroutine(start.connect(timeout=30))
    # ... and the recipient, joining and long-polling through another node, is sent there too.
    recipient = await connect_recipient(reactor, other.url, start.code, timeout=30,
                                        bind_host=PEER_B)
    sender = await sender_d
    assert sender.keys.send_key == recipient.keys.receive_key
    total = 2 * 1000 * 1000
    ps, pr = Pump(total, b"s"), Pump(total, b"r")
    sender.hand_off(ps)
    recipient.hand_off(pr)
    await gatherResults([ps.done, pr.done])
    assert pr.got_hash.digest() == hashlib.sha256(ps.data).digest()
    assert ps.got_hash.digest() == hashlib.sha256(pr.data).digest()
    # The pair lives on the owner: its log says so, the other nodes stapled nothing.
    log: dict[Any, str] = {node: node.log() for node in nodes}
    assert "stapled a pair" in log[owner]
    assert not any("stapled a pair" in log[node] for node in nodes if node is not owner)
    assert all("Traceback" not in text for text in log.values())
