from __future__ import annotations

import pytest

from _inprocess_cli import InProcessCli
from ratelane.testing import fake_openai

__all__ = ["fake_openai", "in_process_cli"]


@pytest.fixture
def in_process_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> InProcessCli:
    """``ratelane ARGS`` run by ``main(argv)`` in this process (see ``tests/_inprocess_cli.py``)."""
    return InProcessCli(monkeypatch, capsys)
