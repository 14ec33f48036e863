"""glow.ts in a real browser: headless Chromium runs a page (tests/browser/scenario.mjs, glow.ts
bundled by esbuild) served from another origin than the relay, so every call is a real
cross-origin fetch with the browser's CORS and preflight rules. Scenarios: CORS itself
(readable errors, preflighted POSTs on the mailbox API and the rendezvous), messages (with a
401 that must reach glow as one), and files cut several ways, down to chunks far below
max_chunk_size.

Needs node/npm (npm ci installs glow.ts, esbuild and puppeteer-core here) and Debian's
chromium (apt-get install chromium). Without the browser the test skips, unless
RELAY_REQUIRE_BROWSER=1 (CI), where it fails.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.relay_process import RelayProcess

BROWSER_DIR = Path(__file__).parent
DRIVER = BROWSER_DIR / "drive.mjs"
DIFFICULTY = 8  # a real proof of work in the page, still a few hundred hashes
INSTALL_TIMEOUT = 300.0
SCENARIO_TIMEOUT = 60.0

_LOCK = Path(tempfile.gettempdir()) / (
    "relay-browser-" + hashlib.sha256(str(BROWSER_DIR.resolve()).encode()).hexdigest()[:16]
    + ".lock")


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _chromium() -> str | None:
    for candidate in (os.environ.get("RELAY_CHROMIUM"), "chromium", "/usr/bin/chromium"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


def _missing(what: str) -> None:
    if os.environ.get("RELAY_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{what} (RELAY_REQUIRE_BROWSER=1)")
    pytest.skip(what)


@contextlib.contextmanager
def _locked(exclusive: bool, timeout: float) -> Iterator[None]:
    """`npm ci` empties node_modules first: an install holds this lock exclusively and a run
    shares it, so parallel runs in one tree never pull node_modules from under each other."""
    with _LOCK.open("a") as lock:
        deadline = time.monotonic() + timeout
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        while True:
            try:
                fcntl.flock(lock, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another test run held {_LOCK} for {timeout} s")
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def browser_tools() -> tuple[str, str]:
    """(node, chromium), with tests/browser/node_modules installed by `npm ci`."""
    chromium = _chromium()
    if chromium is None:
        _missing("the browser test needs Debian's chromium (apt-get install chromium)")
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("the browser test needs node and npm on PATH (Node 18 or later)")
    command = [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"]
    # npm ci rewrites all of node_modules (over 10 s here): skip it when the last successful
    # install in this tree was of this very lock file.
    lock = hashlib.sha256((BROWSER_DIR / "package-lock.json").read_bytes()).hexdigest()
    stamp = BROWSER_DIR / "node_modules" / ".relay-installed"
    with _locked(exclusive=True, timeout=INSTALL_TIMEOUT + SCENARIO_TIMEOUT):
        if stamp.exists() and stamp.read_text() == lock:
            return node, chromium
        try:
            result = subprocess.run(command, cwd=BROWSER_DIR, capture_output=True, text=True,
                                    timeout=INSTALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`npm ci` in {BROWSER_DIR} took over {INSTALL_TIMEOUT} s")
        if result.returncode != 0:
            pytest.fail(f"`npm ci` in {BROWSER_DIR} failed ({result.returncode}):\n"
                        f"{_tail(result.stdout + result.stderr)}")
        stamp.write_text(lock)
    return node, chromium


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    # With a staple listener, so the rendezvous endpoints are there for the preflight check.
    process = RelayProcess(tmp_path, ["--difficulty", str(DIFFICULTY),
                                      "--files-dir", str(tmp_path / "files")], staple=True)
    try:
        process.start()
        yield process
    finally:
        process.stop()


def _run_driver(node: str, chromium: str, relay: RelayProcess, profile: Path) -> dict:
    command = [node, str(DRIVER), relay.url, str(DIFFICULTY), chromium, str(profile),
               str(SCENARIO_TIMEOUT)]
    with _locked(exclusive=False, timeout=INSTALL_TIMEOUT):
        # Its own process group: on a timeout the browser goes with the driver.
        driver = subprocess.Popen(command, cwd=BROWSER_DIR, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            stdout, stderr = driver.communicate(timeout=SCENARIO_TIMEOUT + 30)
        except subprocess.TimeoutExpired:
            os.killpg(driver.pid, signal.SIGKILL)
            stdout, stderr = driver.communicate()
            pytest.fail(f"the browser run took over {SCENARIO_TIMEOUT + 30} s\n{_tail(stderr)}")
    if driver.returncode != 0:
        pytest.fail(f"the browser run failed ({driver.returncode}):\n{_tail(stderr)}\n"
                    f"relay log:\n{_tail(relay.log())}")
    return json.loads(stdout.strip().splitlines()[-1])


def test_glow_in_chromium(browser_tools: tuple[str, str], relay: RelayProcess,
                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    node, chromium = browser_tools
    outcome = _run_driver(node, chromium, relay, tmp_path / "chromium-profile")
    results = outcome["results"]
    report = [f"glow.ts in {outcome['browser']}, page {outcome['page']}, relay {relay.url}:"]
    report += [f"  {'ok    ' if r['ok'] else 'FAILED'} {r['name']}: {r['detail']} ({r['ms']} ms)"
               for r in results]
    with capsys.disabled():  # the scenario results belong in the test log, passing or not
        print("\n" + "\n".join(report))
    names = [r["name"] for r in results]
    assert "cors" in names and "messages" in names
    assert sum(name.startswith("file") for name in names) >= 3
    failed = [r for r in results if not r["ok"]]
    assert not failed, "\n".join(report) + f"\nrelay log:\n{_tail(relay.log())}"
    log = relay.log()
    assert "Traceback" not in log, _tail(log, 80)
