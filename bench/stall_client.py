"""Backpressure: a receiver that never reads. How much does the sender get rid of before it
stalls, and does the server's memory grow meanwhile?

    result = stall(open_pair, server_pid)

The sender writes without blocking until nothing has been accepted for `quiet` seconds (or
`limit` bytes went: no backpressure). A server that pushes back holds at most its own
buffers plus the kernel's socket buffers on both legs; one that reads on regardless
buffers everything in its memory. RSS is the server's and its children's (socat forks one
per connection).
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable
from typing import Any

from bench.proc_stats import tree_rss_kib

SETTLE = 0.5


def stall(open_pair: Callable[[], tuple[socket.socket, socket.socket]], server_pid: int | None,
          *, quiet: float = 2.0, limit: int = 512 * 2**20) -> dict[str, Any]:
    sender, receiver = open_pair()
    try:
        time.sleep(SETTLE)
        before = tree_rss_kib(server_pid) if server_pid else None
        sender.setblocking(False)
        block = memoryview(bytes(2**20))
        accepted, last = 0, time.monotonic()
        while accepted < limit and time.monotonic() - last < quiet:
            try:
                accepted += sender.send(block)
                last = time.monotonic()
            except BlockingIOError:
                select.select([], [sender], [], quiet / 10)
        time.sleep(SETTLE)  # let the server act on what it was given
        after = tree_rss_kib(server_pid) if server_pid else None
    finally:
        sender.close()
        receiver.close()
    return {"accepted_bytes": accepted, "stalled": accepted < limit,
            "server_rss_kib_before": before, "server_rss_kib_after": after,
            "server_rss_growth_kib": None if before is None else after - before}
