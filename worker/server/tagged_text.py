"""Streaming text split at ``<open>…</close>`` tags, as the tool-call and reasoning parsers need it.

``TagSplitter.feed`` takes the next piece of generated text and returns events: ``outside`` text,
``start`` of a span, ``inside`` text, ``end`` of a span. A piece that might be the beginning of a tag
is held back until the next piece decides, so a tag split across deltas (or across tokens) is found
exactly as in the whole text. ``finish`` releases what is held back at the end of the output.
"""

from __future__ import annotations

from typing import Literal

EventKind = Literal["outside", "start", "inside", "end"]
Event = tuple[EventKind, str]


def partial_suffix_len(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that is a proper beginning of ``tag``."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


class TagSplitter:
    def __init__(self, open_tag: str, close_tag: str) -> None:
        self.open_tag = open_tag
        self.close_tag = close_tag
        self.inside = False
        self._held = ""

    def feed(self, text: str) -> list[Event]:
        events: list[Event] = []
        buffer = self._held + text
        while buffer:
            tag = self.close_tag if self.inside else self.open_tag
            kind: EventKind = "inside" if self.inside else "outside"
            position = buffer.find(tag)
            if position < 0:
                keep = partial_suffix_len(buffer, tag)
                _append(events, kind, buffer[: len(buffer) - keep])
                self._held = buffer[len(buffer) - keep :]
                return events
            _append(events, kind, buffer[:position])
            events.append(("end", "") if self.inside else ("start", ""))
            self.inside = not self.inside
            buffer = buffer[position + len(tag) :]
        self._held = ""
        return events

    def finish(self) -> list[Event]:
        """The held-back text (it was no tag after all)."""
        events: list[Event] = []
        _append(events, "inside" if self.inside else "outside", self._held)
        self._held = ""
        return events


def _append(events: list[Event], kind: EventKind, text: str) -> None:
    if text:
        events.append((kind, text))
