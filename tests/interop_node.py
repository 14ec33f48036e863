"""node with glow.ts installed from npm (tests/interop), for the interop tests.

`glow_node()` runs `npm ci` once per test process: tests/test_interop_glow.py's `node`
fixture calls it, and so does every module that imports that fixture (each module that
imports a fixture gets an instance of its own, even a session-scoped one).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

INTEROP_DIR = Path(__file__).parent / "interop"

INSTALL_TIMEOUT = 300.0
SCENARIO_TIMEOUT = 120.0

_installed: list[str] = []


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


# Several test runs may share this working tree, and `npm ci` empties node_modules first: an
# install holds this lock exclusively, a scenario run shares it, so neither pulls
# node_modules from under the other.
_NODE_MODULES_LOCK = Path(tempfile.gettempdir()) / (
    "relay-interop-" + hashlib.sha256(str(INTEROP_DIR.resolve()).encode()).hexdigest()[:16]
    + ".lock")


@contextlib.contextmanager
def _node_modules_locked(exclusive: bool, timeout: float) -> Iterator[None]:
    with _NODE_MODULES_LOCK.open("a") as lock:
        deadline = time.monotonic() + timeout
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        while True:
            try:
                fcntl.flock(lock, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another test run held {_NODE_MODULES_LOCK} for {timeout} s")
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def glow_node() -> str:
    """node, with glow.ts installed into tests/interop/node_modules (the first call installs)."""
    if not _installed:
        _installed.append(_install_glow())
    return _installed[0]


def _install_glow() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("the glow.ts interop test needs node and npm on PATH (Node 18 or later)")
    locked = (INTEROP_DIR / "package-lock.json").exists()
    command = [npm, "ci" if locked else "install", "--no-audit", "--no-fund", "--loglevel=error"]
    with _node_modules_locked(exclusive=True, timeout=INSTALL_TIMEOUT + SCENARIO_TIMEOUT):
        try:
            result = subprocess.run(command, cwd=INTEROP_DIR, capture_output=True, text=True,
                                    timeout=INSTALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`npm {command[1]}` in {INTEROP_DIR} took over {INSTALL_TIMEOUT} s")
        if result.returncode != 0:
            pytest.fail(f"`npm {command[1]}` in {INTEROP_DIR} failed ({result.returncode}):\n"
                        f"{_tail(result.stdout + result.stderr)}")
        wanted = json.loads((INTEROP_DIR / "package.json").read_text())["dependencies"]["glow.ts"]
        installed = json.loads(
            (INTEROP_DIR / "node_modules" / "glow.ts" / "package.json").read_text())["version"]
    assert installed == wanted, f"npm installed glow.ts {installed}, package.json pins {wanted}"
    return node
