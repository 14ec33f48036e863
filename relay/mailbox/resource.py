"""The mailbox API as twisted.web resources: one per endpoint, POST only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request

from relay.config import HTTPConfig, RelayConfig
from relay.mailbox.commands import CommandProcessor
from relay.mailbox.handshake import SessionHandshake
from relay.mailbox.messages import MessageCommands
from relay.mailbox.wire import join_lines
from relay.store import Store
from relay.web.respond import serve, text_replies
from relay.web.root import refuse

_REPLIES = text_replies()

# An endpoint's work: the body and the client's key (HTTPConfig.client_key) in,
# (response lines, what to log) out.
Step = Callable[[bytes, str], Awaitable[tuple[list[str], str]]]


def log_id(key: bytes | None) -> str:
    """A short prefix of a hash, enough to follow one client through the log, no more."""
    return key[:4].hex() if key else "-"


class MailboxEndpoint(Resource):
    isLeaf = True

    def __init__(self, name: str, step: Step, max_body: int, config: HTTPConfig) -> None:
        super().__init__()
        self.name = name
        self.step = step
        self.max_body = max_body
        self.config = config
        self.endpoint = "/" + name

    def render(self, request: Request) -> object:
        if request.method != b"POST":
            return refuse(request)
        client = self.config.client_key(request.getClientAddress().host)

        async def work(body: bytes) -> tuple[bytes, str]:
            lines, detail = await self.step(body, client)
            return join_lines(*lines), detail

        # Not cancelled when the client goes away: a command's store updates run to their
        # end (they are short, bounded by the store's operation timeout).
        return serve(request, work, endpoint=self.endpoint, max_body=self.max_body,
                     replies=_REPLIES)


async def _handshake_step(step: Callable, body: bytes, client: str) -> tuple[list[str], str]:
    key, lines = await step(body, client=client)
    return lines, log_id(key)


async def _command_step(processor: CommandProcessor, body: bytes,
                        client: str) -> tuple[list[str], str]:
    hpk, name, lines = await processor.run(body, client=client)
    return lines, f"{name} {log_id(hpk)}"


def build_mailbox(config: RelayConfig, store: Store, clock: IReactorTime
                  ) -> tuple[dict[bytes, Resource], CommandProcessor, SessionHandshake]:
    """The mailbox API's children of the root, the processor file commands plug into, and
    the handshake (whose difficulty the usage log reads)."""
    handshake = SessionHandshake(config.mailbox, store, clock)
    processor = CommandProcessor(config.mailbox, store, clock,
                                 max_json=config.http.max_command_body)
    handshake.sessions_seen = processor.sessions_seen
    MessageCommands(config.mailbox, store).register(processor)
    small = config.http.max_small_body
    children: dict[bytes, Resource] = {
        b"command": MailboxEndpoint("command", partial(_command_step, processor),
                                    config.http.max_command_body, config.http),
    }
    for name in ("start_session", "verify_session", "prove"):
        step = partial(_handshake_step, getattr(handshake, name))
        children[name.encode()] = MailboxEndpoint(name, step, small, config.http)
    return children, processor, handshake
