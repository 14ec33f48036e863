"""The progress bar: rate over a window, ETA, redraw limits, off unless a terminal."""

from __future__ import annotations

import io

from relay.client.cli.progress import ProgressBar, human_bytes, human_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_units():
    assert human_bytes(999) == "999 B" and human_bytes(1500) == "1.5 kB"
    assert human_bytes(12_300_000) == "12.3 MB" and human_bytes(5e12) == "5000.0 GB"
    assert human_duration(59) == "0:59" and human_duration(3725) == "1:02:05"


def test_rate_and_eta_on_a_terminal():
    clock, out = FakeClock(), Terminal()
    bar = ProgressBar(out, clock=clock)
    assert bar.enabled
    bar("file.bin", 0, 100_000_000)
    clock.now += 2
    bar("file.bin", 20_000_000, 100_000_000)
    line = out.getvalue().split("\r")[-1]
    assert "20.0%" in line and "10.0 MB/s" in line and "ETA 0:08" in line
    clock.now += 0.01  # too soon to redraw
    bar("file.bin", 21_000_000, 100_000_000)
    assert "21.0%" not in out.getvalue()
    bar.finish()
    assert out.getvalue().endswith("\n") and "21.0%" in out.getvalue()


def test_quiet_when_not_a_terminal_unless_forced():
    clock, out = FakeClock(), io.StringIO()
    bar = ProgressBar(out, clock=clock)
    bar("a", 5, 10)
    bar.finish()
    assert out.getvalue() == ""
    forced = ProgressBar(out, clock=clock, enabled=True)
    forced("a", 5, 10)
    forced.finish()
    assert "50.0%" in out.getvalue()


def test_names_are_escaped_and_shortened():
    out = Terminal()
    bar = ProgressBar(out, clock=FakeClock())
    bar("\x1b]0;pwned\x07" + "x" * 100, 1, 2)
    assert "\x1b]" not in out.getvalue() and "\x07" not in out.getvalue()
    assert "..." in out.getvalue()


def test_an_unknown_total_shows_bytes_and_rate_without_percent_or_eta():
    out = io.StringIO()
    now = [0.0]
    bar = ProgressBar(out, enabled=True, clock=lambda: now[0], label="send")
    for step in range(1, 4):
        now[0] = step * 1.0
        bar("stdin", step * 2_000_000, -1)
    bar.finish()
    last = out.getvalue().strip().split("\r")[-1]
    assert "6.0 MB" in last and "2.0 MB/s" in last
    assert "%" not in last and "ETA" not in last
