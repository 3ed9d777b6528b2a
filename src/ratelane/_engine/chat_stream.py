"""A Chat Completions stream put back together: chunks in, one ``chat.completion`` out.

Protocol notes 5.5: each chunk carries ``choices[i].delta`` pieces (``role``,
``content``, ``refusal``, ``tool_calls`` by index with their ``arguments`` in
pieces) and a ``finish_reason`` at the end of a choice; with
``stream_options.include_usage`` a last chunk with ``choices: []`` holds the
usage. The assembled body has the shape a plain create returns: ``object``
``chat.completion``, each choice's whole ``message`` (``content`` ``None`` when
no content came, ``annotations`` empty as streams carry none), ``logprobs``
(their ``content`` lists joined), ``finish_reason`` and ``usage``.

Pure and synchronous, one instance per attempt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ChatAssembler"]

_HEAD_FIELDS = ("id", "created", "model", "service_tier", "system_fingerprint")
_EMPTY_MESSAGE = {"role": "assistant", "content": None, "refusal": None}


class ChatAssembler:
    """Feed chunks with :meth:`feed`; :meth:`completion` is the whole answer so far."""

    __slots__ = ("_choices", "_head", "_usage")

    def __init__(self) -> None:
        self._head: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self._usage: Any = None

    def feed(self, chunk: Mapping[str, Any]) -> bool:
        """Take one chunk; whether it carried output (content, a refusal or a tool call)."""
        if not self._head:
            self._head = {name: chunk.get(name) for name in _HEAD_FIELDS}
        if chunk.get("usage") is not None:
            self._usage = chunk["usage"]
        output = False
        for choice in chunk.get("choices") or ():
            if isinstance(choice, Mapping):
                output = self._choice(choice) or output
        return output

    @property
    def finished(self) -> bool:
        """Every choice seen so far has its ``finish_reason``."""
        return bool(self._choices) and all(c["finish_reason"] for c in self._choices.values())

    def completion(self) -> dict[str, Any]:
        choices = [self._choices[index] for index in sorted(self._choices)]
        return {
            "id": self._head.get("id"),
            "object": "chat.completion",
            "created": self._head.get("created"),
            "model": self._head.get("model"),
            "choices": [
                {key: value for key, value in choice.items() if key != "_tools"}
                for choice in choices
            ],
            "usage": self._usage,
            "service_tier": self._head.get("service_tier"),
            "system_fingerprint": self._head.get("system_fingerprint"),
        }

    def _choice(self, choice: Mapping[str, Any]) -> bool:
        index = choice.get("index", 0)
        slot = self._choices.get(index)
        if slot is None:
            slot = self._choices[index] = {
                "index": index,
                "message": dict(_EMPTY_MESSAGE, annotations=[]),
                "logprobs": None,
                "finish_reason": None,
                "_tools": {},
            }
        message: dict[str, Any] = slot["message"]
        delta = choice.get("delta") or {}
        output = False
        if delta.get("role"):
            message["role"] = delta["role"]
        for name in ("content", "refusal"):
            piece = delta.get(name)
            if isinstance(piece, str):
                message[name] = (message[name] or "") + piece
                output = output or bool(piece)
        for call in delta.get("tool_calls") or ():
            self._tool_call(slot, message, call)
            output = True
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, Mapping):
            kept = slot["logprobs"] = slot["logprobs"] or {"content": [], "refusal": None}
            kept["content"].extend(logprobs.get("content") or ())
        if choice.get("finish_reason"):
            slot["finish_reason"] = choice["finish_reason"]
        return output

    @staticmethod
    def _tool_call(slot: dict[str, Any], message: dict[str, Any], call: Mapping[str, Any]) -> None:
        tools: dict[int, dict[str, Any]] = slot["_tools"]
        number = call.get("index", len(tools))
        kept = tools.get(number)
        if kept is None:
            kept = tools[number] = {
                "id": call.get("id"),
                "type": call.get("type", "function"),
                "function": {"name": "", "arguments": ""},
            }
            message["tool_calls"] = [tools[key] for key in sorted(tools)]
        function = call.get("function") or {}
        kept["id"] = call.get("id") or kept["id"]
        kept["function"]["name"] += function.get("name") or ""
        kept["function"]["arguments"] += function.get("arguments") or ""
