"""Fixtures of the abuse suite: a real `twistd relay` per test, configured from
tests/abuse/settings.py (the one place for every setting the suite relies on), on the memory
store or a fresh redis-server of its own; everything is stopped at the end of the test."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.abuse.relays import SettingUnknown, Target, target
from tests.redis_server import RedisServer

Launch = Callable[..., Target]
_HERE = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "abuse: the attacks of issues 8 and 9 (tests/abuse)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # `-m "not abuse"` leaves the suite out (it needs the limits of issues 8 and 9).
    for item in items:
        if _HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.abuse)


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """launch(profile, store, redis_server=None, extra=None, fd_limit=None): a started
    relay."""
    with contextlib.ExitStack() as stack:
        count = 0

        def start(profile: str, store: str, redis_server: RedisServer | None = None,
                  extra: dict[str, dict[str, Any]] | None = None,
                  fd_limit: int | None = None) -> Target:
            nonlocal count
            count += 1
            workdir = tmp_path / f"relay{count}"
            workdir.mkdir()
            unknown = None
            try:
                started = stack.enter_context(target(workdir, profile, store,
                                                     redis_server=redis_server, extra=extra,
                                                     fd_limit=fd_limit))
            except SettingUnknown as e:
                unknown = str(e)
            if unknown:
                pytest.fail(unknown, pytrace=False)
            if started.dropped:
                print(f"lenient: running without {', '.join(started.dropped)}")
            return started

        yield start
