"""Adaptive proof of work: the difficulty /start_session announces rises with the handshake rate.

The relay paper's load control (and deployed Zax's): the busier the relay, the more work a
handshake costs. The rule, kept simple enough to explain to an operator:

- The rate is handshakes per second on this node over the last `difficulty_window` seconds.
- Up to `difficulty_target_rate` the difficulty is the configured `difficulty` (the floor).
  Above it, one more bit for each doubling of the rate: up to 2x the target +1 bit, up to 4x
  +2, up to 8x +3 ... never above `max_difficulty`.
- It rises at once. It falls only once the rate has stayed below half of what the current
  level needs for `difficulty_cooldown` seconds (hysteresis: a rate hovering at a threshold
  does not flap, and a flood that pauses does not find the door open), and then to the level
  that twice the rate would ask for.
- A client network handshaking faster than `difficulty_client_rate` on its own pays extra
  bits on top, by the same one-bit-per-doubling rule. Its counts live in a fixed-size
  count-min sketch: bounded memory whatever the number of clients, and a client cannot reset
  its count by churning others out (collisions only ever over-count).

Everything is O(1) per handshake and driven by the injected clock: no timers. The level is
re-evaluated when a handshake arrives or someone asks (`current()`), so a fall after a flood
shows on the next handshake or the next periodic look.
"""

from __future__ import annotations

import hashlib
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable

from twisted.logger import Logger

from relay.config import MailboxConfig

log = Logger(namespace="relay.pow")

# Rows of the per-client count-min sketch: each client lands in one cell per row, and its
# count is the smallest of them. Four rows make an over-count from collisions unlikely.
SKETCH_DEPTH = 4


def bits_for_rate(rate: float, target: float) -> int:
    """0 up to the target rate, then one bit per doubling above it: ceil(log2(rate/target))."""
    if target <= 0 or rate <= target:
        return 0
    return math.ceil(math.log2(rate / target))


class _Buckets(ABC):
    """Two fixed buckets of `window` seconds: the current one and the one before. The count
    over the last `window` seconds is the current bucket plus the part of the previous one
    still inside the window (the usual sliding-window estimate: O(1), no per-event memory)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.epoch = -1

    def roll(self, now: float) -> None:
        """Move on to the bucket holding now: the current one becomes the previous one if
        they are adjacent, else both start empty."""
        epoch = math.floor(now / self.window)
        if epoch == self.epoch:
            return
        # A wall clock stepped back starts afresh too: counting on in a bucket that time has
        # to catch up with would inflate the rate for as long.
        adjacent = epoch == self.epoch + 1
        self.epoch = epoch
        self._rotate(adjacent)

    def previous_weight(self, now: float) -> float:
        """How much of the previous bucket still lies inside the window ending at now."""
        into_current = now / self.window - self.epoch
        return min(1.0, max(0.0, 1.0 - into_current))

    @abstractmethod
    def _rotate(self, adjacent: bool) -> None:
        """Start a new current bucket (keeping the old one as previous if adjacent)."""


class SlidingRate(_Buckets):
    """Events per second over the last `window` seconds."""

    def __init__(self, window: float) -> None:
        super().__init__(window)
        self.current = 0
        self.previous = 0

    def _rotate(self, adjacent: bool) -> None:
        self.previous = self.current if adjacent else 0
        self.current = 0

    def add(self, now: float, count: int = 1) -> None:
        self.roll(now)
        self.current += count

    def rate(self, now: float) -> float:
        self.roll(now)
        return (self.current + self.previous * self.previous_weight(now)) / self.window


class ClientRates(_Buckets):
    """Per-client events per second over the last `window` seconds, in a count-min sketch of
    SKETCH_DEPTH rows of `width` cells (two such tables: this bucket and the previous one).
    Estimates never fall short of the truth; collisions can only add."""

    def __init__(self, window: float, width: int) -> None:
        super().__init__(window)
        self.width = width
        # A secret per process, so nobody can pick client keys that collide with a victim's.
        self._hash_key = os.urandom(16)
        self.current = [0] * (SKETCH_DEPTH * width)
        self.previous = [0] * (SKETCH_DEPTH * width)

    def _rotate(self, adjacent: bool) -> None:
        # Once per window, not per event: O(size) then, O(1) amortised per handshake.
        self.previous = self.current if adjacent else [0] * len(self.current)
        self.current = [0] * len(self.current)

    def _cells(self, client: str) -> list[int]:
        digest = hashlib.blake2b(client.encode(), key=self._hash_key,
                                 digest_size=4 * SKETCH_DEPTH).digest()
        return [row * self.width + int.from_bytes(digest[4 * row:4 * row + 4], "big") % self.width
                for row in range(SKETCH_DEPTH)]

    def add(self, client: str, now: float) -> float:
        """Count one event of client at now; its rate including this event."""
        self.roll(now)
        cells = self._cells(client)
        # Conservative update: raise only the cells at the minimum. The estimate stays an
        # upper bound of the truth, and crowded cells are not pushed further by everyone.
        lowest = min(self.current[cell] for cell in cells)
        for cell in cells:
            if self.current[cell] == lowest:
                self.current[cell] = lowest + 1
        weight = self.previous_weight(now)
        count = min(self.current[cell] + self.previous[cell] * weight for cell in cells)
        return count / self.window


class AdaptiveDifficulty:
    """The proof-of-work difficulty of this node, raised by its handshake rate (see above).

    `for_handshake(client)` counts one /start_session and returns the difficulty to announce
    to that client; `current()` is the node-wide level now (for periodic logs and metrics).
    """

    def __init__(self, config: MailboxConfig, seconds: Callable[[], float]) -> None:
        self.seconds = seconds
        self.floor = config.difficulty
        # A max_difficulty at or below the floor means a fixed difficulty.
        self.ceiling = max(config.difficulty, config.max_difficulty)
        self.target_rate = config.difficulty_target_rate
        self.client_rate = config.difficulty_client_rate
        self.cooldown = config.difficulty_cooldown
        self.handshakes = SlidingRate(config.difficulty_window)
        self.clients: ClientRates | None = None
        if self.adaptive and self.client_rate > 0:
            self.clients = ClientRates(config.difficulty_window, config.difficulty_client_slots)
        self.level = self.floor
        # The last time the rate held the level up (hysteresis included).
        self.busy_at = seconds()

    @property
    def adaptive(self) -> bool:
        return self.ceiling > self.floor

    def rate(self) -> float:
        """Handshakes per second on this node over the window."""
        return self.handshakes.rate(self.seconds())

    def current(self) -> int:
        """The node-wide difficulty now (a client above its own rate may be asked for more)."""
        if self.adaptive:
            self._update(self.seconds())
        return self.level

    def for_handshake(self, client: str) -> int:
        """Count one handshake of client; the difficulty to announce to it."""
        if not self.adaptive:
            return self.floor
        now = self.seconds()
        self.handshakes.add(now)
        self._update(now)
        if self.clients is None:
            return self.level
        extra = bits_for_rate(self.clients.add(client, now), self.client_rate)
        return min(self.ceiling, self.level + extra)

    def _wanted(self, rate: float) -> int:
        return min(self.ceiling, self.floor + bits_for_rate(rate, self.target_rate))

    def _update(self, now: float) -> None:
        rate = self.handshakes.rate(now)
        wanted = self._wanted(rate)
        if wanted > self.level:
            self._change(wanted, rate)
        # Down only to the level twice this rate would ask for: between a level's way up and
        # its way down lies a factor of two.
        lower = self._wanted(rate * 2)
        if lower >= self.level or now < self.busy_at:  # (or the wall clock stepped back)
            self.busy_at = now
        elif now - self.busy_at >= self.cooldown:
            self._change(lower, rate)

    def _change(self, level: int, rate: float) -> None:
        log.info("proof-of-work difficulty {old} -> {new} ({rate:.1f} handshakes/s)",
                 old=self.level, new=level, rate=rate)
        self.level = level
