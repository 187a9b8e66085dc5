"""From engine outputs to OpenAI pieces: merged streams, per-choice deltas, logprobs, usage."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

from mili.worker.engine.request import RequestOutput
from mili.worker.engine.sequence import TokenLogprobs
from mili.worker.server.async_engine import RequestStream
from mili.worker.server.protocol import ChatLogprobs, CompletionLogprobs, TokenLogprob, TopLogprob, Usage
from mili.worker.tokenizer import Tokenizer

LOGPROB_FLOOR = -9999.0  # what -inf becomes (JSON has no infinities), as in vLLM


# --- streams ---------------------------------------------------------------------------------------
async def merge_streams(streams: list[RequestStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Outputs of several requests as they come, tagged with the index of their stream."""
    if len(streams) == 1:
        async for output in streams[0]:
            yield 0, output
        return
    arrivals: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: RequestStream) -> None:
        try:
            async for output in stream:
                arrivals.put_nowait((index, output))
        except Exception as error:
            arrivals.put_nowait((index, error))
        finally:
            arrivals.put_nowait((index, None))

    pumps = [asyncio.ensure_future(pump(index, stream)) for index, stream in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            index, item = await arrivals.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in pumps:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pumps, return_exceptions=True)


async def final_outputs(streams: list[RequestStream]) -> list[RequestOutput]:
    """The finished output of every stream, in stream order."""
    finals: dict[int, RequestOutput] = {}
    async for index, output in merge_streams(streams):
        if output.finished:
            finals[index] = output
    return [finals[index] for index in range(len(streams))]


def usage(outputs: list[RequestOutput]) -> Usage:
    prompt_tokens = sum(len(output.prompt_token_ids) for output in outputs)
    completion_tokens = sum(len(c.token_ids) for output in outputs for c in output.outputs)
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


# --- deltas ----------------------------------------------------------------------------------------
@dataclass
class ChoiceDelta:
    """What one choice gained since the last delta."""

    index: int
    text: str
    text_offset: int  # where ``text`` starts in the choice's full text
    logprobs: list[TokenLogprobs] | None
    finish_reason: str | None
    stop_reason: str | int | None


class DeltaTracker:
    """Turns cumulative outputs into deltas; choice ``i`` of prompt ``p`` is ``p * n + i``."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._sent: dict[int, tuple[int, int]] = {}  # choice index -> (text length, token count) sent
        self._finished: set[int] = set()

    def deltas(self, prompt_index: int, output: RequestOutput) -> list[ChoiceDelta]:
        deltas = []
        for completion in output.outputs:
            index = prompt_index * self.n + completion.index
            if index in self._finished:
                continue
            text_sent, tokens_sent = self._sent.get(index, (0, 0))
            text = completion.text[text_sent:]
            if not text and completion.finish_reason is None:
                continue  # tokens without visible text yet: their logprobs ride with the next text
            logprobs = completion.logprobs[tokens_sent:] if completion.logprobs is not None else None
            self._sent[index] = (len(completion.text), len(completion.token_ids))
            if completion.finish_reason is not None:
                self._finished.add(index)
            deltas.append(
                ChoiceDelta(
                    index, text, text_sent, logprobs, completion.finish_reason, completion.stop_reason
                )
            )
        return deltas


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
