"""``submit_batch(items) -> BatchJob``: status, wait and results, async and blocking."""

from __future__ import annotations

from pathlib import Path

import ratelane
from ratelane.testing import BatchOptions, FakeOpenAI

KEY = "sk-test-batch-job-0001"
FAST_POLL = ratelane.BatchRunOptions(poll_interval_s=0.01)


async def test_submit_then_status_then_results_in_item_order(tmp_path: Path) -> None:
    async with FakeOpenAI(api_key=KEY, batches=BatchOptions(time_scale=0.02)) as server:
        items = [
            "first prompt",
            {"input": "second", "max_output_tokens": 20},
            ratelane.Request({"input": "third"}, custom_id="mine"),
        ]
        job = await ratelane.asubmit_batch(
            items,
            model="gpt-4.1-mini",
            api_key=KEY,
            base_url=server.base_url,
            batch=FAST_POLL,
            directory=tmp_path / "job",
        )
        [view] = await job.async_status()
        assert view.chunk.lines == 3
        assert view.status in ("validating", "in_progress", "finalizing", "completed")
        assert len(server.batches.creations) == 1
        results = await job.async_results()
    assert [r.custom_id for r in results] == ["request-0", "request-1", "mine"]
    assert [r.index for r in results] == [0, 1, 2]
    assert all(r.ok and r.output_text and r.usage for r in results)


def test_blocking_forms_and_reopening_the_job_elsewhere(tmp_path: Path) -> None:
    fake = FakeOpenAI(api_key=KEY, batches=BatchOptions(time_scale=0.02))
    with fake.run_in_thread() as server:
        job = ratelane.submit_batch(
            ["a", "b"],
            model="gpt-4.1-mini",
            api_key=KEY,
            base_url=server.base_url,
            batch=FAST_POLL,
            directory=tmp_path,
        )
        options = ratelane.FileRunOptions(api_key=KEY, base_url=server.base_url, batch=FAST_POLL)
        again = ratelane.BatchJob(tmp_path, options=options)  # e.g. in another process
        summary = again.wait()
        assert summary.ok and summary.via == "batch"
        assert [r.ok for r in job.results()] == [True, True]
