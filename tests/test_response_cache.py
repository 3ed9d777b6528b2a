"""The SQLite response cache: canonical keys, concurrent processes, corrupt files."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from ratelane._state.response_cache import ResponseCache, cache_key

BODY = {"model": "gpt-4.1-mini", "input": "hello", "temperature": 0}


def test_key_order_does_not_matter_but_endpoint_and_values_do() -> None:
    reordered = {"temperature": 0, "input": "hello", "model": "gpt-4.1-mini"}
    assert cache_key("/v1/responses", BODY) == cache_key("/v1/responses", reordered)
    assert cache_key("/v1/responses", BODY) != cache_key("/v1/chat/completions", BODY)
    assert cache_key("/v1/responses", BODY) != cache_key("/v1/responses", {**BODY, "input": "hi"})


def test_a_stored_answer_comes_back_byte_for_byte_across_opens(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cache.sqlite"
    raw = b'{"id":"resp_1","output":[]}'
    with ResponseCache(path) as cache:
        assert cache.get("/v1/responses", BODY) is None
        cache.put("/v1/responses", BODY, raw)
    with ResponseCache(path) as cache:
        assert cache.get("/v1/responses", dict(reversed(list(BODY.items())))) == raw
        assert (cache.hits, cache.misses, len(cache)) == (1, 0, 1)


WRITER = """
import sys
from ratelane._state.response_cache import ResponseCache
cache = ResponseCache(sys.argv[1])
for i in range(200):
    cache.put("/v1/responses", {"model": "m", "input": f"{sys.argv[2]}-{i}"}, b"{}")
    cache.get("/v1/responses", {"model": "m", "input": f"other-{i}"})
assert cache.problem is None, cache.problem
"""


def test_several_processes_share_one_cache_file(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), name]) for name in "abc"]
    assert [writer.wait(timeout=60) for writer in writers] == [0, 0, 0]
    with ResponseCache(path) as cache:
        assert len(cache) == 600


def test_a_file_that_is_not_a_database_is_reported_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with caplog.at_level(logging.WARNING, logger="ratelane"):
        cache = ResponseCache(path)
    assert not cache.usable
    assert cache.problem is not None and str(path) in cache.problem
    assert "delete the file" in caplog.text
    assert cache.get("/v1/responses", BODY) is None
    cache.put("/v1/responses", BODY, b"{}")  # no exception
    assert path.read_bytes().startswith(b"this is not sqlite")
