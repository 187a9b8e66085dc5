"""Streaming detokenization: token ids in, text deltas out (after vLLM's ``detokenize_incrementally``).

Decoding one token at a time goes wrong two ways: a byte-level token can hold part of a UTF-8
character (decoding it alone gives U+FFFD), and some decoders drop or add a space depending on what
comes before (SentencePiece's leading ``▁``). So each step decodes a short window of ids twice: the
"prefix" (a few tokens already emitted, for context) and the prefix plus the unread tokens; the delta
is what the second adds to the first. While the window's text ends in U+FFFD the character is still
incomplete and nothing is emitted; the offsets only move once text is emitted. Emitted text is not
kept: the caller owns it, so a long output costs the detokenizer nothing.
"""

from __future__ import annotations

from mili.worker.tokenizer import Tokenizer

# Prompt tokens kept as context for the first generated tokens (vLLM uses the same 5).
PROMPT_CONTEXT_TOKENS = 5
REPLACEMENT_CHARACTER = "\ufffd"


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas that never split a UTF-8 character."""

    def __init__(
        self, tokenizer: Tokenizer, prompt_token_ids: list[int], skip_special_tokens: bool = True
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._ids: list[int] = list(prompt_token_ids[-PROMPT_CONTEXT_TOKENS:])
        self._prefix_offset = 0  # start of the context window in self._ids
        self._read_offset = len(self._ids)  # first id whose text has not been emitted

    def add_token(self, token_id: int) -> str:
        """Take the next generated id; return the text it completes (often ``""`` mid-character)."""
        self._ids.append(token_id)
        return self._emit(final=False)

    def flush(self) -> str:
        """At the end of a sequence: emit whatever is held back, even an incomplete character (as U+FFFD)."""
        return self._emit(final=True)

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode_raw(ids, skip_special_tokens=self._skip_special_tokens)

    def _emit(self, final: bool) -> str:
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset :])
        if len(full_text) <= len(prefix_text) or (full_text.endswith(REPLACEMENT_CHARACTER) and not final):
            return ""
        delta = full_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        # Only the window is ever decoded again: drop ids before it so memory stays bounded.
        if self._prefix_offset > 0:
            del self._ids[: self._prefix_offset]
            self._read_offset -= self._prefix_offset
            self._prefix_offset = 0
        return delta
