"""``submit_batch(items) -> BatchJob``: the Batch API for items in memory, not a file.

It is Batch API mode of a file run underneath: the items (prompts, body
dicts, Batch-format dicts, :class:`Request`, as for ``run_many``) are written
to ``<directory>/input.jsonl``, submitted with ``detach``, and the job is a
handle on that directory. ``wait()`` is the same file run again without
``detach`` (it re-attaches through the sidecar, so a new process can call it
with ``BatchJob(directory)``); ``results()`` reads OUTPUT and ERRORS back as
:class:`Result` objects in item order. Each has a blocking and an ``async_`` form.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from ratelane._api.blocking import blocking, run_blocking
from ratelane._api.options import RunOptions, check_body_fields
from ratelane._core.config import Price, Profile
from ratelane._core.errors import ConfigurationError, FatalError
from ratelane._core.items import BodyDefaults, to_request
from ratelane._core.models import ErrorInfo, Result, Usage

from .batch_control import BatchView, query_batches
from .batch_options import BatchRunOptions
from .file_run import ExitReason, FileRun, FileRunOptions, FileRunSummary

__all__ = ["BatchJob", "asubmit_batch", "submit_batch"]

StrPath = str | os.PathLike[str]
_INPUT, _OUTPUT, _ERRORS = "input.jsonl", "output.jsonl", "output.errors.jsonl"


class BatchJob:
    """A Batch API job whose files live in ``directory`` (INPUT, OUTPUT, ERRORS, sidecar).

    ``BatchJob(directory, options=...)`` re-opens a job from another process.
    """

    def __init__(self, directory: StrPath, *, options: FileRunOptions | None = None) -> None:
        self.directory = Path(directory)
        options = options if options is not None else FileRunOptions()
        batch = options.batch or BatchRunOptions()
        self.options = dataclasses.replace(
            options, via="batch", batch=dataclasses.replace(batch, detach=False)
        )

    def __repr__(self) -> str:
        return f"<BatchJob {str(self.directory)!r}>"

    @property
    def input_path(self) -> Path:
        return self.directory / _INPUT

    @property
    def output_path(self) -> Path:
        return self.directory / _OUTPUT

    @property
    def errors_path(self) -> Path:
        return self.directory / _ERRORS

    def _file_run(self, *, detach: bool = False) -> FileRun:
        options = self.options
        if detach:
            assert options.batch is not None
            options = dataclasses.replace(
                options, batch=dataclasses.replace(options.batch, detach=True)
            )
        return FileRun(self.input_path, self.output_path, errors=self.errors_path, options=options)

    async def async_status(self) -> list[BatchView]:
        """Each batch of the job, as the server reports it now (changes nothing)."""
        return await query_batches(self.output_path, self.options)

    async def async_wait(self) -> FileRunSummary:
        """Wait for every batch, merge the results (resubmitting what expired); the summary."""
        return await self._file_run().run()

    async def async_results(self) -> list[Result]:
        """Wait, then one :class:`Result` per item, in item order."""
        await self.async_wait()
        return self._read_results()

    def status(self) -> list[BatchView]:
        """Blocking form of :meth:`async_status`."""
        return run_blocking(self.async_status())

    def wait(self) -> FileRunSummary:
        """Blocking form of :meth:`async_wait`."""
        return run_blocking(self.async_wait())

    def results(self) -> list[Result]:
        """Blocking form of :meth:`async_results`."""
        return run_blocking(self.async_results())

    def _read_results(self) -> list[Result]:
        order: dict[str, int] = {}
        paths: dict[str, str] = {}
        with open(self.input_path, "rb") as lines:
            for raw in lines:
                line = orjson.loads(raw)
                order[line["custom_id"]] = len(order)
                paths[line["custom_id"]] = line["url"]
        found: dict[str, Result] = {}
        for path in (self.errors_path, self.output_path):  # a success wins over a failure
            if path.exists():
                with open(path, "rb") as lines:
                    for raw in lines:
                        if raw.strip():
                            result = _result_of(orjson.loads(raw), order, paths)
                            if result is not None:
                                found[result.custom_id] = result
        missing = ErrorInfo("not_finished", "no result yet: call wait() again")
        return [
            found.get(custom_id)
            or Result(index=index, custom_id=custom_id, ok=False, error=missing)
            for custom_id, index in order.items()
        ]


def _result_of(line: Any, order: Mapping[str, int], paths: Mapping[str, str]) -> Result | None:
    custom_id = line.get("custom_id")
    if custom_id not in order:
        return None
    response = line.get("response") if isinstance(line.get("response"), dict) else None
    body = response.get("body") if response else None
    error = line.get("error")
    ok = error is None and response is not None
    info = None
    if isinstance(error, dict):
        info = ErrorInfo(error.get("code"), str(error.get("message") or ""))
    extra = line.get("ratelane") if isinstance(line.get("ratelane"), dict) else {}
    return Result(
        index=order[custom_id],
        custom_id=custom_id,
        ok=ok,
        status_code=response.get("status_code") if response else None,
        raw_body=None if body is None else orjson.dumps(body),
        error=info,
        request_id=response.get("request_id") if response else None,
        attempts=int(extra.get("attempts") or 1),
        usage=Usage.from_body(body) if ok else None,
        path=paths[custom_id],
    )


def _write_items(path: Path, items: Iterable[Any], defaults: BodyDefaults) -> None:
    """The items as a Batch-format INPUT file, every default applied."""
    with open(path, "wb") as out:
        for index, item in enumerate(items):
            request = to_request(item, index, defaults)
            line = {
                "custom_id": request.custom_id,
                "method": "POST",
                "url": request.path,
                "body": dict(request.body),
            }
            out.write(orjson.dumps(line) + b"\n")


async def asubmit_batch(
    items: Iterable[Any],
    *,
    directory: StrPath | None = None,
    model: str | None = None,
    instructions: str | None = None,
    profile: str | Profile | None = None,
    extra_body: Mapping[str, Any] | None = None,
    api_key: str | None = None,
    base_url: str | None = None,
    organization: str | None = None,
    project: str | None = None,
    prices: Mapping[str, Price] | None = None,
    batch: BatchRunOptions | None = None,
    **body: Any,
) -> BatchJob:
    """Submit ``items`` to the Batch API (half price, results within 24 h); return the job.

    Items are those of ``run_many``; the options (``model``, ``instructions``,
    ``profile``, ``extra_body``, body-field keywords) become each body's
    defaults. The job's files go to ``directory`` (default: a new temporary
    directory); keep it to collect the results from another process with
    ``BatchJob(directory)``. Returns once every batch is created.
    """
    defaults = RunOptions(
        model=model,
        instructions=instructions,
        profile=profile,
        extra_body=extra_body,
        body=check_body_fields("submit_batch", body),
    ).body_defaults()
    folder = (
        Path(directory)
        if directory is not None
        else Path(tempfile.mkdtemp(prefix="ratelane-batch-"))
    )
    folder.mkdir(parents=True, exist_ok=True)
    options = FileRunOptions(
        api_key=api_key,
        base_url=base_url,
        organization=organization,
        project=project,
        prices=prices,
        via="batch",
        batch=batch,
    )
    job = BatchJob(folder, options=options)
    if job.output_path.exists() and job.output_path.stat().st_size:
        raise ConfigurationError(
            f"{folder} already holds a batch job's results. HINT: open it with "
            f"ratelane.BatchJob({str(folder)!r}) or pass another directory"
        )
    await asyncio.to_thread(_write_items, job.input_path, items, defaults)
    summary = await job._file_run(detach=True).run()
    if summary.reason is ExitReason.FATAL:
        raise FatalError(
            f"the batches could not be submitted: {summary.stop_message}. HINT: fix the cause, "
            f"then ratelane.BatchJob({str(folder)!r}).wait() submits the rest",
            reason=summary.stop_reason or "fatal",
            stats=summary.stats,
        )
    return job


submit_batch = blocking(asubmit_batch)
submit_batch.__name__ = submit_batch.__qualname__ = "submit_batch"
submit_batch.__doc__ = """Blocking form of :func:`asubmit_batch` (same arguments)."""
