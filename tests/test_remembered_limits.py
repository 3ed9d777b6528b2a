"""Remembered limits: keyed without the API key, atomic, forgiving of a bad file."""

from pathlib import Path

import pytest

from ratelane._state.remembered_limits import (
    MAX_AGE_S,
    LimitMemory,
    default_memory_path,
    limits_key,
)

KEY = "sk-test-very-secret-1234"


def key_for(model: str = "gpt-4.1-mini", api_key: str = KEY) -> str:
    return limits_key(
        base_url="https://api.openai.com/v1/",
        api_key=api_key,
        organization=None,
        project="p",
        model=model,
    )


def test_limits_come_back_for_the_same_account_and_model_only(tmp_path: Path) -> None:
    memory = LimitMemory(tmp_path / "limits.json", clock=lambda: 1000.0)
    memory.remember(key_for(), rpm=30_000, tpm=150_000_000)
    recalled = memory.recall(key_for())
    assert recalled is not None and (recalled.rpm, recalled.tpm) == (30_000, 150_000_000)
    assert memory.recall(key_for(model="gpt-4.1")) is None
    assert memory.recall(key_for(api_key="sk-other")) is None


def test_the_file_never_holds_the_key(tmp_path: Path) -> None:
    path = tmp_path / "limits.json"
    LimitMemory(path).remember(key_for(), rpm=500, tpm=None)
    text = path.read_text()
    assert KEY not in text and "secret" not in text and "1234" not in text


def test_old_limits_are_forgotten(tmp_path: Path) -> None:
    now = [0.0]
    memory = LimitMemory(tmp_path / "limits.json", clock=lambda: now[0])
    memory.remember(key_for(), rpm=500, tpm=None)
    now[0] = MAX_AGE_S + 1
    assert memory.recall(key_for()) is None


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"k": "v"}'])
def test_a_damaged_file_is_ignored_and_replaced(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "limits.json"
    path.write_bytes(content)
    memory = LimitMemory(path)
    assert memory.recall(key_for()) is None
    memory.remember(key_for(), rpm=500, tpm=None)
    recalled = memory.recall(key_for())
    assert recalled is not None and recalled.rpm == 500
    assert [p.name for p in tmp_path.iterdir()] == ["limits.json"]  # no temp file left


def test_the_default_location_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RATELANE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_memory_path() == tmp_path / "ratelane" / "limits.json"
    monkeypatch.setenv("RATELANE_CACHE_DIR", str(tmp_path / "mine"))
    assert default_memory_path() == tmp_path / "mine" / "limits.json"
