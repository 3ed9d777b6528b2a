"""``ratelane demo``: a full run against the built-in fake server, no key or network needed.

Writes a sample Batch-format file (``--count`` requests, mixed prompts and
endpoints) into ``--dir``, starts :class:`~ratelane.testing.FakeOpenAI` in
this process with realistic limits and latency, and runs the file through
exactly the code path of ``ratelane run`` (validation, lock, checkpointed
output, progress bar, summary). Then it shows the first results and the
command that runs the same file for real.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import sys
from pathlib import Path
from typing import Any

import orjson

from ratelane._core.argtypes import positive_int
from ratelane._core.errors import OutputLockedError
from ratelane._core.models import output_text_of
from ratelane._files.checkpoint import OutputLock

from .main import EXIT_USAGE
from .run import RunSettings, default_errors_path, run_batch

__all__ = ["add_parser", "run", "write_sample_input"]

DEFAULT_DIR = "ratelane-demo"
DEFAULT_COUNT = 1000
#: Limits of the demo server: ~1000 requests take 10-15 s, with some 429s possible.
DEMO_RPM = 6000
DEMO_TPM = 2_000_000
#: Median seconds per answer, with a lognormal spread like a real API.
#: Median latency of the demo server, lognormal with sigma 0.5.
DEMO_LATENCY_S = 0.2
DEMO_MODEL = "gpt-4.1-mini"
#: Requests in flight at most: plenty for 100 requests/s at ~0.2 s each.
DEMO_MAX_CONCURRENCY = 64
SHOWN_RESULTS = 5

_TOPICS = (
    "the sea", "autumn leaves", "a lighthouse", "rate limits", "coffee", "a city at night",
    "mountains", "the first snow", "a library", "trains", "bees", "the moon",
)  # fmt: skip
_PHRASES = (
    "The quick brown fox jumps over the lazy dog",
    "Where is the nearest train station",
    "I would like a cup of tea, please",
    "The meeting has been moved to Thursday",
    "Please close the window when you leave",
)


def _prompt(rng: random.Random, number: int) -> str:
    topic = rng.choice(_TOPICS)
    kind = number % 5
    if kind == 0:
        return f"Write a haiku about {topic}."
    if kind == 1:
        return f"Translate into French: {rng.choice(_PHRASES)}."
    if kind == 2:
        return f"What is {rng.randint(2, 99)} times {rng.randint(2, 99)}?"
    if kind == 3:
        return f"Give three surprising facts about {topic}, one line each."
    return f"Summarise in one sentence why {topic} matters to poets."


def _line(rng: random.Random, number: int) -> dict[str, Any]:
    custom_id = f"demo-{number:05d}"
    prompt = _prompt(rng, number)
    if number % 7 == 6:
        body: dict[str, Any] = {
            "model": DEMO_MODEL,
            "messages": [
                {"role": "system", "content": "You are concise."},
                {"role": "user", "content": prompt},
            ],
            "max_completion_tokens": 200,
        }
        url = "/v1/chat/completions"
        return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}
    body = {"model": DEMO_MODEL, "input": prompt}
    if number % 3:
        body["max_output_tokens"] = rng.choice((64, 128, 256))
    if number % 4 == 1:
        body["instructions"] = "Answer briefly."
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/responses", "body": body}


def write_sample_input(path: Path, count: int, *, seed: int = 0) -> list[str]:
    """Write ``count`` Batch-format request lines to ``path``; return the first few custom_ids."""
    rng = random.Random(seed)
    first: list[str] = []
    with path.open("wb") as file:
        for number in range(1, count + 1):
            line = _line(rng, number)
            if len(first) < SHOWN_RESULTS:
                first.append(line["custom_id"])
            file.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
    return first


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="try ratelane offline: a sample run against the built-in fake server",
        description=(
            "Generate a sample Batch-format file, start the built-in fake OpenAI server "
            f"(rpm {DEMO_RPM:,}, tpm {DEMO_TPM:,}, ~{DEMO_LATENCY_S:g} s latency) and "
            "run the file through `ratelane run`'s code path. No API key or network needed."
        ),
    )
    add = parser.add_argument
    add(
        "--dir",
        type=Path,
        default=Path(DEFAULT_DIR),
        help=f"where to write input.jsonl and output.jsonl (default ./{DEFAULT_DIR}/)",
    )
    add(
        "--count",
        type=positive_int,
        default=DEFAULT_COUNT,
        help=f"requests in the sample file (default {DEFAULT_COUNT})",
    )
    add("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)
    return parser


def _fresh_output(output_path: Path, errors_path: Path) -> str | None:
    """Remove an earlier demo's results (a demo always starts over); a problem, or None."""
    try:
        with OutputLock(output_path):
            for path in (output_path, errors_path):
                path.unlink(missing_ok=True)
    except OutputLockedError as exc:
        return str(exc)
    return None


def _first_results(output_path: Path, custom_ids: list[str]) -> dict[str, str]:
    wanted = set(custom_ids)
    found: dict[str, str] = {}
    with output_path.open("rb") as file:
        for raw in file:
            line = orjson.loads(raw)
            custom_id = line.get("custom_id")
            if custom_id in wanted:
                found[custom_id] = output_text_of(line["response"]["body"])
                if len(found) == len(wanted):
                    break
    return found


def _shorten(text: str, limit: int = 72) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def run(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"ratelane demo: cannot create {directory}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    input_path = directory / "input.jsonl"
    output_path = directory / "output.jsonl"
    errors_path = default_errors_path(output_path)
    problem = _fresh_output(output_path, errors_path)
    if problem is not None:
        print(f"ratelane demo: {problem}", file=sys.stderr)
        return EXIT_USAGE
    first_ids = write_sample_input(input_path, args.count)
    print(
        f"ratelane demo: wrote {args.count:,} sample requests to {input_path}; sending them to "
        f"a local fake OpenAI server (rpm {DEMO_RPM:,}, tpm {DEMO_TPM:,})",
        file=sys.stderr,
        flush=True,
    )
    # Imported here, not at the top: only the demo subcommand loads the fake server.
    from ratelane.testing import FakeOpenAI, Latency

    latency = Latency(DEMO_LATENCY_S, sigma=0.5)
    server = FakeOpenAI(rpm=DEMO_RPM, tpm=DEMO_TPM, latency=latency, ledger_limit=1000, seed=0)
    with server.run_in_thread():
        settings = RunSettings(
            input_path=input_path,
            output_path=output_path,
            errors_path=errors_path,
            base_url=server.base_url,
            max_concurrency=DEMO_MAX_CONCURRENCY,
            progress=not args.no_progress and sys.stderr.isatty(),
            remember_limits=False,  # a throwaway server: nothing worth remembering
        )
        code = run_batch(settings, api_key=server.api_key)
    if output_path.exists():
        results = _first_results(output_path, first_ids)
        if results:
            print("\nFirst results (custom_id -> output_text):")
            for custom_id in first_ids:
                if custom_id in results:
                    print(f"  {custom_id} -> {_shorten(results[custom_id])}")
    own_output = os.fspath(directory / "my-output.jsonl")
    command = shlex.join(["ratelane", "run", os.fspath(input_path), "-o", own_output])
    print(
        f"\nResults are in {output_path}, one Batch API output line each.\n"
        "Run the same file against the real API yourself:\n"
        f"  export OPENAI_API_KEY=sk-...\n  {command}"
    )
    return code
