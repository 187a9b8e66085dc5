"""One chat choice's generated text as OpenAI message pieces: reasoning, content and tool calls.

``ChoiceParser.feed`` takes each text delta and returns what to send for it (streaming), and
``finish`` what was held back; the whole message of a non-streaming response is the sum of the same
pieces, so both paths agree. The reasoning parser (when the server has one) runs first; what it leaves
as content goes through the tool-call stage of the call's ``ToolPlan``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mili.worker.server.protocol import (
    AssistantMessage,
    DeltaMessage,
    FunctionCall,
    FunctionCallDelta,
    ToolCall,
    ToolCallDelta,
)
from mili.worker.server.reasoning import REASONING_PARSERS
from mili.worker.server.structured_request import ToolPlan
from mili.worker.server.tool_parsers import (
    TOOL_PARSERS,
    JsonArrayToolStream,
    NamedToolStream,
    ToolParseDelta,
    merge_tool_deltas,
)
from mili.worker.server.tool_parsers import ToolCallDelta as ParsedCallDelta


@dataclass(frozen=True)
class ChatOptions:
    """The server's parsers (``--tool-call-parser``, ``--reasoning-parser``); None = off."""

    tool_call_parser: str | None = None
    reasoning_parser: str | None = None

    def __post_init__(self) -> None:
        if self.tool_call_parser is not None and self.tool_call_parser not in TOOL_PARSERS:
            raise ValueError(f"--tool-call-parser must be one of {', '.join(TOOL_PARSERS)}")
        if self.reasoning_parser is not None and self.reasoning_parser not in REASONING_PARSERS:
            raise ValueError(f"--reasoning-parser must be one of {', '.join(REASONING_PARSERS)}")


@dataclass
class MessagePiece:
    content: str = ""
    reasoning: str = ""
    calls: list[ParsedCallDelta] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.reasoning or self.calls)

    def as_delta(self) -> DeltaMessage:
        return DeltaMessage(
            content=self.content or None,
            reasoning_content=self.reasoning or None,
            tool_calls=[_call_delta(call) for call in self.calls] or None,
        )


def _call_delta(call: ParsedCallDelta) -> ToolCallDelta:
    return ToolCallDelta(
        index=call.index,
        id=call.id,
        type="function" if call.id is not None else None,
        function=FunctionCallDelta(name=call.name, arguments=call.arguments),
    )


class ChoiceParser:
    def __init__(
        self, plan: ToolPlan | None, reasoning_parser: str | None, include_reasoning: bool = True
    ) -> None:
        self._reasoning = REASONING_PARSERS[reasoning_parser]() if reasoning_parser else None
        self._include_reasoning = include_reasoning  # vLLM's include_reasoning: false drops it
        self._tools = _tool_stream(plan)
        self._single_call = plan is not None and not plan.parallel
        self._pieces: list[MessagePiece] = []

    def feed(self, text: str) -> MessagePiece:
        if self._reasoning is None:
            return self._keep(self._tool_stage(text, final=False), "")
        split = self._reasoning.feed(text)
        return self._keep(self._tool_stage(split.content, final=False), split.reasoning)

    def finish(self) -> MessagePiece:
        reasoning, content = "", ""
        if self._reasoning is not None:
            split = self._reasoning.finish()
            reasoning, content = split.reasoning, split.content
        return self._keep(self._tool_stage(content, final=True), reasoning)

    @property
    def made_calls(self) -> bool:
        return any(piece.calls for piece in self._pieces)

    def message(self) -> AssistantMessage:
        """The whole message: the sum of every piece fed and finished so far."""
        calls = merge_tool_deltas([call for piece in self._pieces for call in piece.calls])
        content = "".join(piece.content for piece in self._pieces)
        reasoning = "".join(piece.reasoning for piece in self._pieces)
        return AssistantMessage(
            content=content or (None if calls else ""),
            reasoning_content=reasoning or None,
            tool_calls=[
                ToolCall(id=call.id, function=FunctionCall(name=call.name, arguments=call.arguments))
                for call in calls
            ],
        )

    def finish_reason(self, reason: str | None) -> str | None:
        """finish_reason "tool_calls" when a call was made and the output ended normally."""
        return "tool_calls" if reason == "stop" and self.made_calls else reason

    def _tool_stage(self, text: str, final: bool) -> ToolParseDelta:
        if self._tools is None:
            return ToolParseDelta(content=text)
        parsed = self._tools.feed(text) if text else ToolParseDelta()
        if final:
            last = self._tools.finish()
            parsed.content += last.content
            parsed.calls += last.calls
        if self._single_call:
            parsed.calls = [call for call in parsed.calls if call.index == 0]
        return parsed

    def _keep(self, parsed: ToolParseDelta, reasoning: str) -> MessagePiece:
        piece = MessagePiece(parsed.content, reasoning if self._include_reasoning else "", parsed.calls)
        self._pieces.append(piece)
        return piece


def _tool_stream(plan: ToolPlan | None):
    if plan is None or plan.mode == "none":
        return None
    if plan.mode == "named":
        return NamedToolStream(plan.named)
    if plan.mode == "required":
        return JsonArrayToolStream()
    return TOOL_PARSERS[plan.parser]()
