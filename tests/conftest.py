from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from _inprocess_cli import InProcessCli
from ratelane.testing import fake_openai

__all__ = ["fake_openai", "in_process_cli", "isolated_cache_dir"]

# Many tests start `python -m ratelane` in a subprocess. Where the environment sets
# PYTHONDONTWRITEBYTECODE (some sandboxes and CI images do), each of those processes
# compiled ratelane's modules from source again: 0.15 s of CPU a start. Let the suite's
# processes keep their bytecode (in the git-ignored __pycache__ folders).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False


@pytest.fixture(autouse=True)
def isolated_cache_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Remembered rate limits go to a fresh directory per test, never the user's cache."""
    folder = tmp_path_factory.mktemp("ratelane-cache")
    monkeypatch.setenv("RATELANE_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def in_process_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> InProcessCli:
    """``ratelane ARGS`` run by ``main(argv)`` in this process (see ``tests/_inprocess_cli.py``)."""
    return InProcessCli(monkeypatch, capsys)


@pytest.fixture(autouse=True)
def _no_shared_budget_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A RATELANE_REDIS_URL in the developer's shell must not put every test on Redis
    (issue 13); the tests of the shared budget pass their own."""
    monkeypatch.delenv("RATELANE_REDIS_URL", raising=False)
