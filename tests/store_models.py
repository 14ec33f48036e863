"""One model-based property test per store kind: hypothesis draws operations, a check runs
them on the store (memory or a real Redis) against a model."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis.strategies import SearchStrategy


def model_test(kind: str, operations: SearchStrategy, check: Callable[[Any, Any], Awaitable],
               table: str, max_examples: int = 40) -> Callable:
    """A test of `check(store.<table>, operations)` on the `kind` store. One function object
    per store kind: pytest-twisted's hypothesis support wraps the test function in place,
    which breaks when one function is parametrized twice."""

    @pytest.mark.parametrize("store_kind", [kind])
    @settings(max_examples=max_examples, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(operations=operations)
    @pytest_twisted.ensureDeferred
    async def test(store_factory: Any, operations: Any) -> None:
        await check(getattr(store_factory, table), operations)

    return test
