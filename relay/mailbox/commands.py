"""/command: open the session box, dispatch to a command handler, box the answer."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from twisted.internet.interfaces import IReactorTime

from relay.config import MailboxConfig
from relay.crypto import KEY_LEN, NONCE_LEN, b64encode, make_nonce
from relay.mailbox.claims import ClaimingMailbox, SessionChanged, SessionsSeen
from relay.mailbox.nonces import NonceGuard
from relay.mailbox.wire import decode_field, split_lines
from relay.store import Store
from relay.store.interfaces.sessions import Session
from relay.web.errors import HTTPError, bad_request, unauthorized
from relay.web.jsonbody import JSONBodyError, parse_json


@attrs.define
class CommandContext:
    """What a handler knows of the request: who asks, the parsed command, the 4th line."""

    hpk: bytes
    box: Box
    clock: IReactorTime
    data: dict[str, Any]
    extra_line: bytes | None
    # The client's network (HTTPConfig.client_key), for per-client quotas and rates.
    client: str = ""
    # The mailbox store's methods, for handlers registered with claims_with_mailbox: the
    # first call may carry the session check and nonce claim (relay.mailbox.claims).
    mailbox: Any = None

    def encrypted(self, value: Any, *more_lines: str) -> list[str]:
        """ENC response: a fresh nonce and the boxed compact JSON of value (plus extra lines)."""
        nonce = make_nonce(self.clock.seconds())
        text = value if isinstance(value, bytes) else json_bytes(value)
        return [b64encode(nonce), b64encode(self.box.encrypt(text, nonce).ciphertext), *more_lines]


Handler = Callable[[CommandContext], Awaitable[list[str]]]


@functools.lru_cache(maxsize=4096)
def session_box(relay_sk: bytes, client_pk: bytes) -> Box:
    """The session's Box; building one costs a Curve25519 multiplication, so active sessions
    keep theirs (bounded: the least recently used are dropped)."""
    return Box(PrivateKey(relay_sk), PublicKey(client_pk))


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class CommandProcessor:
    """Parses /command bodies and runs the named handler; handlers are registered by name."""

    def __init__(self, config: MailboxConfig, store: Store, clock: IReactorTime,
                 max_json: int = 1024 * 1024) -> None:
        self.store = store
        self.clock = clock
        # The longest command JSON parsed (the body cap bounds it too).
        self.max_json = max_json
        self.nonces = NonceGuard(config, store, clock)
        self.handlers: dict[str, Handler] = {}
        # Commands that take a 4th line (the file chunk of uploadFileChunk).
        self.takes_extra_line: set[str] = set()
        # Commands whose first store effect is a ctx.mailbox call (or none at all).
        self.claims_with_mailbox: set[str] = set()
        # Sessions seen here, for the one-round-trip path (/prove adds its own).
        self.sessions_seen = SessionsSeen()

    def register(self, name: str, handler: Handler, *, extra_line: bool = False,
                 claims_with_mailbox: bool = False) -> None:
        self.handlers[name] = handler
        if extra_line:
            self.takes_extra_line.add(name)
        if claims_with_mailbox:
            self.claims_with_mailbox.add(name)

    async def run(self, body: bytes, client: str = ""
                  ) -> tuple[bytes | None, str | None, list[str]]:
        """Returns (hpk, command name, response lines); raises HTTPError."""
        lines = split_lines(body, 4)
        if len(lines) not in (3, 4) or len(lines[0]) != 44 or len(lines[1]) != 32:
            raise bad_request("expected hpk, nonce and ciphertext lines")
        hpk = decode_field(lines[0], KEY_LEN, "hpk")
        nonce = decode_field(lines[1], NONCE_LEN, "nonce")
        ctext = decode_field(lines[2], None, "ciphertext")
        self.nonces.check_time(nonce)
        remembered = self.sessions_seen.get(hpk)
        if remembered is not None:
            try:
                return await self._run_in_one_trip(hpk, remembered, nonce, ctext, lines, client)
            except SessionChanged:
                self.sessions_seen.forget(hpk)
        # Claiming the nonce before the box is opened saves a store round trip; it cannot
        # burn a client's future nonce: those are unpredictable (16 random bytes).
        session, fresh = await self.store.sessions.get_session_claiming_nonce(
            hpk, nonce, self.nonces.remember_for)
        if session is None:
            raise unauthorized("no session for this hpk")
        box = session_box(session.relay_sk, session.client_pk)
        try:
            plain = box.decrypt(ctext, nonce)
        except CryptoError:
            # The client's session key does not match ours (a newer /prove replaced it):
            # 401 makes clients handshake again.
            raise unauthorized("the command box does not open with this session") from None
        if not fresh:
            raise bad_request("nonce replayed")  # 400 as in Zax, like a stale nonce
        self.sessions_seen.remember(hpk, session)
        data, name, handler, extra_line = self._dispatch(plain, lines)
        context = CommandContext(hpk, box, self.clock, data, extra_line, client,
                                 self.store.mailbox)
        return hpk, name, await handler(context)

    async def _run_in_one_trip(self, hpk: bytes, session: Session, nonce: bytes, ctext: bytes,
                               lines: list[bytes], client: str
                               ) -> tuple[bytes | None, str | None, list[str]]:
        """The command with the session this node remembers for hpk: the session check and
        nonce claim ride along with its first mailbox call. Raises SessionChanged, having
        changed nothing, when the store has another session (or none)."""
        box = session_box(session.relay_sk, session.client_pk)
        try:
            plain = box.decrypt(ctext, nonce)
        except CryptoError:
            raise SessionChanged() from None  # perhaps a newer session: ask the store
        data, name, handler, extra_line = self._dispatch(plain, lines)
        mailbox = ClaimingMailbox(self.store, hpk, session, nonce, self.nonces.remember_for)
        if name not in self.claims_with_mailbox:
            await mailbox.settle()  # before the handler's own store calls
        context = CommandContext(hpk, box, self.clock, data, extra_line, client, mailbox)
        lines_out = await handler(context)
        await mailbox.settle()
        return hpk, name, lines_out

    def _dispatch(self, plain: bytes, lines: list[bytes]
                  ) -> tuple[dict[str, Any], str, Handler, bytes | None]:
        data = _parse_command(plain, self.max_json)
        name = data["cmd"]
        handler = self.handlers.get(name)
        if handler is None:
            raise HTTPError(405, f"command {name} is disabled") if name in DISABLED_FILE_COMMANDS \
                else bad_request("unknown command")
        extra_line = lines[3] if len(lines) == 4 else None
        if extra_line is not None and name not in self.takes_extra_line:
            raise bad_request(f"{name} takes no fourth line")
        return data, name, handler, extra_line


# Answered with 405 when the file store is disabled (and so no handler is registered).
DISABLED_FILE_COMMANDS = frozenset({
    "startFileUpload", "uploadFileChunk", "fileStatus", "downloadFileChunk", "deleteFile"})


def _parse_command(plain: bytes, max_bytes: int) -> dict[str, Any]:
    try:
        data = parse_json(plain, max_bytes)
    except JSONBodyError as e:
        raise bad_request(f"the command is not JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cmd"), str):
        raise bad_request("the command must be a JSON object with a cmd")
    return data
