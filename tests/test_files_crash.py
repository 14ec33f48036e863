"""kill -9 of a real relay process (Redis store, chunks on disk) in the middle of a 50 MB
upload: after a restart the upload resumes from fileStatus and the file decrypts intact."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from tests.test_files_support import CHUNK, AsyncZax, HttpPoster, SealedFile

START_TIMEOUT = 20.0
FILE_SIZE = 50 * 1024 * 1024
KILL_AFTER = 40


def _twistd() -> str:
    candidate = Path(sys.executable).with_name("twistd")
    return str(candidate) if candidate.exists() else "twistd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RelayProcess:
    def __init__(self, store_url: str, directory: Path, log: Path) -> None:
        self.store_url = store_url
        self.directory = directory
        self.log = log
        self.process: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> None:
        for _ in range(3):  # the free port may be taken between the probe and the bind
            self.port = _free_port()
            args = [_twistd(), "-n", "--pidfile=", "relay",
                    "--port", f"tcp:{self.port}:interface=127.0.0.1",
                    "--store", self.store_url, "--files-dir", str(self.directory),
                    "--no-rendezvous"]
            with open(self.log, "ab") as log:
                self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL)
            if self._wait_until_listening():
                return
            self.kill()
        raise RuntimeError(f"the relay did not start:\n{self.log.read_text()[-3000:]}")

    def _wait_until_listening(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def kill(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
        if process is not None:
            process.wait(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@pytest.fixture
def relay_process(redis_server, tmp_path):
    redis_server.flush()
    relay = RelayProcess(redis_server.url, tmp_path / "chunks", tmp_path / "relay.log")
    try:
        yield relay
    finally:
        relay.kill()


async def _restart(relay_process: RelayProcess, posters: list, *clients: AsyncZax) -> None:
    relay_process.start()
    posters.append(HttpPoster(relay_process.url))
    for client in clients:
        client.post = posters[-1]  # sessions live in Redis: no new handshake needed


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_kill_9_mid_upload_then_resume(relay_process, tmp_path):
    relay_process.start()
    posters = [HttpPoster(relay_process.url)]
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
