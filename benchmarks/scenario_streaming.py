"""Streaming: what ratelane adds to the time to first token (TTFT), against the server's own.

Standalone (not part of ``run_all.py``)::

    .venv/bin/python benchmarks/scenario_streaming.py              # 300 streams x 2 phases
    .venv/bin/python benchmarks/scenario_streaming.py --streams 50 # quicker

The fake server runs in its own process (pinned to CPU 0 where possible, the
client on CPU 1), instrumented to note, on the shared monotonic clock
(``CLOCK_MONOTONIC`` in both processes), when each request reached its handler
and when the bytes of its first ``response.output_text.delta`` were handed to
the socket. The client process notes when it opened each stream and when the
chunk holding the first delta arrived from the socket (matched by request id).
Per stream::

    overhead   = ttft_s - (first delta written - request received)   # ratelane's + the wire's share
    send path  = request received - stream opened                    # building, sending, loopback
    wire back  = first-delta chunk arrived - first delta written     # loopback + aiohttp read
    parse      = ttft noted - first-delta chunk arrived              # SSE parse to the TTFT stamp

Phase 1 streams one request at a time (``run_many(stream=True)``,
``max_concurrency=1``), so the per-stream clocks line up and nothing queues;
phase 2 runs the same number with 32 in flight (where ``send path`` also holds
a request's wait in the one-core server before its handler runs). Each phase
also reports the client's CPU per request (getrusage), and a plain run of the
same requests at 32 in flight gives the CPU of not streaming. Medians and p95
are printed as one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import json
import multiprocessing
import os
import resource
import statistics
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator
from multiprocessing.connection import Connection
from typing import Any

FIRST_TOKEN_S = 0.02
DELTA = b"response.output_text.delta"
FIGURES = ("overhead", "server_ttft", "ttft", "send_path", "wire_back", "parse")


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2:
        os.sched_setaffinity(0, {cpu})


def _serve(pipe: Connection) -> None:
    """The fake server's process: serve, then hand back ``{request_id: (received, written)}``."""
    _pin(0)
    from aiohttp import web

    from ratelane.testing import FakeOpenAI, Streaming
    from ratelane.testing._app import FakeApp

    received: dict[int, float] = {}
    timings: dict[str, tuple[float, float]] = {}
    handle = FakeApp.handle
    write = web.StreamResponse.write

    async def timed_handle(self: FakeApp, request: web.BaseRequest) -> web.StreamResponse:
        received[id(request)] = time.monotonic()
        return await handle(self, request)

    async def timed_write(self: web.StreamResponse, data: Any) -> None:
        request_id = self.headers.get("x-request-id")
        if request_id and request_id not in timings and DELTA in bytes(data):
            timings[request_id] = (received.pop(id(self._req), 0.0), time.monotonic())
        await write(self, data)

    FakeApp.handle = timed_handle  # type: ignore[method-assign]
    web.StreamResponse.write = timed_write  # type: ignore[method-assign]

    async def main() -> None:
        streaming = Streaming(first_token_s=FIRST_TOKEN_S)
        async with FakeOpenAI(rpm=None, tpm=None, streaming=streaming) as server:
            pipe.send((server.base_url, server.api_key))
            loop = asyncio.get_running_loop()
            while await loop.run_in_executor(None, pipe.recv) == "timings":
                pipe.send(dict(timings))
                timings.clear()

    asyncio.run(main())


class ClientStamps:
    """Client-side stamps of each stream, by request id: when opened, when its first delta came."""

    def __init__(self) -> None:
        self.by_request: dict[str, dict[str, float]] = {}
        self._current: contextvars.ContextVar[dict[str, float]] = contextvars.ContextVar("stamp")

    def install(self) -> None:
        import ratelane._http.transport as transport

        stream, sse_events = transport.Transport.stream, transport.sse_events
        stamps = self

        @contextlib.asynccontextmanager
        async def timed_stream(self: Any, path: str, payload: bytes) -> AsyncIterator[Any]:
            stamp = {"opened": time.monotonic()}
            stamps._current.set(stamp)  # each request runs in its own worker task
            async with stream(self, path, payload) as reply:
                stamps.by_request[reply.headers.get("x-request-id", "")] = stamp
                yield reply

        async def timed_chunks(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
            stamp = stamps._current.get()
            async for chunk in chunks:
                if "arrived" not in stamp and DELTA in chunk:
                    stamp["arrived"] = time.monotonic()
                yield chunk

        def timed_events(chunks: AsyncIterable[bytes]) -> Any:
            return sse_events(timed_chunks(chunks))

        transport.Transport.stream = timed_stream  # type: ignore[assignment,method-assign]
        transport.sse_events = timed_events  # type: ignore[assignment]


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * len(ordered)))]
    return {"median_ms": round(statistics.median(ordered) * 1e3, 3), "p95_ms": round(p95 * 1e3, 3)}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _phase(
    base_url: str, api_key: str, streams: int, concurrency: int, *, stream: bool = True
) -> tuple[list[Any], float, float]:
    """``(results, seconds, client CPU seconds)`` of one measured ``run_many``."""
    import ratelane

    prompts = [f"stream number {i}, a short answer please" for i in range(streams)]
    async with ratelane.Client(
        model="gpt-4.1-mini", api_key=api_key, base_url=base_url, max_concurrency=concurrency
    ) as client:
        await client.run_many(prompts[:10], stream=stream)  # warm-up: connections, imports
        started, cpu = time.monotonic(), _cpu_s()
        results = await client.run_many(prompts, stream=stream)
    return list(results), time.monotonic() - started, _cpu_s() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=300)
    args = parser.parse_args(argv)
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    server = context.Process(target=_serve, args=(theirs,), daemon=True)
    server.start()
    _pin(1)
    base_url, api_key = ours.recv()
    stamps = ClientStamps()
    stamps.install()
    report: dict[str, Any] = {"streams": args.streams, "first_token_s": FIRST_TOKEN_S}
    try:
        for name, concurrency in (("sequential", 1), ("concurrent_32", 32)):
            stamps.by_request.clear()
            results, elapsed, cpu = asyncio.run(
                _phase(base_url, api_key, args.streams, concurrency)
            )
            ours.send("timings")
            server_times: dict[str, tuple[float, float]] = ours.recv()
            figures: dict[str, list[float]] = {key: [] for key in FIGURES}
            for result in results:
                received, written = server_times[result.request_id]
                stamp = stamps.by_request[result.request_id]
                start, came = stamp["opened"], stamp["arrived"]
                figures["ttft"].append(result.ttft_s)
                figures["server_ttft"].append(written - received)
                figures["overhead"].append(result.ttft_s - (written - received))
                figures["send_path"].append(received - start)
                figures["wire_back"].append(came - written)
                figures["parse"].append(start + result.ttft_s - came)
            phase = {key: _summary(values) for key, values in figures.items()}
            phase["elapsed_s"] = round(elapsed, 3)  # type: ignore[assignment]
            phase["client_cpu_us_per_request"] = round(cpu / len(results) * 1e6)  # type: ignore[assignment]
            report[name] = phase
        _, _, plain_cpu = asyncio.run(_phase(base_url, api_key, args.streams, 32, stream=False))
        ours.send("timings")
        ours.recv()
        report["plain_concurrent_32_client_cpu_us_per_request"] = round(
            plain_cpu / args.streams * 1e6
        )
    finally:
        ours.send("stop")
        server.join(timeout=10)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
