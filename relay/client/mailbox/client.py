"""A treq client for the Zax mailbox API (docs/zax-wire.md): handshake, commands, file commands.

`MailboxClient(base_url, identity, http=treq)` proves ownership of the identity's hpk to the
relay and then runs commands in that session. It re-handshakes when the relay answers 401
(session expired or relay restarted) and, like glow.ts, 30 seconds before the relay's
20-minute session timeout. Every request has a timeout and a cap on the response size.
`http` is anything with treq's `post` and `collect` (treq itself, or treq.testing.StubTreq
wrapping the relay's resource in tests).
"""

from __future__ import annotations

import os
from typing import Any

import attrs
from nacl.public import Box, PrivateKey, PublicKey
from twisted.internet.defer import CancelledError, DeferredLock, TimeoutError
from twisted.internet.interfaces import IReactorTime

from relay.client.errors import FileNotFoundOnRelay, RelayError, RelayTimeout
from relay.client.http import post_bounded
from relay.client.mailbox import codec
from relay.client.mailbox.pow import solve_pow_in_thread
from relay.crypto import KEY_LEN, NONCE_LEN, TOKEN_LEN, b64encode, h2

MIB = 1024 * 1024
# A download page can hold 100 messages; the relay caps each, this caps the whole answer.
DEFAULT_MAX_RESPONSE = 64 * MIB
DEFAULT_REQUEST_TIMEOUT = 30.0
# Under the relay's 5-minute handshake timeout, so a slow search fails here first.
DEFAULT_POW_TIMEOUT = 240.0
# The relay keeps a session 20 minutes; refresh 30 s early as glow.ts does.
DEFAULT_SESSION_LIFETIME = 20 * 60 - 30
MAX_DELETE_IDS = 100
_MAX_DETAILS = 200


@attrs.frozen
class StartedUpload:
    upload_id: str
    max_chunk_size: int
    storage_token: bytes


@attrs.define
class _Session:
    relay_pk: PublicKey
    box: Box
    established_at: float


def _printable(text: str) -> str:
    """A relay-supplied header, made safe to print: printable ASCII only, bounded."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:_MAX_DETAILS]


class MailboxClient:
    def __init__(self, base_url: str, identity: PrivateKey, *, http: Any = None,
                 reactor: Any = None, clock: IReactorTime | None = None,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
                 pow_timeout: float = DEFAULT_POW_TIMEOUT,
                 session_lifetime: float = DEFAULT_SESSION_LIFETIME,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE,
                 pow_solver: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        if http is None:
            import treq as http
        self.base_url = base_url.rstrip("/")
        self.identity = identity
        self.hpk = h2(bytes(identity.public_key))
        self.http = http
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.request_timeout = request_timeout
        self.pow_timeout = pow_timeout
        self.session_lifetime = session_lifetime
        self.max_response_bytes = max_response_bytes
        # (reactor, client_token, relay_token, difficulty) -> Deferred[bytes]
        self.pow_solver = pow_solver or solve_pow_in_thread
        self._session: _Session | None = None
        self._handshake_lock = DeferredLock()
        self.last_count: int | None = None

    # ---- HTTP ----------------------------------------------------------------------------

    async def _post(self, path: str, body: bytes, what: str) -> bytes:
        """POST body to the relay; the 200 body, or RelayError. Bounded in time and size."""
        answer = await post_bounded(
            self.http, f"{self.base_url}/{path}", body,
            {b"Content-Type": [b"text/plain"], b"Accept": [b"text/plain"]},
            timeout=self.request_timeout, max_bytes=self.max_response_bytes,
            clock=self.clock, what=what)
        if answer.code != 200:
            details = answer.headers.getRawHeaders(b"X-Error-Details", [b""])[0]
            raise RelayError(f"{what} failed", answer.code,
                             _printable(details.decode("latin-1")))
        return answer.body

    # ---- handshake -----------------------------------------------------------------------

    async def start_session(self, client_token: bytes) -> tuple[bytes, int]:
        """Send a client token; (relay_token, difficulty)."""
        body = await self._post("start_session", codec.start_session_body(client_token),
                                "start_session")
        return codec.parse_start_session(body)

    async def verify_session(self, client_token: bytes, relay_token: bytes,
                             difficulty: int) -> PublicKey:
        """Prove the handshake (with proof of work above difficulty 0); the relay's session
        public key."""
        pow_nonce = None
        if difficulty > 0:
            search = self.pow_solver(self.reactor, client_token, relay_token, difficulty)
            search.addTimeout(self.pow_timeout, self.clock)
            try:
                pow_nonce = await search
            except (TimeoutError, CancelledError):
                raise RelayTimeout(f"verify_session: proof of work at difficulty "
                                   f"{difficulty} took over {self.pow_timeout:g} s") from None
        proof = codec.session_proof(client_token, relay_token, difficulty, pow_nonce)
        body = await self._post("verify_session",
                                codec.verify_session_body(client_token, proof),
                                "verify_session")
        return codec.parse_verify_session(body)

    async def prove(self, client_token: bytes, relay_token: bytes,
                    relay_pk: PublicKey) -> int:
        """Prove the identity to the relay with a fresh session key pair; the mailbox count.
        From here on, commands run in this session."""
        session_sk = PrivateKey.generate()
        body = codec.prove_body(client_token=client_token, relay_token=relay_token,
                                relay_session_pk=relay_pk, client_session_sk=session_sk,
                                identity_sk=self.identity, now=self.clock.seconds())
        answer = await self._post("prove", body, "prove")
        count = codec.parse_count_line(answer, "prove")
        self._session = _Session(relay_pk=relay_pk, box=Box(session_sk, relay_pk),
                                 established_at=self.clock.seconds())
        self.last_count = count
        return count

    async def connect(self) -> int:
        """The whole handshake (start_session, verify_session, prove); the mailbox count."""
        client_token = os.urandom(TOKEN_LEN)
        relay_token, difficulty = await self.start_session(client_token)
        relay_pk = await self.verify_session(client_token, relay_token, difficulty)
        return await self.prove(client_token, relay_token, relay_pk)

    def forget_session(self) -> None:
        self._session = None

    async def _ensure_session(self) -> _Session:
        session = self._session
        if session is not None and \
                self.clock.seconds() - session.established_at < self.session_lifetime:
            return session
        # One handshake at a time: commands that queue up behind it reuse its session.
        async with self._handshake_lock:
            if self._session is session or self._session is None:
                await self.connect()
        assert self._session is not None
        return self._session

    # ---- commands --------------------------------------------------------------------------

    async def _command(self, command: dict[str, Any], what: str,
                       extra_line: bytes | None = None) -> tuple[list[str], Box]:
        """Run a command in the session; the response lines (count checked by the caller)
        and the session box that opens them.
        A 401 means the relay lost the session and did nothing: handshake again, retry once."""
        for attempt in range(2):
            session = await self._ensure_session()
            body = codec.command_body(hpk=self.hpk, command=command, session_box=session.box,
                                      now=self.clock.seconds(), extra_line=extra_line)
            try:
                answer = await self._post("command", body, what)
            except RelayError as e:
                if e.status == 401 and attempt == 0:
                    if self._session is session:
                        self._session = None
                    continue
                raise
            return self._lines(answer, what), session.box
        raise AssertionError("unreachable")

    @staticmethod
    def _lines(answer: bytes, what: str) -> list[str]:
        if not answer:
            raise RelayError(f"{what}: empty response from the relay")
        try:
            return answer.decode("ascii").split("\r\n")
        except UnicodeDecodeError:
            raise RelayError(f"{what}: the relay's response is not ASCII") from None

    async def _encrypted(self, command: dict[str, Any], what: str) -> Any:
        lines, box = await self._command(command, what)
        return _open(lines, box, what, codec.ENC_LINES)

    async def _plain(self, command: dict[str, Any], what: str) -> str:
        lines, _box = await self._command(command, what)
        if len(lines) != codec.PLAIN_LINES:
            raise RelayError(f"{what}: expected 1 response line, got {len(lines)}")
        return lines[0]

    async def count(self) -> int:
        value = await self._encrypted({"cmd": "count"}, "count")
        return _whole_number(value, "count")

    async def upload(self, to_hpk: bytes, payload: dict[str, str] | str) -> bytes:
        """Leave a message for to_hpk; its storage token. payload is {nonce, ctext} (nonce =
        message id) or a string (the relay picks the id)."""
        _check_len(to_hpk, KEY_LEN, "to_hpk")
        line = await self._plain({"cmd": "upload", "to": b64encode(to_hpk), "payload": payload},
                                 "upload")
        return codec.decode_field(line, KEY_LEN, "upload")

    async def download(self, start: int | None = None,
                       count: int | None = None) -> list[dict[str, Any]]:
        """Messages in the mailbox, oldest first: {data, time, from, nonce, kind} each."""
        command: dict[str, Any] = {"cmd": "download"}
        if start is not None:
            command["start"] = start
        if count is not None:
            command["count"] = count
        value = await self._encrypted(command, "download")
        if not isinstance(value, list) or not all(_is_message(m) for m in value):
            raise RelayError("download: the relay's answer is not a list of messages")
        return value

    async def message_status(self, token: bytes) -> int:
        """Seconds the message with this storage token has left to live; -2 if gone."""
        _check_len(token, KEY_LEN, "token")
        line = await self._plain({"cmd": "messageStatus", "token": b64encode(token)},
                                 "messageStatus")
        return codec.parse_int(line, "messageStatus")

    async def delete(self, msg_ids: list[bytes]) -> int:
        """Delete messages by id (at most 100 per call); the number of messages left."""
        if len(msg_ids) > MAX_DELETE_IDS:
            raise ValueError(f"at most {MAX_DELETE_IDS} ids per delete")
        for msg_id in msg_ids:
            _check_len(msg_id, NONCE_LEN, "message id")
        line = await self._plain({"cmd": "delete", "payload": [b64encode(i) for i in msg_ids]},
                                 "delete")
        return codec.parse_int(line, "delete")

    async def get_entropy(self, size: int) -> bytes:
        line = await self._plain({"cmd": "getEntropy", "size": size}, "getEntropy")
        value = codec.parse_json(codec.decode_field(line, None, "getEntropy"), "getEntropy")
        if not isinstance(value, dict) or not isinstance(value.get("entropy"), str):
            raise RelayError("getEntropy: no entropy in the relay's answer")
        return codec.decode_field(value["entropy"], size, "getEntropy")

    # ---- file commands ---------------------------------------------------------------------

    async def start_file_upload(self, to_hpk: bytes, file_size: int,
                                metadata: dict[str, str]) -> StartedUpload:
        """Announce a file for to_hpk; metadata is {ctext, nonce}, boxed to the recipient."""
        _check_len(to_hpk, KEY_LEN, "to_hpk")
        value = await self._encrypted({"cmd": "startFileUpload", "to": b64encode(to_hpk),
                                       "file_size": file_size, "metadata": metadata},
                                      "startFileUpload")
        if not isinstance(value, dict) or not isinstance(value.get("uploadID"), str) \
                or not isinstance(value.get("storage_token"), str):
            raise RelayError("startFileUpload: unexpected answer from the relay")
        return StartedUpload(
            upload_id=value["uploadID"],
            max_chunk_size=_whole_number(value.get("max_chunk_size"), "startFileUpload"),
            storage_token=codec.decode_field(value["storage_token"], KEY_LEN,
                                             "startFileUpload"))

    async def upload_file_chunk(self, upload_id: str, part: int, nonce: bytes,
                                ciphertext: bytes, last_chunk: bool) -> None:
        """Store one encrypted chunk (secretbox ciphertext, its nonce) of an upload."""
        _check_len(nonce, NONCE_LEN, "chunk nonce")
        lines, box = await self._command({"cmd": "uploadFileChunk", "uploadID": upload_id,
                                     "part": part, "last_chunk": last_chunk,
                                     "nonce": b64encode(nonce)},
                                    "uploadFileChunk", extra_line=ciphertext)
        _expect_ok(_open(lines, box, "uploadFileChunk", codec.ENC_LINES), "uploadFileChunk")

    async def file_status(self, upload_id: str) -> dict[str, Any]:
        """{status: START/UPLOADING/COMPLETE/NOT_FOUND, file_size, bytes_stored, ...}."""
        value = await self._encrypted({"cmd": "fileStatus", "uploadID": upload_id},
                                      "fileStatus")
        if not isinstance(value, dict) or not isinstance(value.get("status"), str):
            raise RelayError("fileStatus: unexpected answer from the relay")
        return value

    async def download_file_chunk(self, upload_id: str, part: int) -> tuple[bytes, bytes]:
        """(nonce, secretbox ciphertext) of one chunk; FileNotFoundOnRelay if the file is gone."""
        what = "downloadFileChunk"
        lines, box = await self._command({"cmd": what, "uploadID": upload_id, "part": part},
                                         what)
        if len(lines) == codec.ENC_LINES:
            value = _open(lines, box, what, codec.ENC_LINES)
            if isinstance(value, dict) and value.get("status") == "NOT_FOUND":
                raise FileNotFoundOnRelay(f"{what}: the relay has no such file")
            raise RelayError(f"{what}: the relay sent no chunk")
        value = _open(lines, box, what, codec.CHUNK_LINES)
        if not isinstance(value, dict) or not isinstance(value.get("nonce"), str):
            raise RelayError(f"{what}: no chunk nonce in the relay's answer")
        nonce = codec.decode_field(value["nonce"], NONCE_LEN, what)
        return nonce, codec.decode_field(lines[2], None, what)

    async def delete_file(self, upload_id: str) -> bool:
        """Delete a file's chunks; False if the relay did not know it."""
        value = await self._encrypted({"cmd": "deleteFile", "uploadID": upload_id},
                                      "deleteFile")
        if isinstance(value, dict) and value.get("status") == "NOT_FOUND":
            return False
        _expect_ok(value, "deleteFile")
        return True


def _open(lines: list[str], box: Box, what: str, expected: int) -> Any:
    if len(lines) != expected:
        raise RelayError(f"{what}: expected {expected} response lines, got {len(lines)}")
    return codec.open_encrypted(lines[:2], box, what)


def _whole_number(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RelayError(f"{what}: expected a whole number from the relay")
    return value


def _is_message(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("from"), str) \
        and isinstance(value.get("nonce"), str) and "data" in value


def _expect_ok(value: Any, what: str) -> None:
    if isinstance(value, dict) and value.get("status") == "NOT_FOUND":
        raise FileNotFoundOnRelay(f"{what}: the relay has no such file")
    if not isinstance(value, dict) or value.get("status") != "OK":
        raise RelayError(f"{what}: unexpected answer from the relay")


def _check_len(value: bytes, length: int, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        raise ValueError(f"{what} must be {length} bytes")
