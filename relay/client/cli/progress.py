"""A one-line progress bar on stderr: percentage, bytes, rate and ETA.

Shown only when stderr is a terminal (or when forced), so logs and pipes stay clean. The
rate is measured over a sliding window of the last few seconds, so it follows the link's
current speed rather than the average since the start (which a resumed transfer would
distort). Redraws are rate-limited: a fast transfer calls update() thousands of times a
second and the terminal should not be the bottleneck.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

from relay.client.safe_paths import printable_name

_WINDOW = 5.0  # seconds of history behind the rate
_REDRAW = 0.1  # seconds between redraws
_BAR = 24
_NAME = 28


def human_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressBar:
    """Callable as a transfer's progress hook: bar(name, done_bytes, total_bytes); a
    negative total means unknown (a stream): bytes and rate only."""

    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, label: str = "") -> None:
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = enabled
        self.clock = clock
        self.label = label
        self._samples: deque[tuple[float, int]] = deque()
        self._last_draw = -1e18
        self._drawn = False
        self._last: tuple[str, int, int] | None = None

    def rate(self) -> float | None:
        """Bytes per second over the window; None until there are two samples apart."""
        if len(self._samples) < 2:
            return None
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None

    def line(self, name: str, done: int, total: int) -> str:
        if total < 0:
            return self._open_ended_line(name, done)
        fraction = min(1.0, done / total) if total > 0 else 1.0
        filled = int(fraction * _BAR)
        shown = self._shown(name)
        rate = self.rate()
        if rate is None or rate <= 0:
            speed, eta = "-- MB/s", "ETA --:--"
        else:
            speed = f"{human_bytes(rate)}/s"
            eta = f"ETA {human_duration((total - done) / rate)}"
        prefix = f"{self.label} " if self.label else ""
        return (f"{prefix}{shown:<{_NAME}} {fraction * 100:5.1f}% [{'#' * filled:<{_BAR}}] "
                f"{human_bytes(done)}/{human_bytes(total)} {speed} {eta}")

    def _open_ended_line(self, name: str, done: int) -> str:
        """A transfer of unknown total (a stream): bytes and rate, no percentage or ETA."""
        rate = self.rate()
        speed = f"{human_bytes(rate)}/s" if rate is not None and rate > 0 else "-- MB/s"
        prefix = f"{self.label} " if self.label else ""
        return f"{prefix}{self._shown(name):<{_NAME}} {human_bytes(done)} {speed}"

    @staticmethod
    def _shown(name: str) -> str:
        shown = printable_name(name)
        return "..." + shown[-(_NAME - 3):] if len(shown) > _NAME else shown

    def __call__(self, name: str, done: int, total: int) -> None:
        now = self.clock()
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > _WINDOW:
            self._samples.popleft()
        self._last = (name, done, total)
        if not self.enabled:
            return
        if now - self._last_draw < _REDRAW and (total < 0 or done < total):
            return
        self._last_draw = now
        self.stream.write("\r" + self.line(name, done, total) + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def finish(self) -> None:
        """Draw the final state and end the line (if anything was drawn)."""
        if self.enabled and self._last is not None:
            self._last_draw = -1e18
            name, done, total = self._last
            self.stream.write("\r" + self.line(name, done, total) + "\x1b[K")
            self._drawn = True
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
