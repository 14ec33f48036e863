"""A small in-memory Zax relay for the client's tests, written from docs/zax-wire.md.

It checks what the spec fixes byte by byte (line counts and lengths, the prove JSON, the
nonces and boxes) and implements just enough commands to drive the client. The relay's real
resource (relay.mailbox.resource) is tested against the client separately once it exists.
"""

from __future__ import annotations

import json
import os

from nacl.public import Box, PrivateKey, PublicKey
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from relay.crypto import b64decode, b64encode, h2, meets_difficulty


class ZaxDouble(Resource):
    isLeaf = True

    def __init__(self, difficulty: int = 0) -> None:
        super().__init__()
        self.difficulty = difficulty
        self.handshakes: dict[bytes, tuple[bytes, bytes, PrivateKey | None]] = {}
        self.sessions: dict[bytes, Box] = {}
        self.mailboxes: dict[bytes, list[dict]] = {}
        self.files: dict[str, dict] = {}
        self.requests: list[tuple[bytes, bytes]] = []
        self.hang = False  # never answer (timeouts)
        self.proves = 0

    def render_POST(self, request):
        body = request.content.read()
        self.requests.append((request.path, body))
        if self.hang:
            return NOT_DONE_YET
        lines = body.decode("ascii").split("\r\n")
        handler = {b"/start_session": self.start_session, b"/verify_session": self.verify,
                   b"/prove": self.prove, b"/command": self.command}.get(request.path)
        try:
            result = handler(lines)
        except _Status as e:
            request.setResponseCode(e.code)
            return b""
        return "\r\n".join(result).encode("ascii")

    def start_session(self, lines):
        (token_line,) = lines
        client_token = b64decode(token_line, 32)
        relay_token = os.urandom(32)
        self.handshakes[h2(client_token)] = (client_token, relay_token, None)
        return [b64encode(relay_token), str(self.difficulty)]

    def verify(self, lines):
        hct, proof = lines
        assert len(hct) == 44 and len(proof) == 44
        state = self.handshakes.get(b64decode(hct, 32))
        if state is None:
            raise _Status(401)
        client_token, relay_token, _ = state
        x = b64decode(proof, 32)
        if self.difficulty == 0:
            ok = x == h2(client_token + relay_token)
        else:
            ok = meets_difficulty(h2(client_token + relay_token + x), self.difficulty)
        if not ok:
            raise _Status(401)
        relay_sk = PrivateKey.generate()
        self.handshakes[b64decode(hct, 32)] = (client_token, relay_token, relay_sk)
        return [b64encode(bytes(relay_sk.public_key))]

    def prove(self, lines):
        assert [len(x) for x in lines] == [44, 44, 32, 256], [len(x) for x in lines]
        state = self.handshakes.pop(b64decode(lines[0], 32), None)
        if state is None or state[2] is None:
            raise _Status(401)
        client_token, relay_token, relay_sk = state
        client_session_pk = b64decode(lines[1], 32)
        outer = Box(relay_sk, PublicKey(client_session_pk))
        proof_json = outer.decrypt(b64decode(lines[3]), b64decode(lines[2], 24))
        assert len(proof_json) == 176
        proof = json.loads(proof_json)
        assert list(proof) == ["pub_key", "nonce", "ctext"]
        identity_pk = b64decode(proof["pub_key"], 32)
        inner = Box(relay_sk, PublicKey(identity_pk)).decrypt(
            b64decode(proof["ctext"]), b64decode(proof["nonce"], 24))
        assert inner == h2(client_session_pk + relay_token + client_token)
        hpk = h2(identity_pk)
        self.sessions[hpk] = outer
        self.proves += 1
        return [str(len(self.mailboxes.get(hpk, [])))]

    def command(self, lines):
        assert len(lines) in (3, 4)
        assert len(lines[0]) == 44 and len(lines[1]) == 32
        hpk = b64decode(lines[0], 32)
        box = self.sessions.get(hpk)
        if box is None:
            raise _Status(401)
        nonce = b64decode(lines[1], 24)
        cmd = json.loads(box.decrypt(b64decode(lines[2]), nonce))

        def enc(value):
            n = os.urandom(24)
            return [b64encode(n), b64encode(box.encrypt(json.dumps(value).encode(), n).ciphertext)]

        name = cmd["cmd"]
        mailbox = self.mailboxes.setdefault(hpk, [])
        if name == "count":
            return enc(len(mailbox))
        if name == "upload":
            payload = cmd["payload"]
            msg_id = payload["nonce"]
            data = payload["ctext"]
            self.mailboxes.setdefault(b64decode(cmd["to"], 32), []).append(
                {"data": data, "time": 1.5, "from": b64encode(hpk), "nonce": msg_id,
                 "kind": "message"})
            return [b64encode(h2((cmd["to"] + msg_id).encode("ascii")))]
        if name == "download":
            start = cmd.get("start", 0)
            return enc(mailbox[start:start + min(cmd.get("count", 100), 100)])
        if name == "messageStatus":
            return ["300"]
        if name == "delete":
            ids = set(cmd["payload"])
            mailbox[:] = [m for m in mailbox if m["nonce"] not in ids]
            return [str(len(mailbox))]
        if name == "getEntropy":
            return [b64encode(json.dumps({"entropy": b64encode(os.urandom(cmd["size"]))})
                              .encode())]
        if name == "startFileUpload":
            upload_id = b64encode(os.urandom(32))
            self.files[upload_id] = {"chunks": {}, "complete": False,
                                     "size": cmd["file_size"]}
            to = b64decode(cmd["to"], 32)
            meta = cmd["metadata"]
            self.mailboxes.setdefault(to, []).append(
                {"data": json.dumps({"ctext": meta["ctext"], "nonce": meta["nonce"],
                                     "uploadID": upload_id}),
                 "time": 2.0, "from": b64encode(hpk), "nonce": meta["nonce"], "kind": "file"})
            return enc({"uploadID": upload_id, "max_chunk_size": 512000,
                        "storage_token": b64encode(os.urandom(32))})
        f = self.files.get(cmd.get("uploadID"))
        if name == "uploadFileChunk":
            if f is None:
                return enc({"status": "NOT_FOUND"})
            f["chunks"][cmd["part"]] = (cmd["nonce"], lines[3])
            f["complete"] = f["complete"] or cmd["last_chunk"]
            return enc({"status": "OK"})
        if name == "fileStatus":
            if f is None:
                return enc({"status": "NOT_FOUND", "file_size": 0, "bytes_stored": 0})
            status = "COMPLETE" if f["complete"] else "UPLOADING" if f["chunks"] else "START"
            return enc({"status": status, "file_size": f["size"],
                        "bytes_stored": sum(len(b64decode(c)) for _, c in f["chunks"].values()),
                        "total_chunks": len(f["chunks"])})
        if name == "downloadFileChunk":
            if f is None:
                return enc({"status": "NOT_FOUND"})
            if cmd["part"] not in f["chunks"]:
                raise _Status(400)
            chunk_nonce, chunk = f["chunks"][cmd["part"]]
            return enc({"nonce": chunk_nonce}) + [chunk]
        if name == "deleteFile":
            if self.files.pop(cmd["uploadID"], None) is None:
                return enc({"status": "NOT_FOUND"})
            return enc({"status": "OK"})
        raise _Status(400)


class _Status(Exception):
    def __init__(self, code: int) -> None:
        self.code = code
