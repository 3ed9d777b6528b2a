"""``ratelane`` run in this process: ``main(argv)`` with its own environment and captured output.

A subprocess costs ~0.5 s of interpreter start and imports per call. Tests that
need a process boundary (signals, SIGKILL, a lock held by another process, the
memory of a process, a terminal) keep spawning one; the rest call the real
``main`` here, which parses the same argv and returns the same exit code.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

import ratelane
from ratelane._cli.main import main

#: What ``sys.argv[0]`` is under ``python -m ratelane``: the printed resume command
#: then starts with ``python -m ratelane``, as it does for a real subprocess.
MAIN_MODULE = str(Path(ratelane.__file__).with_name("__main__.py"))


@dataclass(frozen=True, slots=True)
class Ran:
    """The outcome of one in-process CLI call, shaped like ``CompletedProcess``."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


class InProcessCli:
    """Call ``main(argv)`` as if ``python -m ratelane ARGV`` ran with environment ``env``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        self._monkeypatch = monkeypatch
        self._capsys = capsys

    def __call__(self, *args: str | os.PathLike[str], env: Mapping[str, str]) -> Ran:
        argv = [os.fspath(arg) for arg in args]
        with self._monkeypatch.context() as patch:
            for name in [name for name in os.environ if name not in env]:
                patch.delenv(name)
            for name, value in env.items():
                if os.environ.get(name) != value:
                    patch.setenv(name, value)
            patch.setattr(sys, "argv", [MAIN_MODULE, *argv])
            self._capsys.readouterr()  # drop whatever the test printed before
            try:
                code = main(argv)
            except SystemExit as stop:  # argparse: --help, usage errors
                code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
            captured = self._capsys.readouterr()
        return Ran(argv, code, captured.out, captured.err)
