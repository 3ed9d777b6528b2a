"""Shared machinery of the benchmark suite: CPU placement, the fake server, clients, numbers.

The suite runs three kinds of process, never sharing an event loop:

- the *orchestrator* (``run_all.py``): starts servers and clients, changes
  limits, polls the server's ledger, computes figures;
- one *fake server* per scenario (``python -m ratelane fake-server``);
- one *client* per measured run (``python benchmarks/_client.py SPEC``), a
  fresh interpreter that prints one JSON line of measurements.

Where ``os.sched_setaffinity`` exists and two CPUs are available, servers run
on the first CPU and the orchestrator plus its clients on the second.

The smoke level (``run_all.py --smoke``, for the test suite) proves the
scripts run, not how fast: :func:`use_one_process` makes every server a
:class:`~ratelane.testing.FakeOpenAI` in a thread of the orchestrator and every
client a thread with its own event loop, so the suite pays one interpreter
start instead of dozens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
CLIENT_SCRIPT = BENCH_DIR / "_client.py"
API_KEY = "sk-bench-0123456789"
MODEL = "gpt-4.1-mini"
SERVER_START_TIMEOUT_S = 30.0

# Set by use_one_process(): servers and clients run in this process (smoke level).
_IN_PROCESS = False


def use_one_process() -> None:
    """Run servers and clients inside this process from now on (the smoke level)."""
    global _IN_PROCESS
    _IN_PROCESS = True


def server_command_args(options: dict[str, Any]) -> list[str]:
    """``fake-server`` flags for ``options``: ``{"rpm": 600, "first_window_used": True}``.

    ``True`` is a bare flag, ``False`` and ``None`` are left out. A server given
    neither ``rpm`` nor ``tpm`` is unlimited (``--unlimited``), not the fake's
    default tier-5 account, so the unlimited scenarios measure the client alone.
    """
    args = ["--port", "0", "--api-key", API_KEY, "--ledger-limit", "0"]
    if "rpm" not in options and "tpm" not in options:
        args.append("--unlimited")
    for name, value in options.items():
        flag = f"--{name.replace('_', '-')}"
        if value is True:
            args.append(flag)
        elif value is not False and value is not None:
            args += [flag, str(value)]
    return args


# -- placement ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Placement:
    """Which CPU the servers use and which the clients use (``None``: not pinned)."""

    server_cpu: int | None
    client_cpu: int | None
    all_cpus: frozenset[int] = frozenset()

    @classmethod
    def pin(cls) -> Placement:
        """Pin this process (and so every client it starts) to the second CPU."""
        if not hasattr(os, "sched_setaffinity"):
            return cls(None, None)
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return cls(None, None, frozenset(cpus))
        os.sched_setaffinity(0, {cpus[1]})
        return cls(cpus[0], cpus[1], frozenset(cpus))

    def describe(self) -> str:
        if self.server_cpu is None:
            return "not pinned (sched_setaffinity unavailable or a single CPU)"
        return (
            f"fake server pinned to CPU {self.server_cpu}, clients and orchestrator "
            f"pinned to CPU {self.client_cpu} (os.sched_setaffinity)"
        )


def raise_open_files(needed: int) -> str:
    """Raise the soft RLIMIT_NOFILE to the hard limit if ``needed`` is above it; say what."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return f"RLIMIT_NOFILE soft limit {soft} already covers {needed} sockets; unchanged"
    target = hard if hard != resource.RLIM_INFINITY else max(needed, soft)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    note = f"raised RLIMIT_NOFILE soft limit from {soft} to {target} (hard {hard})"
    if target < needed:
        note += f"; still below the {needed} needed"
    return note


# -- measurement helpers (used by the client processes) -------------------------


def cpu_s() -> float:
    """User + system CPU seconds of this process so far (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu_s() -> float:
    """User + system CPU seconds of waited-for children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rss_mb() -> float:
    """Current resident set size in MB (Linux ``/proc``; peak RSS elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB.

    ``VmHWM`` from ``/proc`` where available: ``ru_maxrss`` is only updated
    lazily by Linux and can read below the current RSS.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU time of another process, from /proc (Linux only)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the fake server -------------------------------------------------------------


class FakeServer:
    """``python -m ratelane fake-server`` in a child process, with its admin endpoints.

    ``options`` are command-line flags, e.g. ``{"rpm": 3000, "latency": 0.5}``.
    """

    def __init__(self, placement: Placement, **options: Any) -> None:
        self.placement = placement
        self.options = options
        self.process: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    def __enter__(self) -> FakeServer:
        if _IN_PROCESS:
            return self._start_in_thread()
        command = [sys.executable, "-m", "ratelane", "fake-server"]
        command += server_command_args(self.options)
        process = subprocess.Popen(command, stdout=subprocess.PIPE)
        self.process = process
        if self.placement.server_cpu is not None:
            os.sched_setaffinity(process.pid, {self.placement.server_cpu})
        lines: list[bytes] = []
        assert process.stdout is not None
        stdout = process.stdout
        reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(SERVER_START_TIMEOUT_S)
        if not lines or not lines[0]:
            self.stop()
            raise RuntimeError(f"the fake server did not start: {' '.join(command)}")
        self.info = json.loads(lines[0])
        return self

    def _start_in_thread(self) -> FakeServer:
        import argparse

        from ratelane.testing._command import _server_from_args, add_parser

        parser = argparse.ArgumentParser()
        add_parser(parser.add_subparsers())
        args = parser.parse_args(["fake-server", *server_command_args(self.options)])
        self._thread_server = _server_from_args(args).start_in_thread()
        server = self._thread_server
        self.info = {
            "base_url": server.base_url,
            "api_key": server.api_key,
            "admin_url": f"{server.url}/_fake",
            "pid": os.getpid(),
        }
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        thread_server = getattr(self, "_thread_server", None)
        if thread_server is not None:
            thread_server.stop()
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    @property
    def base_url(self) -> str:
        return str(self.info["base_url"])

    def _admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.info['admin_url']}{path}", data=data, method=method
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def set_limits(self, *, rpm: float | None = None, tpm: float | None = None) -> Any:
        update: dict[str, Any] = {}
        if rpm is not None:
            update["rpm"] = rpm
        if tpm is not None:
            update["tpm"] = tpm
        return self._admin("POST", "/limits", update)

    def ledger(self, bucket_s: float = 1.0) -> dict[str, Any]:
        result: dict[str, Any] = self._admin("GET", f"/ledger?bucket_s={bucket_s:g}")
        return result

    def reset(self) -> None:
        self._admin("POST", "/reset", {})

    def cpu_s(self) -> float | None:
        if _IN_PROCESS:
            return cpu_s()
        return None if self.process is None else process_cpu_s(self.process.pid)


@dataclass(frozen=True, slots=True)
class Sample:
    """One poll of the server's ledger: orchestrator monotonic time and counters."""

    time_s: float
    total: int
    rate_limited: int
    tokens: int


@dataclass
class LedgerPoller:
    """Polls the ledger every ``interval_s`` in a thread, for series the ledger lacks.

    The ledger's own ``rate_series`` counts admitted requests only; this adds
    429s and charged tokens over time. ``started`` is set at the first poll
    that sees a request.
    """

    server: FakeServer
    interval_s: float = 0.25
    limit_s: float = 900.0
    samples: list[Sample] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> LedgerPoller:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                # A large bucket keeps the summary's series short.
                summary = self.server.ledger(bucket_s=60)
                sample = Sample(
                    time.monotonic(),
                    int(summary["total"]),
                    int(summary["rate_limited"]),
                    int(summary["tokens_charged"]),
                )
                self.samples.append(sample)
                if sample.total > 0:
                    self.started.set()
            self._stop.wait(self.interval_s)

    def first_request_s(self) -> float | None:
        return next((s.time_s for s in self.samples if s.total > 0), None)


# -- clients ----------------------------------------------------------------------


class InProcessClient:
    """A client run in a thread of this process with its own event loop (smoke level).

    Quacks like the ``Popen`` that :func:`start_client` returns, as far as
    :func:`finish_client` and ``terminate()`` go.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        import _client

        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[dict[str, Any]] | None = None
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None
        started = threading.Event()

        def body() -> None:
            asyncio.set_event_loop(self._loop)
            try:

                async def main() -> dict[str, Any]:
                    return await _client.run_spec_async(spec)

                self._task = self._loop.create_task(main())
                started.set()
                self.result = self._loop.run_until_complete(self._task)
            except BaseException as exc:  # reported by finish()
                self.error = exc
            finally:
                started.set()
                self._loop.close()

        self._thread = threading.Thread(target=body, name="bench-client", daemon=True)
        self._thread.start()
        started.wait()

    def terminate(self) -> None:
        task = self._task
        if task is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(task.cancel)

    def finish(self, timeout_s: float) -> dict[str, Any]:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self.terminate()
            raise subprocess.TimeoutExpired("in-process client", timeout_s)
        if self.error is not None or self.result is None:
            raise RuntimeError(f"client failed: {self.error!r}") from self.error
        return self.result


def run_client(spec: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
    """Run ``_client.py`` with ``spec`` in a fresh interpreter; return its JSON result."""
    if _IN_PROCESS:
        return InProcessClient(spec).finish(timeout_s)
    completed = subprocess.run(
        [sys.executable, str(CLIENT_SCRIPT), json.dumps(spec)],
        capture_output=True,
        timeout=timeout_s,
        check=False,
    )
    lines = completed.stdout.decode().strip().splitlines()
    if completed.returncode != 0 or not lines:
        raise RuntimeError(
            f"client {spec.get('variant')} exited {completed.returncode}: "
            f"{completed.stderr.decode()[-2000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def start_client(spec: dict[str, Any]) -> subprocess.Popen[bytes] | InProcessClient:
    """Start ``_client.py`` without waiting; read it with :func:`finish_client`."""
    if _IN_PROCESS:
        return InProcessClient(spec)
    return subprocess.Popen(
        [sys.executable, str(CLIENT_SCRIPT), json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish_client(
    process: subprocess.Popen[bytes] | InProcessClient, *, timeout_s: float
) -> dict[str, Any]:
    if isinstance(process, InProcessClient):
        return process.finish(timeout_s)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    lines = stdout.decode().strip().splitlines()
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"client exited {process.returncode}: {stderr.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def client_spec(server: FakeServer, variant: str, **options: Any) -> dict[str, Any]:
    return {"variant": variant, "base_url": server.base_url, "api_key": API_KEY, **options}


# -- numbers -----------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def steady(series: Sequence[float], head: int, tail: int) -> tuple[list[float], bool]:
    """``series`` without its first ``head`` and last ``tail`` entries, and True; when the
    run is too short for that, all but the first and last entry (if any), and False."""
    if len(series) > head + tail:
        return list(series[head : len(series) - tail]), True
    return list(series[1:-1] or series), False


def trim_idle(series: Sequence[int]) -> list[int]:
    """Drop trailing empty buckets (after the last request)."""
    end = len(series)
    while end and series[end - 1] == 0:
        end -= 1
    return list(series[:end])


def target(name: str, goal: str, measured: str, met: bool | None) -> dict[str, Any]:
    """One target row: ``met`` is None when it could not be measured."""
    return {"target": name, "goal": goal, "measured": measured, "met": met}


def limit_row(label: str, achieved: float, data: dict[str, Any], run_: Any) -> list[str]:
    """One table row of a limit-bound scenario (request or token limit)."""
    client = run_.client
    steady_note = "" if data["steady_state_reached"] else " (no steady state)"
    return [
        label,
        fmt(achieved, 0),
        pct(data["achieved_fraction"]) + steady_note,
        pct(data["rate_limited_fraction"], 2),
        f"{run_.ledger['rate_limited']}/{run_.ledger['total']}",
        str(client["failed"]),
        fmt(client["wall_s"], 1),
    ]


def limit_targets(kind: str, symbol: str, ours: dict[str, Any]) -> list[dict[str, Any]]:
    """The two targets of a limit-bound scenario: share of the limit, share of 429s."""
    return [
        target(
            f"{kind} limit achieved (steady state)",
            f">= 97% of {symbol}",
            pct(ours["achieved_fraction"]),
            ours["achieved_fraction"] >= 0.97,
        ),
        target(
            f"429 fraction under a {kind} limit",
            "<= 1%",
            pct(ours["rate_limited_fraction"], 2),
            ours["rate_limited_fraction"] <= 0.01,
        ),
    ]


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value * 100:.{digits}f}%"


def windows(
    series: Sequence[float], slot_s: float, start_s: float, end_s: float
) -> Iterator[tuple[float, float]]:
    """Sliding 1-second windows over a fine series: ``(window start, count per second)``,
    starting every ``slot_s`` from ``start_s`` until a window would pass ``end_s``."""
    per_window = round(1.0 / slot_s)
    first = max(0, math.floor(start_s / slot_s + 1e-9))
    last = min(len(series), math.floor(end_s / slot_s + 1e-9))
    prefix = [0.0]
    for value in series:
        prefix.append(prefix[-1] + value)
    for index in range(first, last - per_window + 1):
        yield index * slot_s, prefix[index + per_window] - prefix[index]


# -- scenarios ------------------------------------------------------------------------


_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class Context:
    """What every scenario gets: the size level, where to write, and the CPU placement.

    ``quick`` is true at the ``"quick"`` and ``"smoke"`` levels; ``smoke`` only
    at the smallest, which proves the scenarios run (see :func:`use_one_process`).
    """

    quick: bool
    out_dir: Path
    placement: Placement
    smoke: bool = False

    def log(self, message: str) -> None:
        print(f"  .. {message}", flush=True)

    def pick(self, quick: Any, full: Any, smoke: Any = _UNSET) -> Any:
        """The value for this level; the smoke level falls back to ``quick``."""
        if self.smoke and smoke is not _UNSET:
            return smoke
        return quick if self.quick else full


def report(
    name: str,
    title: str,
    *,
    config: dict[str, Any],
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    figures: dict[str, Any],
    targets: Sequence[dict[str, Any]] = (),
    notes: Sequence[str] = (),
    plots: Sequence[str] = (),
) -> dict[str, Any]:
    """The dict every scenario returns (and ``results.json`` stores under ``name``)."""
    return {
        "name": name,
        "title": title,
        "config": config,
        "table": {"columns": list(columns), "rows": [list(row) for row in rows]},
        "figures": figures,
        "targets": list(targets),
        "notes": list(notes),
        "plots": list(plots),
    }


# -- the CLI (written in parallel with this suite) ----------------------------------------


def cli_help() -> str | None:
    """``ratelane run --help`` text, or ``None`` when the ``run`` command does not exist."""
    if _IN_PROCESS:
        return _cli_help_in_process()
    completed = subprocess.run(
        [sys.executable, "-m", "ratelane", "run", "--help"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return completed.stdout.decode() if completed.returncode == 0 else None


def _cli_help_in_process() -> str | None:
    """The same text from the CLI's parser, without starting an interpreter."""
    import argparse

    from ratelane._cli.main import build_parser

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            command = action.choices.get("run")
            return None if command is None else str(command.format_help())
    return None


def cli_args(help_text: str, concurrency: int) -> list[str]:
    """Concurrency and quiet flags, as far as the CLI's help offers them."""
    words = help_text.split()
    flags = [flag for flag in ("--max-concurrency", "--concurrency") if flag in words]
    args = [flags[0], str(concurrency)] if flags else []
    if "--no-progress" in words:
        args.append("--no-progress")
    return args


@dataclass
class LimitedRun:
    """One client run against its own fake server, with the server's view of it.

    ``first_s`` is the server's clock at its first request. The server uses
    ``time.monotonic``, a system-wide clock on Linux and macOS, so it compares
    with the poller's sample times taken in this process.
    """

    client: dict[str, Any]
    ledger: dict[str, Any]
    samples: list[Sample]
    first_s: float

    @property
    def rate_limited_fraction(self) -> float:
        total = int(self.ledger["total"])
        return int(self.ledger["rate_limited"]) / total if total else 0.0

    def token_series(self) -> tuple[list[float], list[float]]:
        """Charged tokens per second over time from the poller: ``(times, rates)``,
        times relative to the first request."""
        times: list[float] = []
        rates: list[float] = []
        for before, after in zip(self.samples, self.samples[1:], strict=False):
            span = after.time_s - before.time_s
            if span > 0 and after.time_s >= self.first_s:
                times.append(before.time_s - self.first_s)
                rates.append((after.tokens - before.tokens) / span)
        return times, rates

    def tokens_at(self, offset_s: float) -> float:
        """Charged tokens at ``offset_s`` after the first request, interpolated."""
        moment = self.first_s + offset_s
        previous = self.samples[0]
        for sample in self.samples:
            if sample.time_s >= moment:
                span = sample.time_s - previous.time_s
                if span <= 0:
                    return float(sample.tokens)
                share = (moment - previous.time_s) / span
                return previous.tokens + share * (sample.tokens - previous.tokens)
            previous = sample
        return float(self.samples[-1].tokens)

    def last_token_s(self) -> float:
        """Offset of the first poll that saw the final token count."""
        final = self.samples[-1].tokens
        moment = next(s.time_s for s in self.samples if s.tokens == final)
        return moment - self.first_s


def limited_run(
    ctx: Context,
    server_options: dict[str, Any],
    variant: str,
    *,
    timeout_s: float,
    poll_s: float = 0.25,
    **client_options: Any,
) -> LimitedRun:
    """Run ``variant`` against a fresh server started with ``server_options``."""
    with FakeServer(ctx.placement, **server_options) as server:
        with LedgerPoller(server, interval_s=poll_s, limit_s=timeout_s + 60) as poller:
            client = run_client(client_spec(server, variant, **client_options), timeout_s=timeout_s)
            time.sleep(poll_s * 1.5)  # one more poll after the last answer
        ledger = server.ledger(bucket_s=1)
    first_s = ledger["first_s"] if ledger["first_s"] is not None else time.monotonic()
    return LimitedRun(client, ledger, list(poller.samples), float(first_s))
