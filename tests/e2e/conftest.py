"""One real `twistd relay` (memory store, rendezvous and staple on free loopback ports) for
the end-to-end tests of the `relay` command; its log is checked for server errors at the end."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cli_harness import Background, User
from tests.relay_process import RelayProcess


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    workdir = tmp_path_factory.mktemp("relay")
    process = RelayProcess(workdir, ["--files-dir", str(workdir / "files")], staple=True)
    process.start()
    try:
        yield process
    finally:
        process.stop()
    log = process.log()
    assert not re.findall(r"\] /\w+ 5\d\d\b.*", log), "the relay answered with server errors"
    assert "Traceback" not in log, log[-3000:]


@pytest.fixture
def background() -> Iterator[list[Background]]:
    jobs: list[Background] = []
    try:
        yield jobs
    finally:
        for job in jobs:
            job.kill()


@pytest.fixture
def users(tmp_path: Path, relay: RelayProcess, background: list[Background]):
    """make(name) -> a User with their own relay home, on the module's relay."""
    def make(name: str) -> User:
        return User(name, tmp_path, relay, background)

    return make


def files_left(relay: RelayProcess) -> int:
    """Bytes of file-drop chunks the relay still holds on disk."""
    root = relay.workdir / "files"
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0
