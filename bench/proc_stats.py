"""What a server process costs, from /proc (Linux): CPU of it and its live descendants
(socat forks a child per connection), resident memory, open descriptors."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return children


def _tree(pid: int) -> list[int]:
    """The process and its live descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += _children(current)
    return found


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of the process and its live descendants (10 ms resolution)."""
    return sum(_cpu(p) for p in _tree(pid))


def tree_rss_kib(pid: int) -> int:
    """VmRSS summed over the process and its live descendants (pages a fork shares with its
    parent count twice: use for deltas)."""
    total = 0
    for p in _tree(pid):
        try:
            total += rss_kib(p)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_kib(pid: int) -> int:
    return status_kib(pid, "VmRSS")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
