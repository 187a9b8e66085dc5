"""From engine deltas to OpenAI pieces: whole outputs (non-streaming), logprobs, usage."""

from __future__ import annotations

import math

from mili.worker.engine.outputs import CompletionOutput, OutputAccumulator
from mili.worker.engine.sequence import TokenLogprobs
from mili.worker.server.async_engine import OutputStream
from mili.worker.server.errors import dump_json
from mili.worker.server.protocol import (
    ChatCompletion,
    ChatLogprobs,
    Completion,
    CompletionLogprobs,
    PromptLogprob,
    PromptLogprobs,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from mili.worker.tokenizer import Tokenizer

LOGPROB_FLOOR = -9999.0  # what -inf becomes (JSON has no infinities), as in vLLM


async def whole_choices(stream: OutputStream) -> list[CompletionOutput]:
    """Every choice's whole output, in choice order: the one place a response adds its deltas up."""
    totals: dict[int, OutputAccumulator] = {}
    async for deltas in stream:
        for delta in deltas:
            total = totals.get(delta.index)
            if total is None:
                total = totals[delta.index] = OutputAccumulator(delta.index)
            total.add(delta)
    return [totals[index].as_completion() for index in sorted(totals)]


def serialize_response(response: Completion | ChatCompletion) -> bytes:
    """The JSON of a whole response, one choice at a time: a single ``model_dump`` or ``json.dumps`` of
    a large body would hold the GIL (and so the event loop) for its whole duration, even off-loop."""
    envelope = dump_json(response.model_dump(mode="json", exclude={"choices"}))
    choices = b",".join(dump_json(choice.model_dump(mode="json")) for choice in response.choices)
    return b'{"choices":[' + choices + b"]," + envelope[1:]


def usage(stream: OutputStream) -> Usage:
    prompt_tokens, completion_tokens = stream.num_prompt_tokens, stream.num_completion_tokens
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


# --- logprobs --------------------------------------------------------------------------------------
class LogprobFormatter:
    """Logprobs in the completions or the chat shape; token strings decoded once per id."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def token(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:
            text = self._texts[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return text

    def completion(self, logprobs: list[TokenLogprobs], text_offset: int) -> CompletionLogprobs:
        result = CompletionLogprobs()
        offset = text_offset
        for entry in logprobs:
            token = self.token(entry.token_id)
            result.tokens.append(token)
            result.token_logprobs.append(_finite(entry.logprob))
            result.top_logprobs.append({self.token(t): _finite(lp) for t, lp in entry.top.items()})
            result.text_offset.append(offset)
            offset += len(token)
        return result

    def echoed(
        self, prompt: list[TokenLogprobs | None], prompt_token_ids: list[int], generated: CompletionLogprobs
    ) -> CompletionLogprobs:
        """Completions ``echo`` with ``logprobs``: the prompt's tokens (the first with null logprobs)
        before ``generated``, whose text offsets already count the echoed text."""
        result = CompletionLogprobs()
        offset = 0
        for token_id, entry in zip(prompt_token_ids, prompt, strict=True):
            token = self.token(token_id)
            result.tokens.append(token)
            result.token_logprobs.append(None if entry is None else _finite(entry.logprob))
            result.top_logprobs.append(
                None if entry is None else {self.token(t): _finite(lp) for t, lp in entry.top.items()}
            )
            result.text_offset.append(offset)
            offset += len(token)
        result.tokens += generated.tokens
        result.token_logprobs += generated.token_logprobs
        result.top_logprobs += generated.top_logprobs
        result.text_offset += generated.text_offset
        return result

    def prompt(self, prompt: list[TokenLogprobs | None]) -> PromptLogprobs:
        """vLLM's ``prompt_logprobs``: per prompt token, the token itself and the top ones, by id."""
        result: PromptLogprobs = []
        for entry in prompt:
            if entry is None:
                result.append(None)
                continue
            ranked = {entry.token_id: self._prompt_logprob(entry.logprob, entry.rank, entry.token_id)}
            for rank, (token_id, logprob) in enumerate(entry.top.items(), start=1):
                ranked.setdefault(token_id, self._prompt_logprob(logprob, rank, token_id))
            result.append({str(token_id): logprob for token_id, logprob in ranked.items()})
        return result

    def _prompt_logprob(self, logprob: float, rank: int | None, token_id: int) -> PromptLogprob:
        return PromptLogprob(logprob=_finite(logprob), rank=rank, decoded_token=self.token(token_id))

    def chat(self, logprobs: list[TokenLogprobs], num_top: int) -> ChatLogprobs:
        content = []
        for entry in logprobs:
            top = sorted(entry.top.items(), key=lambda item: -item[1])[:num_top]
            content.append(
                TokenLogprob(
                    **self._top(entry.token_id, entry.logprob).model_dump(),
                    top_logprobs=[self._top(token_id, logprob) for token_id, logprob in top],
                )
            )
        return ChatLogprobs(content=content)

    def _top(self, token_id: int, logprob: float) -> TopLogprob:
        token = self.token(token_id)
        return TopLogprob(token=token, logprob=_finite(logprob), bytes=list(token.encode("utf-8", "replace")))


def _finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else LOGPROB_FLOOR
