"""The embedded store: everything in this process's memory, bounded and expiring."""

from __future__ import annotations

from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime

from relay.config import StoreConfig
from relay.store.memory.budget import ByteBudget
from relay.store.memory.channels import MemoryChannelStore
from relay.store.memory.files import MemoryFileStore
from relay.store.memory.mailbox import MemoryMailboxStore
from relay.store.memory.sessions import MemorySessionStore


class MemoryBackend:
    """What every memory table shares: the clock and the byte budget."""

    def __init__(self, config: StoreConfig, clock: IReactorTime) -> None:
        self.config = config
        self.clock = clock
        self.budget = ByteBudget(config.memory_max_bytes)
        self.sweepers: list = []
        self.mailbox: MemoryMailboxStore | None = None

    def usage(self) -> dict:
        mailbox = self.mailbox
        return {"kind": "memory", "used_bytes": self.budget.used, "limit_bytes": self.budget.limit,
                "message_bytes": mailbox.size if mailbox else 0,
                "messages": mailbox.messages if mailbox else 0}

    def sweep(self) -> None:
        for sweep in self.sweepers:
            sweep()

    def make_service(self) -> TimerService:
        service = TimerService(self.config.sweep_interval, self.sweep)
        service.clock = self.clock
        return service


def open_memory_tables(backend: MemoryBackend) -> dict:
    mailbox = MemoryMailboxStore(backend.clock.seconds, backend.budget)
    sessions = MemorySessionStore(backend.clock.seconds, backend.config.memory_max_handshakes,
                                  mailbox)
    backend.mailbox = mailbox
    channels = MemoryChannelStore(backend.clock.seconds)
    files = MemoryFileStore(backend.clock.seconds, backend.budget)
    backend.sweepers += [sessions.sweep, mailbox.sweep, channels.sweep, files.sweep]
    return {"sessions": sessions, "mailbox": mailbox, "channels": channels, "files": files}
