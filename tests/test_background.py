"""Background mode on virtual time: the poll schedule, its bound, the outcomes, the journal.

A MockTransport answers the creates (``queued`` with an id) and a
``LifeWire`` answers the polls from the virtual clock, so a response that
lives ten minutes is followed in milliseconds and every poll is counted.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from _virtual_time import Answer, MockTransport, run
from ratelane import RetryPolicy
from ratelane._core.errors import ConfigurationError
from ratelane._core.models import Request, Result
from ratelane._engine.background import Background, PollPolicy, poll_delay
from ratelane._engine.engine import Engine
from ratelane._http.transport import Reply
from ratelane._limits.governor import RateGovernor
from ratelane._state.pending import PendingJournal, pending_path


def _reply(status: int, body: Any) -> Reply:
    return Reply(status, CIMultiDictProxy(CIMultiDict({"x-request-id": "req_poll"})), body)


def _response(response_id: str, status: str, **extra: Any) -> dict[str, Any]:
    text = "the whole answer" if status == "completed" else "the wh"
    output = (
        []
        if status in ("queued", "in_progress", "cancelled", "failed")
        else [
            {
                "type": "message",
                "role": "assistant",
                "status": status,
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
    )
    usage = None if not output else {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}
    return {"id": response_id, "object": "response", "status": status, "model": "m",
            "output": output, "usage": usage, **extra}  # fmt: skip


class LifeWire:
    """Polls answered from the virtual clock: running until ``created + life``, then ``end``."""

    def __init__(self, life_s: float, end: str = "completed", *, flaky: int = 0) -> None:
        self.life_s = life_s
        self.end = end
        self.flaky = flaky  # the first polls answered 503
        self.created: dict[str, float] = {}
        self.polls: list[tuple[float, str]] = []
        self.cancels: list[str] = []

    def create(self, response_id: str) -> None:
        import asyncio

        self.created[response_id] = asyncio.get_running_loop().time()

    async def get(self, path: str) -> Reply:
        import asyncio

        now = asyncio.get_running_loop().time()
        response_id = path.rsplit("/", 1)[1]
        self.polls.append((now, response_id))
        if response_id not in self.created:
            return _reply(404, orjson.dumps({"error": {"message": "No response", "code": None}}))
        if len(self.polls) <= self.flaky:
            return _reply(503, orjson.dumps({"error": {"message": "busy", "code": None}}))
        if response_id in self.cancels:
            return _reply(200, orjson.dumps(_response(response_id, "cancelled")))
        alive = now < self.created[response_id] + self.life_s
        status = "in_progress" if alive else self.end
        extra: dict[str, Any] = {}
        if status == "incomplete":
            extra["incomplete_details"] = {"reason": "max_output_tokens"}
        if status == "failed":
            extra["error"] = {"code": "server_error", "message": "The server had an error"}
        return _reply(200, orjson.dumps(_response(response_id, status, **extra)))

    async def post(self, path: str, payload: bytes) -> Reply:
        response_id = path.split("/")[-2]
        self.cancels.append(response_id)
        return _reply(200, orjson.dumps(_response(response_id, "cancelled")))


def _creates(wire: LifeWire) -> MockTransport:
    def script(path: str, body: dict[str, Any], number: int) -> Answer | None:
        response_id = f"resp_{number}"
        wire.create(response_id)
        return Answer(200, _response(response_id, "queued"))

    return MockTransport(script, latency_s=0.05)


def _engine(transport: MockTransport, *, rpm: float | None = None) -> Engine:
    governor = RateGovernor(rpm=rpm)
    policy = RetryPolicy(initial_wait_s=0.1)
    return Engine(transport, governor, policy, rng=random.Random(0))  # type: ignore[arg-type]


async def _run(engine: Engine, background: Background, count: int, **body: Any) -> list[Result]:
    run_ = engine.new_run(max_concurrency=64)
    run_.background = background
    results: list[Result] = []

    async def sink(result: Result) -> None:
        results.append(result)

    items = ((i, Request({"model": "m", "input": f"p{i}", **body}, f"c{i}")) for i in range(count))
    await run_.drive(items, sink)
    return sorted(results, key=lambda result: result.index)


# -- the schedule, a pure function --------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "u", "expected"),
    [
        (0, 0.0, 1.0),  # about a second after the create
        (0, 0.999999, 0.8),  # jitter only shortens, by at most a fifth
        (1, 0.0, 1.5),
        (2, 0.0, 2.25),
        (5, 0.0, 7.59375),
        (6, 0.0, 10.0),  # the cap
        (40, 0.5, 9.0),
        (10_000, 0.0, 10.0),  # no overflow however long it lives
    ],
)
def test_poll_delay(k: int, u: float, expected: float) -> None:
    assert poll_delay(PollPolicy(), k, u) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(
    "options", [{"first_s": 0}, {"growth": 0.5}, {"cap_s": 0.5}, {"jitter": 1.0}]
)
def test_poll_policy_refuses_nonsense(options: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        PollPolicy(**options)


# -- polling, bounded ---------------------------------------------------------------------


@pytest.mark.parametrize("life_s", [0.0, 0.3, 1.0, 2.5, 7.0, 30.0, 120.0, 600.0])
def test_polls_are_bounded_by_three_plus_one_per_second_of_life(life_s: float) -> None:
    async def scenario() -> None:
        wire = LifeWire(life_s)
        background = Background(enabled=True, wire=wire, rng=random.Random(1))
        transport = _creates(wire)
        results = await _run(_engine(transport), background, 20)
        assert all(result.ok for result in results)
        assert [result.output_text for result in results] == ["the whole answer"] * 20
        assert all(
            result.usage is not None and result.usage.total_tokens == 10 for result in results
        )
        assert [call.body["background"] for call in transport.calls] == [True] * 20
        assert len(transport.calls) == 20  # each created once
        for response_id, created in wire.created.items():
            times = [time for time, polled in wire.polls if polled == response_id]
            assert 1 <= len(times) <= 3 + life_s, (life_s, times)
            assert 0.8 <= times[0] - created <= 1.06  # about a second after the answer (+0.05)
            gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
            assert all(gap <= 10.0 + 1e-6 for gap in gaps)  # never longer than the cap
            assert times[-1] - created >= life_s  # not given up early
        assert background.polls == len(wire.polls)

    run(scenario())


def test_polls_spend_the_request_budget() -> None:
    async def scenario() -> None:
        wire = LifeWire(30.0)
        transport = _creates(wire)
        engine = _engine(transport, rpm=120)  # 2 requests/s, creates and polls together
        background = Background(enabled=True, wire=wire, rng=random.Random(2))
        results = await _run(engine, background, 40)
        assert all(result.ok for result in results)
        events = sorted([call.time_s for call in transport.calls] + [t for t, _ in wire.polls])
        # Within any 5 s window, at most the budget of 5 s (10) plus the governor's burst.
        worst = max(sum(1 for t in events if start <= t < start + 5.0) for start in events)
        assert worst <= 13, worst

    run(scenario())


def test_a_flaky_poll_is_polled_again() -> None:
    async def scenario() -> None:
        wire = LifeWire(3.0, flaky=2)
        background = Background(enabled=True, wire=wire, rng=random.Random(3))
        results = await _run(_engine(_creates(wire)), background, 1)
        assert results[0].ok and results[0].output_text == "the whole answer"

    run(scenario())


# -- outcomes -----------------------------------------------------------------------------


def test_incomplete_keeps_partial_output_and_details() -> None:
    async def scenario() -> None:
        wire = LifeWire(2.0, end="incomplete")
        results = await _run(_engine(_creates(wire)), Background(enabled=True, wire=wire), 1)
        (result,) = results
        assert result.ok and result.output_text == "the wh"
        assert result.body["incomplete_details"] == {"reason": "max_output_tokens"}

    run(scenario())


def test_failed_is_a_failed_result_with_the_servers_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        wire = LifeWire(2.0, end="failed")
        journal = PendingJournal(tmp_path / "j.jsonl").open()
        background = Background(enabled=True, wire=wire, journal=journal)
        (result,) = await _run(_engine(_creates(wire)), background, 1)
        assert not result.ok and result.error is not None
        assert result.error.code == "server_error"
        assert journal.pending("c0") is None  # forgotten: the next run creates it again
        journal.close()

    run(scenario())


def test_store_false_is_refused_before_sending() -> None:
    async def scenario() -> None:
        wire = LifeWire(1.0)
        transport = _creates(wire)
        (result,) = await _run(_engine(transport), Background(enabled=True, wire=wire), 1,
                               store=False)  # fmt: skip
        assert not result.ok and result.error is not None
        assert "'store': false" in result.error.message and "HINT" in result.error.message
        assert transport.calls == [] and wire.polls == []

    run(scenario())


def test_a_body_asking_for_background_is_polled_without_the_option() -> None:
    async def scenario() -> None:
        wire = LifeWire(1.5)
        transport = _creates(wire)
        transport.get = wire.get  # type: ignore[attr-defined]  # the lazily made poller's wire
        engine = _engine(transport)
        run_ = engine.new_run(max_concurrency=4)
        run_.background = None
        results: list[Result] = []

        async def sink(result: Result) -> None:
            results.append(result)

        request = Request({"model": "m", "input": "x", "background": True}, "a")
        await run_.drive(iter([(0, request)]), sink)
        assert results[0].ok and results[0].output_text == "the whole answer"
        assert run_.background is not None and run_.background.polls >= 1

    run(scenario())


# -- the journal --------------------------------------------------------------------------


def test_the_id_is_journaled_before_polling_and_reattached_not_recreated(tmp_path: Path) -> None:
    path = pending_path(tmp_path / "out.jsonl")
    assert path.name == "out.jsonl.pending.jsonl"

    async def first_run() -> None:
        wire = LifeWire(60.0)
        journal = PendingJournal(path).open()
        background = Background(enabled=True, wire=wire, journal=journal)
        engine = _engine(_creates(wire))
        run_ = engine.new_run(max_concurrency=8)
        run_.background = background

        async def sink(result: Result) -> None:
            raise AssertionError("nothing finishes before the stop")

        async def stop_soon() -> None:
            import asyncio

            await asyncio.sleep(5.0)
            # Every id was on disk before its first poll:
            lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
            assert {line["custom_id"] for line in lines} == {f"c{i}" for i in range(5)}
            run_.stop()

        import asyncio

        items = iter([(i, Request({"model": "m", "input": "x"}, f"c{i}")) for i in range(5)])
        await asyncio.gather(run_.drive(items, sink), stop_soon())
        journal.close()

    run(first_run())
    saved = PendingJournal(path).open()
    assert len(saved) == 5
    ids = {f"c{i}": saved.pending(f"c{i}") for i in range(5)}
    saved.close()

    async def resume() -> None:
        wire = LifeWire(60.0)
        for response_id in ids.values():
            assert response_id is not None
            wire.created[response_id] = -60.0  # created by the first run, long done
        transport = _creates(wire)
        journal = PendingJournal(path).open()
        background = Background(enabled=True, wire=wire, journal=journal)
        results = await _run(_engine(transport), background, 5)
        assert transport.calls == []  # nothing created twice
        assert all(result.ok for result in results)
        assert {result.custom_id: result.body["id"] for result in results} == ids
        journal.close()

    run(resume())


def test_cancel_on_exit_cancels_and_forgets(tmp_path: Path) -> None:
    async def scenario() -> None:
        import asyncio

        wire = LifeWire(600.0)
        journal = PendingJournal(tmp_path / "j.jsonl").open()
        background = Background(enabled=True, wire=wire, journal=journal, cancel_on_exit=True)
        run_ = _engine(_creates(wire)).new_run(max_concurrency=4)
        run_.background = background

        async def sink(result: Result) -> None:
            raise AssertionError("stopped lines get no result")

        async def stop_soon() -> None:
            await asyncio.sleep(3.0)
            run_.stop()

        items = iter([(i, Request({"model": "m", "input": "x"}, f"c{i}")) for i in range(3)])
        await asyncio.gather(run_.drive(items, sink), stop_soon())
        assert sorted(wire.cancels) == sorted(wire.created)
        assert len(journal) == 0
        journal.close()

    run(scenario())


def test_journal_compacts_and_survives_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(
        b'{"custom_id":"a","id":"resp_a"}\n{"custom_id":"b","id":"resp_b"}\n'
        b'{"custom_id":"a","id":null}\n{"custom_id":"c","id":"resp_c"}\n{"custom_id":"d","i'
    )
    journal = PendingJournal(path).open(keep=lambda custom_id: custom_id != "c")
    assert (journal.pending("a"), journal.pending("b"), journal.pending("c")) == (
        None,
        "resp_b",
        None,
    )
    assert path.read_bytes() == b'{"custom_id":"b","id":"resp_b"}\n'
    journal.record("e", "resp_e")
    journal.close()
    assert PendingJournal(path).open().pending("e") == "resp_e"


def test_a_chain_of_background_responses_waits_for_each_parent_to_complete() -> None:
    from ratelane._engine.chains import ChainScheduler

    async def scenario() -> None:
        wire = LifeWire(4.0)
        transport = _creates(wire)
        run_ = _engine(transport).new_run(max_concurrency=16)
        run_.background = Background(enabled=True, wire=wire, rng=random.Random(4))
        lines = [(f"c{c}-t{t}", f"c{c}-t{t - 1}" if t else None) for t in (2, 1, 0)
                 for c in range(10)]  # fmt: skip
        parent_of = {child: parent for child, parent in lines if parent is not None}
        scheduler = ChainScheduler(parent_of, stats=run_.stats, stopping=lambda: run_.stopping)
        results: dict[str, Result] = {}

        async def sink(result: Result) -> None:
            results[result.custom_id] = result

        items = iter([(i, Request({"model": "m", "input": "x"}, cid))
                      for i, (cid, _) in enumerate(lines)])  # fmt: skip
        await run_.drive(scheduler.requests(items), scheduler.sink(sink))
        assert len(results) == 30 and all(result.ok for result in results.values())
        sent = {call.body.get("previous_response_id"): call.time_s for call in transport.calls}
        for child, parent in parent_of.items():
            parent_id = results[parent].body["id"]
            # sent with the parent's id, after the parent's background response completed
            assert results[child].body["id"] != parent_id
            assert sent[parent_id] >= wire.created[parent_id] + 4.0

    run(scenario())
