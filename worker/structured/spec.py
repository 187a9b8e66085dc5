"""What a request constrains its output to: one grammar source, the key grammars are cached by."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

GrammarKind = Literal["json", "json_object", "regex", "choice", "grammar"]
GRAMMAR_KINDS: tuple[GrammarKind, ...] = ("json", "json_object", "regex", "choice", "grammar")


@dataclass(frozen=True)
class GrammarSpec:
    """A grammar in one of vLLM's ``structured_outputs`` kinds, by its source text.

    ``json``: a JSON schema (canonical JSON text); ``json_object``: any JSON object (no source);
    ``regex``: a regular expression; ``choice``: a JSON list of the allowed strings; ``grammar``: an
    EBNF (GBNF) grammar whose start rule is ``root``. ``param`` names the request field it came from,
    for error messages; it is not part of the identity.
    """

    kind: GrammarKind
    source: str = ""
    param: str = "structured_outputs"

    def __hash__(self) -> int:
        return hash((self.kind, self.source))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GrammarSpec) and (self.kind, self.source) == (other.kind, other.source)

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | str, param: str) -> GrammarSpec:
        """A schema given as a dict or as JSON text, kept as compact JSON in its own key order (the
        order of ``properties`` is the order of the output's keys)."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as error:
                raise ValueError(f"{param} is not valid JSON: {error}") from error
        if not isinstance(schema, dict | bool):
            raise ValueError(f"{param} must be a JSON schema object, got {type(schema).__name__}")
        return cls("json", json.dumps(schema, separators=(",", ":")), param)

    @classmethod
    def choice(cls, choices: list[str], param: str) -> GrammarSpec:
        if not choices or not all(isinstance(choice, str) for choice in choices):
            raise ValueError(f"{param} must be a non-empty list of strings")
        return cls("choice", json.dumps(list(choices)), param)


@dataclass
class StructuredOutputsParams:
    """vLLM's ``StructuredOutputsParams``: exactly one of the fields constrains the output."""

    json: dict[str, Any] | str | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None

    def __post_init__(self) -> None:
        given = [name for name in GRAMMAR_KINDS if getattr(self, name) not in (None, False)]
        if len(given) != 1:
            raise ValueError(
                "structured_outputs must set exactly one of json, json_object, regex, choice, grammar"
                + (f"; got {', '.join(given)}" if given else "")
            )

    def spec(self, param: str = "structured_outputs") -> GrammarSpec:
        if self.json is not None:
            return GrammarSpec.json_schema(self.json, f"{param}.json")
        if self.json_object:
            return GrammarSpec("json_object", "", f"{param}.json_object")
        if self.regex is not None:
            return GrammarSpec("regex", self.regex, f"{param}.regex")
        if self.choice is not None:
            return GrammarSpec.choice(self.choice, f"{param}.choice")
        return GrammarSpec("grammar", self.grammar or "", f"{param}.grammar")
