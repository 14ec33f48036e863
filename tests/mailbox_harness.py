"""An in-memory relay (memory store, task.Clock) with Zax test clients attached."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from typing import Any

from twisted.internet.task import Clock

from relay.app import build_relay
from relay.config import load_config
from tests.zax import ZaxClient, stub_post


class MemoryRelay:
    def __init__(self, **overrides: dict[str, Any]) -> None:
        self.clock = Clock()
        self.clock.advance(time.time())
        if "directory" not in overrides.get("files", {}):
            # File chunks and the relay's seed go to a directory of this test run's own,
            # never into the working directory.
            directory = tempfile.mkdtemp(prefix="relay-test-files-")
            atexit.register(shutil.rmtree, directory, ignore_errors=True)
            overrides = {**overrides, "files": {**overrides.get("files", {}),
                                                "directory": directory}}
        self.config = load_config(overrides=overrides)
        self.app = build_relay(self.config, self.clock)
        self.post = stub_post(self.app.root)

    def client(self, **kwargs: Any) -> ZaxClient:
        return ZaxClient(self.post, self.clock.seconds, **kwargs)

    def connected(self) -> ZaxClient:
        client = self.client()
        client.connect()
        return client
