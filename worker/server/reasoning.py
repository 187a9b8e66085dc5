"""Reasoning parsers (``--reasoning-parser``): the model's thinking goes to ``reasoning_content``.

``qwen3``: an output that begins with ``<think>`` (after optional whitespace) is reasoning up to
``</think>`` (or to its end, when it stops while thinking); the rest is content. An output that does
not begin with ``<think>`` is all content (e.g. ``enable_thinking: false``, whose template closes an
empty think block in the prompt). Streaming gives the same split as the whole text, however the
text is cut into deltas.
"""

from __future__ import annotations

from dataclasses import dataclass

from mili.worker.server.tagged_text import partial_suffix_len


@dataclass
class ReasoningDelta:
    reasoning: str = ""
    content: str = ""


class Qwen3ReasoningStream:
    """The reasoning/content split of one output, fed delta by delta."""

    start_tag = "<think>"
    end_tag = "</think>"

    def __init__(self) -> None:
        self._held = ""  # text not yet decided: a possible "<think>" start or "</think>" end
        self._mode = "undecided"  # then "thinking", then "content"; or "content" from the start
        self.thinks = False

    def feed(self, text: str) -> ReasoningDelta:
        buffer, self._held = self._held + text, ""
        if self._mode == "undecided":
            stripped = buffer.lstrip()
            if stripped.startswith(self.start_tag):
                self._mode, self.thinks = "thinking", True
                buffer = stripped[len(self.start_tag) :]
            elif not stripped or self.start_tag.startswith(stripped):
                self._held = buffer
                return ReasoningDelta()
            else:
                self._mode = "content"
        if self._mode == "content":
            return ReasoningDelta(content=buffer)
        end = buffer.find(self.end_tag)
        if end >= 0:
            self._mode = "content"
            return ReasoningDelta(buffer[:end], buffer[end + len(self.end_tag) :])
        keep = partial_suffix_len(buffer, self.end_tag)
        self._held = buffer[len(buffer) - keep :]
        return ReasoningDelta(reasoning=buffer[: len(buffer) - keep])

    def finish(self) -> ReasoningDelta:
        """What was held back, at the end of the output."""
        held, self._held = self._held, ""
        return ReasoningDelta(reasoning=held) if self._mode == "thinking" else ReasoningDelta(content=held)


def parse_reasoning(text: str) -> tuple[str | None, str]:
    """(reasoning, content) of a whole output; reasoning is None when the output does not think."""
    stream = Qwen3ReasoningStream()
    first, last = stream.feed(text), stream.finish()
    reasoning = first.reasoning + last.reasoning
    return (reasoning if stream.thinks else None), first.content + last.content


REASONING_PARSERS = {"qwen3": Qwen3ReasoningStream}
