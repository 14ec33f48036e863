"""kill -9 of a real relay process (Redis store, chunks on disk) in the middle of a 50 MB
upload: after a restart the upload resumes from fileStatus and the file decrypts intact."""

from __future__ import annotations

import hashlib
import os
import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from tests.relay_process import RelayProcess
from tests.test_files_support import CHUNK, AsyncZax, HttpPoster, SealedFile

FILE_SIZE = 50 * 1024 * 1024
KILL_AFTER = 40


@pytest.fixture
def relay_process(redis_server, tmp_path):
    redis_server.flush()
    relay = RelayProcess(tmp_path, ["--store", redis_server.url,
                                    "--files-dir", str(tmp_path / "chunks")])
    try:
        yield relay
    finally:
        relay.kill()


async def _restart(relay_process: RelayProcess, posters: list, *clients: AsyncZax) -> None:
    relay_process.start()
    posters.append(HttpPoster(relay_process.url + "/"))
    for client in clients:
        client.post = posters[-1]  # sessions live in Redis: no new handshake needed


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_kill_9_mid_upload_then_resume(relay_process, tmp_path):
    relay_process.start()
    posters = [HttpPoster(relay_process.url + "/")]
    try:
        alice, bob = AsyncZax(posters[0]), AsyncZax(posters[0])
        await alice.connect()
        await bob.connect()
        sealed = SealedFile(os.urandom(FILE_SIZE), CHUNK - 16)
        upload_id = (await alice.start_upload(bob, FILE_SIZE))["uploadID"]
        for part in range(KILL_AFTER):
            assert await alice.enc(*sealed.command(upload_id, part)) == {"status": "OK"}

        # Crash 1: a chunk half sent when the relay dies. Nothing of it may count.
        body = alice.z.command_body(*sealed.command(upload_id, KILL_AFTER))
        with socket.create_connection(("127.0.0.1", relay_process.port)) as half:
            half.sendall(b"POST /command HTTP/1.1\r\nHost: relay\r\n"
                         b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
                         % len(body) + body[:len(body) // 2])
            await deferLater(reactor, 0.05)
            relay_process.kill()
        await _restart(relay_process, posters, alice, bob)
        info = await alice.enc({"cmd": "fileStatus", "uploadID": upload_id})
        assert (info["status"], info["total_chunks"]) == ("UPLOADING", KILL_AFTER)
        assert info["bytes_stored"] == KILL_AFTER * CHUNK

        # Crash 2: a whole chunk sent and the relay killed at once: stored or not, never
        # half stored. The client goes on from what fileStatus reports.
        for part in range(KILL_AFTER, 2 * KILL_AFTER):
            assert await alice.enc(*sealed.command(upload_id, part)) == {"status": "OK"}
        in_flight = alice.command(*sealed.command(upload_id, 2 * KILL_AFTER))
        outcome: list = []
        Deferred.fromCoroutine(in_flight).addBoth(outcome.append)
        relay_process.kill()
        while not outcome:
            await deferLater(reactor, 0.01)
        await _restart(relay_process, posters, alice, bob)
        info = await alice.enc({"cmd": "fileStatus", "uploadID": upload_id})
        resume_from = info["total_chunks"]
        assert resume_from in (2 * KILL_AFTER, 2 * KILL_AFTER + 1)
        assert info["bytes_stored"] == resume_from * CHUNK

        for part in range(resume_from, sealed.parts):
            assert await alice.enc(*sealed.command(upload_id, part)) == {"status": "OK"}
        info = await bob.enc({"cmd": "fileStatus", "uploadID": upload_id})
        assert info["status"] == "COMPLETE" and info["total_chunks"] == sealed.parts
        digest = hashlib.sha256()
        for part in range(sealed.parts):
            digest.update(await bob.download_chunk(upload_id, part, sealed.key))
        assert digest.digest() == hashlib.sha256(sealed.data).digest()
    finally:
        for poster in posters:
            await poster.close()
