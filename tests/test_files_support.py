"""Helpers for the file tests (no tests here): a relay served over loopback HTTP on either
store, an async Zax client, and a sender that chunks and secretboxes a file as glow.ts does."""

from __future__ import annotations

import json
import os
from typing import Any

import attrs
import treq
from nacl.secret import SecretBox
from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool

from relay.app import build_relay
from relay.config import RelayConfig, load_config
from relay.crypto import b64decode, b64encode, make_nonce
from relay.web.request import RelaySite
from tests.zax import ZaxClient, crlf

CHUNK = 500 * 1024


class HttpPoster:
    """POSTs to a relay's base URL with a private connection pool (closed by close()),
    from source_address if given (another loopback address is another client network)."""

    def __init__(self, base_url: str, source_address: str | None = None) -> None:
        self.base_url = base_url
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        bind = (source_address, 0) if source_address else None
        self.agent = Agent(reactor, pool=self.pool, bindAddress=bind)

    async def __call__(self, path: str, body: bytes) -> tuple[int, bytes]:
        response = await treq.post(self.base_url + path, data=body, agent=self.agent,
                                   headers={"Content-Type": "text/plain"}, timeout=30)
        return response.code, await treq.content(response)

    async def close(self) -> None:
        await self.pool.closeCachedConnections()


class AsyncZax:
    """tests.zax.ZaxClient's bodies, sent asynchronously (real reactor, real sockets)."""

    def __init__(self, post: HttpPoster) -> None:
        self.post = post
        self.z = ZaxClient(post=None, now=reactor.seconds)  # type: ignore[arg-type]

    @property
    def hpk(self) -> bytes:
        return self.z.hpk

    async def connect(self) -> None:
        status, body = await self.post("start_session", self.z.start_body())
        assert status == 200, status
        token, difficulty = body.split(b"\r\n")
        self.z.relay_token, self.z.difficulty = b64decode(token, 32), int(difficulty)
        status, body = await self.post("verify_session", self.z.verify_body())
        assert status == 200, status
        self.z.relay_pk = b64decode(body, 32)
        status, body = await self.post("prove", self.z.prove_body())
        assert status == 200, status

    async def command(self, command: dict[str, Any], extra: bytes | None = None
                      ) -> tuple[int, bytes]:
        return await self.post("command", self.z.command_body(command, extra))

    async def enc(self, command: dict[str, Any], extra: bytes | None = None) -> Any:
        """Run a command that must succeed with an ENC answer; return its JSON."""
        status, body = await self.command(command, extra)
        assert status == 200, (command.get("cmd"), status)
        assert len(body.split(b"\r\n")) == 2
        return self.open(body)

    def open(self, body: bytes) -> Any:
        return self.z.open(body)

    async def start_upload(self, to: AsyncZax, file_size: int,
                           meta_nonce: bytes | None = None) -> dict[str, Any]:
        meta_nonce = meta_nonce or make_nonce(reactor.seconds())
        return await self.enc({"cmd": "startFileUpload", "to": b64encode(to.hpk),
                               "file_size": file_size,
                               "metadata": {"nonce": b64encode(meta_nonce),
                                            "ctext": b64encode(b"encrypted metadata")}})

    async def download_chunk(self, upload_id: str, part: int, key: bytes) -> bytes:
        status, body = await self.command({"cmd": "downloadFileChunk", "uploadID": upload_id,
                                           "part": part})
        assert status == 200, status
        lines = body.split(b"\r\n")
        assert len(lines) == 3, self.open(b"\r\n".join(lines[:2]))
        nonce = b64decode(self.open(crlf(lines[0], lines[1]))["nonce"])
        return SecretBox(key).decrypt(b64decode(lines[2]), nonce)


@attrs.define
class SealedFile:
    """A file cut in chunks and sealed with one secretbox key, as glow.ts sends it."""

    data: bytes
    chunk_size: int = 1000
    key: bytes = attrs.field(factory=lambda: os.urandom(32))

    @property
    def parts(self) -> int:
        return max(1, -(-len(self.data) // self.chunk_size))

    def sealed(self, part: int) -> tuple[bytes, bytes]:
        """(nonce, ciphertext) of a part."""
        nonce = os.urandom(24)
        plain = self.data[part * self.chunk_size:(part + 1) * self.chunk_size]
        return nonce, SecretBox(self.key).encrypt(plain, nonce).ciphertext

    def command(self, upload_id: str, part: int) -> tuple[dict[str, Any], bytes]:
        nonce, ctext = self.sealed(part)
        return ({"cmd": "uploadFileChunk", "uploadID": upload_id, "part": part,
                 "nonce": b64encode(nonce), "last_chunk": part == self.parts - 1},
                b64encode(ctext).encode())


class LoopbackRelay:
    """build_relay on a given store kind, served on a free loopback port."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.app = build_relay(config, reactor)
        self.site = RelaySite(self.app.root, config.http, reactor=reactor)
        self.port: Any = None
        self.posters: list[HttpPoster] = []

    async def start(self) -> None:
        self.app.store.service.startService()
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")

    def poster(self, source_address: str | None = None) -> HttpPoster:
        poster = HttpPoster(f"http://127.0.0.1:{self.port.getHost().port}/", source_address)
        self.posters.append(poster)
        return poster

    async def client(self, source_address: str | None = None) -> AsyncZax:
        """A connected client, from source_address (a loopback address) if given."""
        client = AsyncZax(self.poster(source_address))
        await client.connect()
        return client

    async def stop(self) -> None:
        for poster in self.posters:
            await poster.close()
        if self.port is not None:
            await self.port.stopListening()
        await self.app.store.service.stopService()


def relay_config(store_url: str, directory: str, mailbox: dict | None = None,
                 **files: Any) -> RelayConfig:
    return load_config(overrides={"store": {"url": store_url}, "mailbox": mailbox or {},
                                  "files": {"directory": directory, **files}})


def json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
