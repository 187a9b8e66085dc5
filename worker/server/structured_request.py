"""What a request asks its output to follow: ``response_format``, ``structured_outputs`` and the
grammar ``tool_choice`` implies, turned into one ``StructuredOutputsParams`` (or none).

``tool_choice`` ``required`` and a named function are enforced by a grammar over the functions'
parameter schemas (so the arguments always validate, whatever the model and its template):
a named function's output is its arguments object; ``required`` writes a JSON array of
``{"name": ..., "arguments": ...}`` calls (one at most when ``parallel_tool_calls`` is false).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mili.worker.server.errors import APIError
from mili.worker.server.protocol import ChatCompletionRequest, SamplingRequest, Tool
from mili.worker.server.tool_parsers import TOOL_PARSERS
from mili.worker.structured.spec import StructuredOutputsParams

ToolMode = Literal["none", "auto", "required", "named"]
ANY_OBJECT: dict[str, Any] = {"type": "object"}


@dataclass
class ToolPlan:
    """How a chat call uses its tools: which mode, which functions, and the auto-mode parser."""

    mode: ToolMode = "none"
    tools: list[Tool] = field(default_factory=list)
    named: str | None = None
    parallel: bool = True
    parser: str | None = None

    def tool_named(self, name: str) -> Tool:
        return next(tool for tool in self.tools if tool.function.name == name)


def tool_plan(request: ChatCompletionRequest, tool_call_parser: str | None) -> ToolPlan:
    """The request's tool mode; 400 for a choice its tools (or the server's flags) cannot serve."""
    tools = list(request.tools or [])
    names = [tool.function.name for tool in tools]
    if len(set(names)) != len(names):
        raise APIError("tools must have distinct function names", param="tools")
    choice = request.tool_choice
    if choice is None:
        choice = "auto" if tools else "none"
    plan = ToolPlan(tools=tools, parallel=request.parallel_tool_calls)
    if not isinstance(choice, str):
        if choice.function.name not in names:
            raise APIError(
                f"tool_choice names function {choice.function.name!r}, which is not among the tools",
                param="tool_choice",
            )
        plan.mode, plan.named = "named", choice.function.name
    else:
        plan.mode = choice
    if plan.mode in ("required", "named", "auto") and not tools:
        raise APIError(f"tool_choice {plan.mode!r} needs tools", param="tool_choice")
    if plan.mode == "auto":
        if tool_call_parser is None:
            raise APIError(
                'tool_choice "auto" needs the server to run with --tool-call-parser '
                f"({', '.join(TOOL_PARSERS)}); "
                'use "required", a named function, or "none"',
                param="tool_choice",
            )
        plan.parser = tool_call_parser
    return plan


def required_calls_schema(tools: list[Tool], parallel: bool) -> dict[str, Any]:
    """A JSON array of calls, each to one of ``tools`` with arguments valid for its parameters."""
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool.function.name},
                "arguments": tool.function.parameters or ANY_OBJECT,
            },
            "required": ["name", "arguments"],
        }
        for tool in tools
    ]
    schema: dict[str, Any] = {"type": "array", "items": {"anyOf": calls}, "minItems": 1}
    if not parallel:
        schema["maxItems"] = 1
    return schema


def structured_outputs_of(
    request: SamplingRequest, plan: ToolPlan | None = None
) -> StructuredOutputsParams | None:
    """The grammar of ``request``, from whichever one of its fields asks for one (400 if several do)."""
    asked = []
    if request.response_format is not None and request.response_format.type != "text":
        asked.append("response_format")
    if request.structured_outputs is not None:
        asked.append("structured_outputs")
    if plan is not None and plan.mode in ("required", "named"):
        asked.append("tool_choice")
    if len(asked) > 1:
        raise APIError(
            f"{' and '.join(asked)} cannot be combined: each constrains the output", param=asked[1]
        )
    try:
        if "response_format" in asked:
            return _from_response_format(request)
        if "structured_outputs" in asked:
            fields = request.structured_outputs.model_dump(by_alias=True, exclude_none=True)
            return StructuredOutputsParams(**fields)
        if "tool_choice" in asked:
            if plan.mode == "named":
                return StructuredOutputsParams(
                    json=plan.tool_named(plan.named).function.parameters or ANY_OBJECT
                )
            return StructuredOutputsParams(json=required_calls_schema(plan.tools, plan.parallel))
    except ValueError as error:
        raise APIError(str(error), param=asked[0]) from error
    return None


def _from_response_format(request: SamplingRequest) -> StructuredOutputsParams:
    response_format = request.response_format
    if response_format.type == "json_object":
        return StructuredOutputsParams(json_object=True)
    if response_format.json_schema is None or response_format.json_schema.json_schema is None:
        raise APIError(
            'response_format of type "json_schema" needs json_schema.schema', param="response_format"
        )
    return StructuredOutputsParams(json=response_format.json_schema.json_schema)


def grammar_param(request: SamplingRequest, plan: ToolPlan | None) -> str:
    """The request field a grammar error should name."""
    if request.response_format is not None and request.response_format.type != "text":
        return "response_format"
    if request.structured_outputs is not None:
        return "structured_outputs"
    return "tools" if plan is not None and plan.mode in ("required", "named") else "structured_outputs"
