"""How many requests per second the fake server answers on one core.

Starts ``python -m ratelane fake-server --port 0`` in a subprocess pinned to one
CPU (when ``os.sched_setaffinity`` exists), drives it from this process (pinned
to another CPU) with a minimal aiohttp client: N workers, zero latency, no
limits, a bounded number of requests. Prints the results; writes no files.

Two numbers come out: the wall-clock rate, which is bounded by whichever side
is slower (often this Python client), and the server's own capacity, requests
divided by the CPU seconds the server process used (from ``/proc``), which is
what the server could sustain on a fully busy core.

    python benchmarks/fake_server_capacity.py --requests 20000 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp

API_KEY = "sk-bench"
BODIES = {
    "responses": (
        "/responses",
        {"model": "gpt-4.1-mini", "input": "ping", "max_output_tokens": 64},
    ),
    "chat": (
        "/chat/completions",
        {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "ping"}]},
    ),
    "embeddings": ("/embeddings", {"model": "text-embedding-3-small", "input": "ping"}),
}
START_TIMEOUT_S = 30.0


def start_server(cpu: int | None) -> tuple[subprocess.Popen[bytes], dict[str, object]]:
    # Unlimited: the default tier-5 account would cap the rate this measures.
    command = [sys.executable, "-m", "ratelane", "fake-server", "--port", "0", "--unlimited",
               "--api-key", API_KEY, "--ledger-limit", "0"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    if cpu is not None:
        os.sched_setaffinity(process.pid, {cpu})
    assert process.stdout is not None
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    reader.join(START_TIMEOUT_S)
    if not lines or not lines[0]:
        process.kill()
        process.wait()
        raise SystemExit("the fake server did not print its address in time")
    return process, json.loads(lines[0])


def stop_server(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process, from /proc (Linux only)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the command name: state is field 3, utime field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(base_url: str, path: str, body: bytes, requests: int, concurrency: int) -> float:
    """Send ``requests`` requests with ``concurrency`` workers; return the wall time."""
    url = base_url + path
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(count: int) -> None:
            for _ in range(count):
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"unexpected status {response.status}")

        shares = [
            requests // concurrency + (i < requests % concurrency) for i in range(concurrency)
        ]
        started = time.perf_counter()
        await asyncio.gather(*(worker(share) for share in shares))
        return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--endpoint", choices=sorted(BODIES), default="responses")
    args = parser.parse_args()

    pinned = hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2
    cpus = sorted(os.sched_getaffinity(0)) if pinned else []
    server_cpu, client_cpu = (cpus[0], cpus[1]) if pinned else (None, None)
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    process, info = start_server(server_cpu)
    try:
        path, payload = BODIES[args.endpoint]
        body = json.dumps(payload).encode()
        base_url = str(info["base_url"])
        asyncio.run(drive(base_url, path, body, args.warmup, args.concurrency))
        cpu_before = cpu_seconds(process.pid)
        wall_s = asyncio.run(drive(base_url, path, body, args.requests, args.concurrency))
        cpu_after = cpu_seconds(process.pid)
    finally:
        stop_server(process)
    placement = f"server on CPU {server_cpu}, client on CPU {client_cpu}" if pinned else "unpinned"
    print(f"endpoint {args.endpoint}: {args.requests} requests, {args.concurrency} workers, "
          f"{placement}")  # fmt: skip
    print(f"wall clock: {wall_s:.2f} s, {args.requests / wall_s:,.0f} requests/s")
    if cpu_before is not None and cpu_after is not None and cpu_after > cpu_before:
        server_cpu_s = cpu_after - cpu_before
        print(f"server CPU: {server_cpu_s:.2f} s, capacity "
              f"{args.requests / server_cpu_s:,.0f} requests/s per core")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
