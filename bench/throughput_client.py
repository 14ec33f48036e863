"""Bytes through one connected pair: how fast, and what the server spent on them.

    result = measure(open_pair, 2**30, server_pid)

`open_pair()` (see bench/stream_pairs.py) gives the two ends, already past their system's
handshake. Two processes are forked, a sender and a receiver, each keeping one end; the
sender writes `nbytes` in 1 MiB `sendall`s, the receiver reads them with 1 MiB `recv_into`s.
MB/s (10^6 bytes) is the bytes over the time from the sender's first write to the
receiver's last read (CLOCK_MONOTONIC is one clock for every process). The server's CPU
(it and its live descendants, from /proc) is read once both ends are ready and again when
the receiver has every byte, before either end closes; clients' CPU from getrusage.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import socket
import time
import zlib
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from bench.proc_stats import rss_kib, tree_cpu_seconds

CHUNK = 1 << 20
# However loaded the machine, 1 GiB over loopback takes far less than this.
DEADLINE = 600.0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _receiver(control: Connection, sock: socket.socket, other: socket.socket, nbytes: int,
              verify: bool) -> None:
    other.close()
    sock.settimeout(None)
    buffer = memoryview(bytearray(CHUNK))
    received, crc = 0, 0
    control.send("ready")
    cpu = _cpu()
    while received < nbytes:
        count = sock.recv_into(buffer, min(CHUNK, nbytes - received))
        if not count:
            break
        if verify:
            crc = zlib.crc32(buffer[:count], crc)
        received += count
    control.send({"t1": time.monotonic(), "received": received, "crc": crc,
                  "cpu_s": _cpu() - cpu})
    control.recv()  # close
    sock.close()


def _sender(control: Connection, sock: socket.socket, other: socket.socket, nbytes: int,
            verify: bool) -> None:
    other.close()
    sock.settimeout(None)
    block = memoryview(os.urandom(CHUNK))
    control.send("ready")
    control.recv()  # go
    cpu = _cpu()
    t0 = time.monotonic()
    sent, crc = 0, 0
    while sent < nbytes:
        count = min(CHUNK, nbytes - sent)
        sock.sendall(block[:count])
        if verify:
            crc = zlib.crc32(block[:count], crc)
        sent += count
    control.send({"t0": t0, "crc": crc, "cpu_s": _cpu() - cpu})
    control.recv()  # close
    sock.close()


def _expect(control: Connection, deadline: float) -> Any:
    if not control.poll(max(0.0, deadline - time.monotonic())):
        raise TimeoutError("a benchmark client did not answer in time")
    return control.recv()


def measure(open_pair: Callable[[], tuple[socket.socket, socket.socket]], nbytes: int,
            server_pid: int | None, *, verify: bool = False) -> dict[str, Any]:
    """One transfer of `nbytes` from sender to receiver; a dict of what was measured."""
    context = multiprocessing.get_context("fork")
    a, b = open_pair()
    deadline = time.monotonic() + DEADLINE
    to_receiver, receiver_end = context.Pipe()
    to_sender, sender_end = context.Pipe()
    receiver = context.Process(target=_receiver, args=(receiver_end, b, a, nbytes, verify))
    sender = context.Process(target=_sender, args=(sender_end, a, b, nbytes, verify))
    try:
        receiver.start()
        sender.start()
        a.close()
        b.close()
        assert _expect(to_receiver, deadline) == "ready"
        assert _expect(to_sender, deadline) == "ready"
        cpu0 = tree_cpu_seconds(server_pid) if server_pid else None
        to_sender.send("go")
        done = _expect(to_receiver, deadline)
        cpu1 = tree_cpu_seconds(server_pid) if server_pid else None
        rss = rss_kib(server_pid) if server_pid else None
        sent = _expect(to_sender, deadline)
        for control in (to_sender, to_receiver):
            control.send("close")
    finally:
        for process in (sender, receiver):
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()
    seconds = done["t1"] - sent["t0"]
    result: dict[str, Any] = {
        "bytes": nbytes, "received": done["received"], "seconds": seconds,
        "MBps": done["received"] / seconds / 1e6,
        "server_cpu_s": None if cpu0 is None else cpu1 - cpu0,
        "server_cpu_s_per_GiB": None if cpu0 is None else (cpu1 - cpu0) / (nbytes / 2**30),
        "server_rss_kib": rss,
        "sender_cpu_s": sent["cpu_s"], "receiver_cpu_s": done["cpu_s"],
    }
    if verify:
        result["intact"] = sent["crc"] == done["crc"] and done["received"] == nbytes
    if done["received"] != nbytes:
        result["error"] = f"short transfer: {done['received']} of {nbytes} bytes"
    return result
