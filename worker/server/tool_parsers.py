"""Tool-call parsers (``--tool-call-parser``, named as vLLM names them): the model's tool-call syntax
in generated text becomes OpenAI ``tool_calls``, whole or as streaming deltas.

``hermes`` (Hermes, Qwen2.5, Qwen3): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``,
any number of them. Streaming sends what OpenAI sends: a call's first delta carries its index, id and
name with empty arguments, later deltas carry pieces of the arguments' JSON text. Text outside the
tags is content (leading whitespace dropped, trailing whitespace only sent when more content follows).
Feeding the whole text at once and feeding it in any pieces give the same calls and content.

``llama3_json`` (Llama 3.1 and later, JSON tool calling): an output that begins with a JSON object
(after whitespace and an optional ``<|python_tag|>``) is calls, ``{"name": ..., "parameters": {...}}``
objects separated by ``;``; any other output is content, as in vLLM.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from mili.worker.server.tagged_text import TagSplitter

_NAME_FIRST = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*')


def new_tool_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCallDelta:
    """A piece of one call: ``id`` and ``name`` in its first delta only, then argument text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class ToolParseDelta:
    content: str = ""
    calls: list[ToolCallDelta] = field(default_factory=list)


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text


class _JsonValueScanner:
    """Finds where one JSON object or array ends, reading its text piece by piece."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.done = False

    def take(self, text: str) -> int:
        """How much of ``text`` still belongs to the value (all of it unless the value ends inside)."""
        for position, char in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
            elif char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
            elif char in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.done = True
                    return position + 1
        return len(text)


class _CallStream:
    """One ``<tool_call>`` body: the header as soon as the name is known, then the arguments."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.body = ""
        self.header_sent = False
        self.arguments_start: int | None = None  # where the streamed arguments begin in body
        self.scanned = 0  # how much of body after arguments_start was sent
        self.scanner = _JsonValueScanner()

    def feed(self, text: str) -> list[ToolCallDelta]:
        self.body += text
        deltas = []
        if not self.header_sent:
            match = _NAME_FIRST.match(self.body)
            if match is None or len(self.body) == match.end():
                return deltas
            if self.body[match.end()] not in "{[":  # arguments given as a string: sent whole at the end
                return deltas
            name = json.loads(f'"{match.group(1)}"')
            deltas.append(ToolCallDelta(self.index, new_tool_call_id(), name, ""))
            self.header_sent, self.arguments_start = True, match.end()
        if self.arguments_start is not None and not self.scanner.done:
            start = self.arguments_start + self.scanned
            taken = self.scanner.take(self.body[start:])
            if taken:
                self.scanned += taken
                deltas.append(ToolCallDelta(self.index, arguments=self.body[start : start + taken]))
        return deltas

    def close(self) -> tuple[list[ToolCallDelta], bool]:
        """The rest of the call at its end, and whether the body was a valid call at all."""
        call = parse_call_body(self.body)
        if call is None:
            return [], self.header_sent
        name, arguments = call
        if not self.header_sent:
            return [ToolCallDelta(self.index, new_tool_call_id(), name, arguments)], True
        return [], True  # valid JSON: its arguments were streamed to their end already


def parse_call_body(body: str) -> tuple[str, str] | None:
    """(name, arguments JSON text) of a ``{"name": ..., "arguments": ...}`` body, or None."""
    try:
        call = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    arguments = call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str):
        return call["name"], arguments
    return call["name"], json.dumps(arguments, ensure_ascii=False)


class HermesToolStream:
    """Tool calls and content of one output, fed delta by delta."""

    open_tag = "<tool_call>"
    close_tag = "</tool_call>"

    def __init__(self) -> None:
        self._splitter = TagSplitter(self.open_tag, self.close_tag)
        self._call: _CallStream | None = None
        self.num_calls = 0
        self._started = False  # some content was sent (leading whitespace is dropped)
        self._pending_space = ""

    def feed(self, text: str) -> ToolParseDelta:
        return self._handle(self._splitter.feed(text))

    def finish(self) -> ToolParseDelta:
        delta = self._handle(self._splitter.finish())
        if self._call is not None:  # the output ended inside a call
            self._close_call(delta, ended=False)
        return delta

    def _handle(self, events) -> ToolParseDelta:
        delta = ToolParseDelta()
        for kind, text in events:
            if kind == "outside":
                self._content(delta, text)
            elif kind == "start":
                self._call = _CallStream(self.num_calls)
            elif kind == "inside":
                delta.calls.extend(self._call.feed(text))
            else:
                self._close_call(delta, ended=True)
        return delta

    def _close_call(self, delta: ToolParseDelta, ended: bool) -> None:
        call, self._call = self._call, None
        rest, valid = call.close()
        if valid:
            delta.calls.extend(rest)
            self.num_calls += 1
        else:  # not a tool call after all: its text is content
            self._content(delta, self.open_tag + call.body + (self.close_tag if ended else ""))

    def _content(self, delta: ToolParseDelta, text: str) -> None:
        text = self._pending_space + text
        if not self._started:
            text = text.lstrip()
        body = text.rstrip()
        self._pending_space = text[len(body) :]
        if body:
            delta.content += body
            self._started = True


class JsonArrayToolStream:
    """Calls written as a JSON array ``[{"name": ..., "arguments": {...}}, ...]``: what the grammar of
    ``tool_choice: required`` makes any model write. Streams like ``HermesToolStream``."""

    def __init__(self) -> None:
        self._in_array = False
        self._call: _CallStream | None = None
        self._scanner = _JsonValueScanner()
        self.num_calls = 0

    def feed(self, text: str) -> ToolParseDelta:
        delta = ToolParseDelta()
        position = 0
        while position < len(text):
            if self._call is None:
                char = text[position]
                position += 1
                if char == "[":
                    self._in_array = True
                elif char == "{" and self._in_array:
                    self._call, self._scanner = _CallStream(self.num_calls), _JsonValueScanner()
                    self._scanner.take("{")
                    delta.calls.extend(self._call.feed("{"))
                continue
            taken = self._scanner.take(text[position:])
            delta.calls.extend(self._call.feed(text[position : position + taken]))
            position += taken
            if self._scanner.done:
                rest, valid = self._call.close()
                delta.calls.extend(rest)
                self.num_calls += int(valid)
                self._call = None
        return delta

    def finish(self) -> ToolParseDelta:
        return ToolParseDelta()


class Llama3JsonToolStream:
    """Calls of Llama 3's JSON tool calling: objects separated by ``;`` when the output begins with
    one; what follows a call that is not another call (and any output not beginning with one) is
    content."""

    python_tag = "<|python_tag|>"

    def __init__(self) -> None:
        self._head = ""  # the output's start, until it shows whether it is calls
        self._mode: str | None = None  # "calls" or "content"
        self._call: _CallStream | None = None
        self._scanner = _JsonValueScanner()
        self._between = ""  # text after a call, until it shows another call starts
        self.num_calls = 0

    def feed(self, text: str) -> ToolParseDelta:
        delta = ToolParseDelta()
        if self._mode is None:
            self._head += text
            stripped = self._head.lstrip()
            if stripped.startswith(self.python_tag):
                stripped = stripped[len(self.python_tag) :].lstrip()
            elif self.python_tag.startswith(stripped):
                return delta  # empty, or the tag's beginning: wait for more
            if not stripped:
                return delta
            self._mode = "calls" if stripped[0] == "{" else "content"
            text = stripped if self._mode == "calls" else self._head
        if self._mode == "content":
            delta.content += text
            return delta
        self._calls(delta, text)
        return delta

    def _calls(self, delta: ToolParseDelta, text: str) -> None:
        position = 0
        while position < len(text):
            if self._call is None:
                self._between += text[position]
                position += 1
                between = self._between.strip()
                if between in ("", ";"):
                    continue
                if between in ("{", ";{") or (between.startswith(";") and between[1:].strip() == "{"):
                    self._call, self._scanner, self._between = (
                        _CallStream(self.num_calls),
                        _JsonValueScanner(),
                        "",
                    )
                    self._scanner.take("{")
                    delta.calls.extend(self._call.feed("{"))
                    continue
                self._mode = "content"  # not another call: the rest is content
                delta.content += self._between.lstrip() + text[position:]
                return
            taken = self._scanner.take(text[position:])
            delta.calls.extend(self._call.feed(text[position : position + taken]))
            position += taken
            if self._scanner.done:
                self._close_call(delta)

    def _close_call(self, delta: ToolParseDelta) -> None:
        call, self._call = self._call, None
        rest, valid = call.close()
        delta.calls.extend(rest)
        if valid:
            self.num_calls += 1
        else:
            self._mode = "content"
            delta.content += call.body

    def finish(self) -> ToolParseDelta:
        delta = ToolParseDelta()
        if self._mode is None:
            delta.content = self._head.strip()
        elif self._call is not None:  # the output ended inside a call
            self._close_call(delta)
        return delta


class NamedToolStream:
    """The output is the arguments of one named function (``tool_choice`` names it)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.num_calls = 0

    def feed(self, text: str) -> ToolParseDelta:
        delta = ToolParseDelta()
        if self.num_calls == 0:
            self.num_calls = 1
            delta.calls.append(ToolCallDelta(0, new_tool_call_id(), self.name, ""))
        if text:
            delta.calls.append(ToolCallDelta(0, arguments=text))
        return delta

    def finish(self) -> ToolParseDelta:
        return self.feed("") if self.num_calls == 0 else ToolParseDelta()


def merge_tool_deltas(deltas: list[ToolCallDelta]) -> list[ToolCall]:
    """Whole calls from their deltas."""
    calls: dict[int, ToolCall] = {}
    for delta in deltas:
        if delta.index not in calls:
            calls[delta.index] = ToolCall(delta.id or new_tool_call_id(), delta.name or "", "")
        calls[delta.index].arguments += delta.arguments
    return [calls[index] for index in sorted(calls)]


def parse_tool_calls(text: str, parser: str = "hermes") -> tuple[str | None, list[ToolCall]]:
    """(content or None, calls) of a whole output."""
    stream = TOOL_PARSERS[parser]()
    first, last = stream.feed(text), stream.finish()
    content = first.content + last.content
    return content or None, merge_tool_deltas(first.calls + last.calls)


TOOL_PARSERS = {"hermes": HermesToolStream, "llama3_json": Llama3JsonToolStream}
