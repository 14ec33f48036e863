"""A minimal Zax client for tests: builds raw bodies byte by byte from the wire spec, so
tests can also mutate them, and talks to the relay's root resource in memory (StubTreq)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import attrs
import treq
from nacl.public import Box, PrivateKey, PublicKey
from treq.testing import StubTreq

from relay.crypto import b64decode, b64encode, h2, make_nonce, solve_pow

Post = Callable[[str, bytes], tuple[int, bytes]]


def stub_post(root: Any) -> Post:
    """A synchronous POST against a resource whose store answers without the reactor."""
    stub = StubTreq(root)

    def post(path: str, body: bytes) -> tuple[int, bytes]:
        d = stub.request("POST", "http://relay.test/" + path, data=body,
                         headers={"Content-Type": "text/plain"})
        stub.flush()
        responses: list = []
        d.addBoth(responses.append)
        response = responses[0]
        if not hasattr(response, "code"):
            response.raiseException()
        contents: list = []
        treq.content(response).addBoth(contents.append)
        stub.flush()
        return response.code, contents[0]

    return post


def crlf(*lines: str | bytes) -> bytes:
    return b"\r\n".join(line.encode() if isinstance(line, str) else line for line in lines)


@attrs.define
class ZaxClient:
    post: Post
    now: Callable[[], float]
    identity: PrivateKey = attrs.field(factory=PrivateKey.generate)
    session_key: PrivateKey = attrs.field(factory=PrivateKey.generate)
    client_token: bytes = attrs.field(factory=lambda: os.urandom(32))
    relay_token: bytes = b""
    relay_pk: bytes = b""
    difficulty: int = 0

    @property
    def hpk(self) -> bytes:
        return h2(bytes(self.identity.public_key))

    def start_body(self) -> bytes:
        return b64encode(self.client_token).encode()

    def start(self) -> tuple[int, bytes]:
        status, body = self.post("start_session", self.start_body())
        if status == 200:
            token, difficulty = body.split(b"\r\n")
            self.relay_token = b64decode(token, 32)
            self.difficulty = int(difficulty)
        return status, body

    def verify_body(self) -> bytes:
        if self.difficulty == 0:
            proof = h2(self.client_token + self.relay_token)
        else:
            proof = solve_pow(self.client_token, self.relay_token, self.difficulty)
        return crlf(b64encode(h2(self.client_token)), b64encode(proof))

    def verify(self) -> tuple[int, bytes]:
        status, body = self.post("verify_session", self.verify_body())
        if status == 200:
            self.relay_pk = b64decode(body, 32)
        return status, body

    def prove_body(self, outer_nonce: bytes | None = None, inner_nonce: bytes | None = None,
                   signed: bytes | None = None) -> bytes:
        session_pk = bytes(self.session_key.public_key)
        relay_pk = PublicKey(self.relay_pk)
        inner_nonce = inner_nonce or make_nonce(self.now())
        outer_nonce = outer_nonce or make_nonce(self.now())
        signed = signed or h2(session_pk + self.relay_token + self.client_token)
        inner = Box(self.identity, relay_pk).encrypt(signed, inner_nonce).ciphertext
        signature = json.dumps({"pub_key": b64encode(bytes(self.identity.public_key)),
                                "nonce": b64encode(inner_nonce), "ctext": b64encode(inner)},
                               separators=(",", ":")).encode()
        outer = Box(self.session_key, relay_pk).encrypt(signature, outer_nonce).ciphertext
        return crlf(b64encode(h2(self.client_token)), b64encode(session_pk),
                    b64encode(outer_nonce), b64encode(outer))

    def prove(self) -> tuple[int, bytes]:
        return self.post("prove", self.prove_body())

    def connect(self) -> int:
        for step in (self.start, self.verify, self.prove):
            status, body = step()
            assert status == 200, (step.__name__, status)
        return int(body)

    @property
    def box(self) -> Box:
        return Box(self.session_key, PublicKey(self.relay_pk))

    def command_body(self, command: dict[str, Any], extra: bytes | None = None,
                     nonce: bytes | None = None) -> bytes:
        nonce = nonce or make_nonce(self.now())
        ctext = self.box.encrypt(json.dumps(command).encode(), nonce).ciphertext
        lines = [b64encode(self.hpk), b64encode(nonce), b64encode(ctext)]
        if extra is not None:
            lines.append(extra)
        return crlf(*lines)

    def command(self, command: dict[str, Any], extra: bytes | None = None) -> tuple[int, bytes]:
        return self.post("command", self.command_body(command, extra))

    def open(self, body: bytes) -> Any:
        """Decrypt an ENC response (the JSON value)."""
        lines = body.split(b"\r\n")
        plain = self.box.decrypt(b64decode(lines[1]), b64decode(lines[0], 24))
        return json.loads(plain)

    def upload(self, to: ZaxClient, ctext: bytes = b"hello", msg_id: bytes | None = None
               ) -> tuple[int, bytes, bytes]:
        msg_id = msg_id or make_nonce(self.now())
        status, body = self.command({"cmd": "upload", "to": b64encode(to.hpk),
                                     "payload": {"nonce": b64encode(msg_id),
                                                 "ctext": b64encode(ctext)}})
        return status, body, msg_id
