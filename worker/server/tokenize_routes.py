"""vLLM's tokenizer API: ``POST /tokenize`` (a prompt, or chat messages through the chat template)
and ``POST /detokenize``, in vLLM's request and response shapes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from mili.worker.server import inputs
from mili.worker.server.errors import APIError
from mili.worker.server.protocol import ChatCompletionRequest, ChatMessage, Tool, _Request, _Response
from mili.worker.server.routes import _check_model, _state, _tokenizer

MAX_DETOKENIZE_TOKENS = 1 << 20


class TokenizeRequest(_Request):
    """Either ``prompt`` (completions-style) or ``messages`` (chat-style), as vLLM accepts."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_special_tokens: bool | None = None  # default: true for a prompt, false for messages
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[Tool] | None = None
    return_token_strs: bool = False
    # vLLM's, refused when set (the model's own template is used; no multimodal input)
    chat_template: str | None = None
    mm_processor_kwargs: dict[str, Any] | None = None
    media_io_kwargs: dict[str, Any] | None = None


class TokenizeResponse(_Response):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[int] = Field(max_length=MAX_DETOKENIZE_TOKENS)


class DetokenizeResponse(_Response):
    prompt: str


tokenizer_api = APIRouter()


@tokenizer_api.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    state = _state(request)
    _check_model(state, body.model)
    tokenizer = _tokenizer(state)
    max_chars = inputs.max_prompt_chars(state.engine.max_model_len)
    if (body.prompt is None) == (body.messages is None):
        raise APIError("send exactly one of prompt and messages", param="prompt")
    for name in ("chat_template", "mm_processor_kwargs", "media_io_kwargs"):
        if getattr(body, name) is not None:
            raise APIError(f"{name} is not supported by /tokenize", param=name)
    if body.prompt is not None:
        add_special = body.add_special_tokens is not False
        prompts = await run_in_threadpool(
            inputs.completion_prompts, tokenizer, body.prompt, max_chars, add_special
        )
        tokens = prompts[0]
    else:
        chat = ChatCompletionRequest(
            messages=body.messages,
            add_generation_prompt=body.add_generation_prompt,
            continue_final_message=body.continue_final_message,
            chat_template_kwargs=body.chat_template_kwargs,
            tools=body.tools,
            add_special_tokens=body.add_special_tokens,
        )
        tokens = await run_in_threadpool(inputs.chat_prompt, tokenizer, chat, max_chars)
    token_strs = tokenizer.convert_ids_to_tokens(tokens) if body.return_token_strs else None
    return TokenizeResponse(
        count=len(tokens), max_model_len=state.engine.max_model_len, tokens=tokens, token_strs=token_strs
    )


@tokenizer_api.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    state = _state(request)
    _check_model(state, body.model)
    tokenizer = _tokenizer(state)
    if any(not 0 <= token < tokenizer.vocab_size for token in body.tokens):
        raise APIError(f"tokens must be token ids in [0, {tokenizer.vocab_size})", param="tokens")
    return DetokenizeResponse(prompt=await run_in_threadpool(tokenizer.decode, body.tokens))
