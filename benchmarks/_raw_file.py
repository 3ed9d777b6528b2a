"""The file job hand-rolled: the floor a file-to-file CLI is measured against.

``python _raw_file.py INPUT OUTPUT`` reads a Batch-format JSONL file, POSTs each
line's body with a pool of aiohttp workers (``RAW_CONCURRENCY``, default 64)
to ``OPENAI_BASE_URL`` and writes one Batch output line per answer, buffered,
with no retries, no limits, no validation and no resume: what a user's
``asyncio.gather`` script does.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import BinaryIO

import aiohttp
import orjson


async def run(source: BinaryIO, output: BinaryIO) -> int:
    base_url = os.environ["OPENAI_BASE_URL"].rstrip("/")
    headers = {
        "Authorization": f"Bearer {os.environ['OPENAI_API_KEY']}",
        "Content-Type": "application/json",
    }
    concurrency = int(os.environ.get("RAW_CONCURRENCY", "64"))
    written = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    lines = (orjson.loads(raw) for raw in source if raw.strip())
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            nonlocal written
            for line in lines:
                url = base_url + line["url"].removeprefix("/v1")
                async with session.post(url, data=orjson.dumps(line["body"])) as response:
                    body = orjson.loads(await response.read())
                    record = {
                        "custom_id": line["custom_id"],
                        "response": {"status_code": response.status, "body": body},
                    }
                    output.write(orjson.dumps(record) + b"\n")
                    written += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return written


def main() -> int:
    with open(sys.argv[1], "rb") as source, open(sys.argv[2], "wb") as output:
        asyncio.run(run(source, output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
