"""Stop strings on a growing text, in time linear in the new text: find them, cut them, and hold
back what could still become one.

Each stop string gets a Knuth-Morris-Pratt automaton whose state is the length of the longest suffix
of the text so far that is a prefix of the stop string. Feeding a character updates every state in
amortized constant time, so a step costs O(new characters × stop strings) however long the output
is, and only the held-back suffix (shorter than the longest stop string) is kept, never the text.
"""

from __future__ import annotations


def failure_table(pattern: str) -> list[int]:
    """KMP's table: ``table[i]`` is the length of the longest proper border of ``pattern[: i + 1]``."""
    table = [0] * len(pattern)
    border = 0
    for i in range(1, len(pattern)):
        while border and pattern[i] != pattern[border]:
            border = table[border - 1]
        if pattern[i] == pattern[border]:
            border += 1
        table[i] = border
    return table


class StopStrings:
    """The stop strings of one request with their tables (built once, shared by its n sequences)."""

    def __init__(self, stops: list[str], include_in_output: bool = False) -> None:
        self.stops = list(stops)
        self.tables = [failure_table(stop) for stop in self.stops]
        self.include_in_output = include_in_output

    def __bool__(self) -> bool:
        return bool(self.stops)

    def matcher(self) -> StopMatcher:
        return StopMatcher(self)


class StopMatcher:
    """One sequence's progress through its stop strings."""

    def __init__(self, stops: StopStrings) -> None:
        self._stops = stops
        self._states = [0] * len(stops.stops)
        self.held = ""  # the suffix of the text that could still begin a stop string

    def feed(self, text: str, detect: bool = True) -> tuple[str, str | None]:
        """Take new text; return the text now safe to show and the stop string that ended the sequence
        (None while it goes on). With ``detect`` off (before ``min_tokens``) stops are tracked, not hit.

        The stop string that completes first wins (the longest, of those completing at the same
        character), so where a sequence stops does not depend on how its text was split into tokens.
        The shown text then ends before the stop string, or after it with ``include_in_output``.
        """
        window = self.held + text
        stops, tables, states = self._stops.stops, self._stops.tables, self._states
        for position, char in enumerate(text, start=len(self.held)):
            hit: str | None = None
            for k, stop in enumerate(stops):
                state = states[k]
                while state and stop[state] != char:
                    state = tables[k][state - 1]
                if stop[state] == char:
                    state += 1
                if state == len(stop):
                    if detect and (hit is None or len(stop) > len(hit)):
                        hit = stop
                    state = tables[k][state - 1]
                states[k] = state
            if hit is not None:
                end = position + 1
                cut = end if self._stops.include_in_output else end - len(hit)
                self.held = ""
                return window[:cut], hit
        held = max(states, default=0)
        self.held = window[len(window) - held :] if held else ""
        return window[: len(window) - held], None

    def release(self) -> str:
        """The sequence ended otherwise: what was held back is shown after all."""
        held, self.held = self.held, ""
        return held
