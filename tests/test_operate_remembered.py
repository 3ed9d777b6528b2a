"""Remembered limits wired into runs: the next run starts at the remembered rate, no probe.

On virtual time (a MockTransport that announces 600 rpm with 5 s latency), so
the gap a probe costs is exact: without memory the second request waits for
the first answer (5 s); with it, the run fans out at once. One small
real-socket test checks that a Client saves and reuses the file.
"""

from __future__ import annotations

import random
from pathlib import Path

import orjson

import ratelane
from _virtual_time import MockTransport, run
from ratelane import RetryPolicy
from ratelane._core.models import Request, Result
from ratelane._engine.engine import Engine
from ratelane._engine.remembered import HEADROOM, LimitRecall
from ratelane._limits.governor import RateGovernor
from ratelane._state.remembered_limits import LimitMemory, default_memory_path
from ratelane.testing import FakeOpenAI

LATENCY_S = 5.0


def _recall(path: Path) -> LimitRecall:
    return LimitRecall(
        LimitMemory(path), base_url="http://x/v1", api_key="sk-k", organization=None, project=None
    )


async def _send_times(recall: LimitRecall, count: int) -> list[float]:
    transport = MockTransport(rpm=600, tpm=1_000_000, latency_s=LATENCY_S)
    engine = Engine(
        transport,  # type: ignore[arg-type]
        RateGovernor(),
        RetryPolicy(),
        rng=random.Random(0),
        recall=recall,
    )
    items = ((n, Request({"model": "m", "input": f"p{n}"}, f"c{n}")) for n in range(count))

    async def sink(result: Result) -> None:
        assert result.ok

    await engine.run(items, sink, max_concurrency=64)
    recall.save(engine.governor)
    return [call.time_s for call in transport.calls]


def test_the_next_run_starts_at_the_remembered_rate_without_a_probe(tmp_path: Path) -> None:
    memory = tmp_path / "limits.json"
    first = run(_send_times(_recall(memory), 20))
    # No memory: one probe, then nothing until its answer 5 s later.
    assert first[0] == 0.0 and first[1] >= LATENCY_S
    saved = orjson.loads(memory.read_bytes())
    [entry] = saved.values()
    assert entry["rpm"] == 600 and entry["tpm"] == 1_000_000
    assert "sk-k" not in memory.read_text()

    second = run(_send_times(_recall(memory), 20))
    # Remembered: requests go out from the start at (HEADROOM of) 600 rpm = 9/s.
    assert second[1] < 0.5
    assert second[19] < LATENCY_S
    assert first[19] - second[19] >= LATENCY_S * 0.8


def test_remembered_limits_are_corrected_by_the_headers() -> None:
    async def scenario() -> None:
        governor = RateGovernor()
        assert governor.assume_limits(rpm=540.0, tpm=900_000.0)
        assert governor.learned_rpm == 540.0
        transport = MockTransport(rpm=300, tpm=1_000_000, latency_s=0.1)  # the tier went down
        engine = Engine(transport, governor, RetryPolicy(), rng=random.Random(0))  # type: ignore[arg-type]
        await engine.execute(0, Request({"model": "m", "input": "hi"}, "c0"))
        assert governor.learned_rpm == 300

    run(scenario())


def test_an_assumed_figure_is_never_saved_as_learned(tmp_path: Path) -> None:
    recall = _recall(tmp_path / "limits.json")
    recall.memory.remember(recall._key("m"), rpm=1000.0, tpm=None)
    governor = RateGovernor()
    recall.seed({"model": "m"}, governor)
    assert governor.learned_rpm == 1000.0 * HEADROOM
    before = (tmp_path / "limits.json").read_bytes()
    recall.save(governor)  # no answer corrected it: nothing new to remember
    assert (tmp_path / "limits.json").read_bytes() == before


async def test_a_client_saves_the_limits_and_the_next_client_reads_them(
    isolated_cache_dir: Path, fake_openai: FakeOpenAI
) -> None:
    options = {"model": "gpt-4.1-mini", "api_key": fake_openai.api_key}
    await ratelane.arun_many(["a", "b"], base_url=fake_openai.base_url, **options)
    path = default_memory_path()
    assert path.parent == isolated_cache_dir
    [entry] = orjson.loads(path.read_bytes()).values()
    assert (entry["rpm"], entry["tpm"]) == fake_openai.limits_for("gpt-4.1-mini")
    async with ratelane.Client(base_url=fake_openai.base_url, **options) as client:
        await client.run_many(["c"])
        assert client.engine.recall is not None and client.engine.recall.model == "gpt-4.1-mini"
    path.unlink()
    await ratelane.arun_many(["d"], base_url=fake_openai.base_url, remember_limits=False, **options)
    assert not path.exists()
