"""Chains in a Batch file: lines that name a parent with ``"previous_custom_id"``.

::

    {"custom_id": "t1", "method": "POST", "url": "/v1/responses", "body": {...}}
    {"custom_id": "t2", "previous_custom_id": "t1", "method": "POST", "url": "/v1/responses",
     "body": {"model": "gpt-4.1-mini", "input": "And then?"}}

``t2`` is sent after ``t1`` succeeded, with ``body.previous_response_id`` set to
``t1``'s response id (the scheduler: ``ratelane._engine.chains``). Lines may
come in any order in the file.

Checked before anything is sent (exit 2, with line numbers): a parent that
names no line, a cycle, a parent with ``"store": false`` (its response is not
kept, so nothing can continue it), a parent or child on another endpoint
than ``/v1/responses``, and a child that also sets ``previous_response_id``.
The shape of ``previous_custom_id`` itself (a non-empty string, not the
line's own id) is the line validator's (``ratelane._core.batch_line``).

Cost: one byte search of INPUT when it has no chains (read in 1 MB chunks, about
a gigabyte a second); with chains, one parse of every line and a map of every
``custom_id`` (about 100 bytes each), and on resume one read of OUTPUT for
the parents' response ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ratelane._engine.chains import response_id_of

from .input import _READ_BUFFER, _numbered_lines

__all__ = ["MARKER", "ChainGraph", "ChainInputError", "load_chains", "parent_ids"]

MARKER = b'"previous_custom_id"'
RESPONSES = "/v1/responses"
MAX_REPORTED = 10


class ChainInputError(ValueError):
    """INPUT's chains are inconsistent; ``problems`` are ``(line, message)``, by line."""

    def __init__(self, problems: list[tuple[int, str]], total: int) -> None:
        shown = "\n".join(f"  line {line}: {message}" for line, message in problems)
        more = f"\n  ... and {total - len(problems)} more" if total > len(problems) else ""
        super().__init__(
            f"INPUT's chains have {total} problem{'s' if total != 1 else ''} "
            f'("previous_custom_id"), nothing was sent:\n{shown}{more}'
        )
        self.problems = problems
        self.total = total


@dataclass(slots=True)
class _Line:
    number: int
    url: object
    stores: bool
    parent: str | None
    has_previous_id: bool


@dataclass(frozen=True, slots=True)
class ChainGraph:
    """``parent_of``: child custom_id -> parent custom_id, for every chained line."""

    parent_of: dict[str, str] = field(default_factory=dict)

    @property
    def parents(self) -> frozenset[str]:
        return frozenset(self.parent_of.values())


#: Bytes read at a time by :func:`has_chains`.
SCAN_CHUNK = 1 << 20


def has_chains(path: Path) -> bool:
    """Whether INPUT mentions ``previous_custom_id`` at all (one byte search).

    Read in chunks into one reused buffer, not mapped: every page of a mapping
    that the search touches counts in the process's RSS (a 1,000,000-line INPUT
    added its whole size, ~330 MB, to the peak).
    """
    overlap = len(MARKER) - 1
    buffer = bytearray(SCAN_CHUNK + overlap)
    view = memoryview(buffer)
    kept = 0
    with open(path, "rb", buffering=0) as file:
        while True:
            read = file.readinto(view[kept : kept + SCAN_CHUNK])
            if not read:
                return False
            end = kept + read
            if buffer.find(MARKER, 0, end) >= 0:
                return True
            kept = min(overlap, end)
            buffer[:kept] = buffer[end - kept : end]


def _read_lines(path: Path) -> dict[str, _Line]:
    lines: dict[str, _Line] = {}
    for number, raw in _numbered_lines(path):
        obj = orjson.loads(raw)  # INPUT was validated: every line is an object
        body = obj.get("body")
        body = body if isinstance(body, dict) else {}
        parent = obj.get("previous_custom_id")
        lines[obj["custom_id"]] = _Line(
            number,
            obj.get("url"),
            body.get("store") is not False,
            parent if isinstance(parent, str) else None,
            "previous_response_id" in body,
        )
    return lines


def _problems(lines: dict[str, _Line]) -> Iterator[tuple[int, str]]:
    for line in lines.values():
        parent_id = line.parent
        if parent_id is None:
            continue
        parent = lines.get(parent_id)
        if parent is None:
            yield (
                line.number,
                (
                    f'"previous_custom_id" "{parent_id}" names no line of INPUT. HINT: give the '
                    "custom_id of the line this one continues"
                ),
            )
            continue
        if line.url != RESPONSES or parent.url != RESPONSES:
            where = line if line.url != RESPONSES else parent
            which = (
                "this line" if where is line else f'its parent "{parent_id}" (line {parent.number})'
            )
            yield (
                line.number,
                (
                    f"{which} is a {where.url} request, but chains continue stored responses of "
                    f'{RESPONSES} only. HINT: use "url": "{RESPONSES}" for every line of a chain'
                ),
            )
        if not parent.stores:
            yield (
                line.number,
                (
                    f'its parent "{parent_id}" (line {parent.number}) has "store": false, so its '
                    'response is not kept and cannot be continued. HINT: remove "store": false '
                    f"from line {parent.number}"
                ),
            )
        if line.has_previous_id:
            yield (
                line.number,
                (
                    'the body sets "previous_response_id" and the line sets "previous_custom_id": '
                    "the second fills the first. HINT: keep only one"
                ),
            )
    yield from _cycles(lines)


def _cycles(lines: dict[str, _Line]) -> Iterator[tuple[int, str]]:
    """Each cycle of parents once, reported at its first line, naming every member."""
    state: dict[str, int] = {}  # 1: on the current path, 2: known to end outside a cycle
    for start in lines:
        path: list[str] = []
        node: str | None = start
        while node is not None and node in lines and state.get(node) is None:
            state[node] = 1
            path.append(node)
            node = lines[node].parent
        if node is not None and state.get(node) == 1:
            cycle = path[path.index(node) :]
            numbers = sorted(lines[member].number for member in cycle)
            names = " -> ".join(f'"{member}"' for member in [*cycle, node])
            yield (
                numbers[0],
                (
                    f"lines {', '.join(map(str, numbers))} form a cycle of parents ({names}): "
                    'none can be sent first. HINT: fix their "previous_custom_id"'
                ),
            )
        for member in path:
            state[member] = 2


def load_chains(path: Path) -> ChainGraph | None:
    """INPUT's chains (``None`` when it has none); :class:`ChainInputError` when inconsistent."""
    if not has_chains(path):
        return None
    lines = _read_lines(path)
    problems = sorted(_problems(lines))
    if problems:
        raise ChainInputError(problems[:MAX_REPORTED], len(problems))
    parent_of = {key: line.parent for key, line in lines.items() if line.parent is not None}
    return ChainGraph(parent_of) if parent_of else None


def parent_ids(output_path: Path, parents: frozenset[str]) -> dict[str, str]:
    """Response ids of ``parents`` that already succeeded, read from OUTPUT (resume)."""
    found: dict[str, str] = {}
    try:
        file = open(output_path, "rb", buffering=_READ_BUFFER)  # noqa: SIM115
    except FileNotFoundError:
        return found
    with file:
        for raw in file:
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # a torn last line (repaired before this is read)
            if not isinstance(line, dict) or line.get("custom_id") not in parents:
                continue
            response = line.get("response")
            response_id = (
                response_id_of(response.get("body")) if isinstance(response, dict) else None
            )
            if response_id is not None:
                found[line["custom_id"]] = response_id
    return found
