"""From an OpenAI request to what the engine takes: token-id prompts and ``SamplingParams``.

Everything here raises ``APIError`` (400) with a message that names the field.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from mili.worker.sampling_params import SamplingParams
from mili.worker.server.errors import APIError
from mili.worker.server.limits import MAX_CHOICES, PROMPT_CHARS_PER_TOKEN
from mili.worker.server.protocol import (
    MAX_PROMPTS,
    MAX_TOKEN_LIST,
    ChatCompletionRequest,
    CompletionRequest,
    SamplingRequest,
    StreamOptions,
)
from mili.worker.server.request_fields import refuse_unsupported
from mili.worker.structured.spec import StructuredOutputsParams
from mili.worker.tokenizer import ChatTemplateError, Tokenizer

SEED_MODULUS = 2**63  # the sampler seeds torch generators with seed + choice index: keep it in range


def sampling_params(
    request: SamplingRequest,
    max_tokens: int | None,
    logprobs: int | None,
    structured: StructuredOutputsParams | None = None,
    prompt_logprobs: int | None = None,
) -> SamplingParams:
    """The engine's sampling parameters for ``request``; ``max_tokens`` None means "to the context limit"."""
    stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    logit_bias = token_biases(request.logit_bias)
    try:
        return SamplingParams(
            n=request.n,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=request.top_k,
            min_p=request.min_p,
            repetition_penalty=request.repetition_penalty,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            seed=None if request.seed is None else request.seed % SEED_MODULUS,
            stop=stop,
            stop_token_ids=list(request.stop_token_ids or []),
            include_stop_str_in_output=request.include_stop_str_in_output,
            ignore_eos=request.ignore_eos,
            max_tokens=max_tokens,
            min_tokens=request.min_tokens,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            skip_special_tokens=request.skip_special_tokens,
            logit_bias=logit_bias,
            allowed_token_ids=request.allowed_token_ids,
            bad_words=list(request.bad_words or []),
            structured_outputs=structured,
        )
    except ValueError as error:
        raise APIError(str(error), param=_field_named_in(str(error))) from error


def token_biases(logit_bias: dict[str, float] | None) -> dict[int, float] | None:
    """OpenAI's ``logit_bias`` (token ids as JSON object keys) with integer keys."""
    if not logit_bias:
        return None
    if len(logit_bias) > MAX_TOKEN_LIST:
        raise APIError(f"logit_bias may hold at most {MAX_TOKEN_LIST} tokens", param="logit_bias")
    biases = {}
    for key, bias in logit_bias.items():
        try:
            biases[int(key)] = bias
        except ValueError:
            raise APIError(f"logit_bias keys must be token ids, got {key!r}", param="logit_bias") from None
    return biases


def truncate(token_ids: list[int], keep: int | None, side: str | None = None) -> list[int]:
    """``truncate_prompt_tokens``: the prompt's last ``keep`` tokens (``truncation_side`` "left", the
    default) or its first (``"right"``)."""
    if keep is None or keep >= len(token_ids):
        return token_ids
    return token_ids[:keep] if side == "right" else token_ids[-keep:]


def _field_named_in(message: str) -> str | None:
    first = message.split(" ", 1)[0]
    return first if first.isidentifier() else None


def check_unsupported(request: SamplingRequest) -> None:
    """Refuse fields of OpenAI's or vLLM's schema that MILI does not implement, naming them."""
    endpoint = "completions" if isinstance(request, CompletionRequest) else "chat"
    refuse_unsupported(request.model_dump(exclude_unset=True, by_alias=True), endpoint)
    if request.stream_options is not None and not request.stream:
        raise APIError("stream_options is only allowed with stream: true", param="stream_options")
    if request.stream_options is not None:
        _check_stream_options(request.stream_options)
    if request.prompt_logprobs is not None and request.stream:
        raise APIError(
            "prompt_logprobs is not available with stream: true (as in vLLM); with completions, "
            "echo with logprobs streams them",
            param="prompt_logprobs",
        )
    if isinstance(request, CompletionRequest):
        if request.best_of is not None and request.best_of != request.n:
            raise APIError("best_of must equal n (no best-of ranking is done)", param="best_of")
    elif (
        request.continue_final_message
        and request.add_generation_prompt
        and ("add_generation_prompt" in request.model_fields_set)
    ):
        raise APIError(
            "continue_final_message and add_generation_prompt cannot both be true",
            param="continue_final_message",
        )


def _check_stream_options(options: StreamOptions) -> None:
    if options.continuous_usage_stats:
        raise APIError(
            "stream_options.continuous_usage_stats is not supported: use include_usage (one usage "
            "chunk at the end)",
            param="stream_options",
        )
    if options.include_obfuscation:
        raise APIError(
            "stream_options.include_obfuscation is not supported: chunks carry no obfuscation field",
            param="stream_options",
        )


def prompt_logprobs_of(request: SamplingRequest) -> int | None:
    """Top logprobs per prompt token the request needs: vLLM's ``prompt_logprobs``, or (completions)
    ``echo`` with ``logprobs``; None when neither asks."""
    wanted = [request.prompt_logprobs]
    if isinstance(request, CompletionRequest) and request.echo:
        wanted.append(request.logprobs)
    asked = [k for k in wanted if k is not None]
    return max(asked) if asked else None


def max_prompt_chars(max_model_len: int) -> int:
    """Characters beyond which a text prompt cannot fit the context whatever its tokens: refused
    before the tokenizer spends time on it."""
    return PROMPT_CHARS_PER_TOKEN * max_model_len


def _prompt_batch(prompt: str | list) -> list:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise APIError("prompt must not be empty", param="prompt")
    return [prompt] if isinstance(prompt[0], int) else list(prompt)


def count_prompts(prompt: str | list, n: int) -> int:
    """How many prompts a completions request holds; refuses more than ``MAX_CHOICES`` choices in all."""
    count = len(_prompt_batch(prompt))
    if count > MAX_PROMPTS:
        raise APIError(f"at most {MAX_PROMPTS} prompts per request, got {count}", param="prompt")
    if count * n > MAX_CHOICES:
        raise APIError(
            f"prompts × n must be at most {MAX_CHOICES}, got {count} × {n} = {count * n}", param="n"
        )
    return count


def completion_prompts(
    tokenizer: Tokenizer,
    prompt: str | list,
    max_chars: int,
    add_special_tokens: bool = True,
    truncate_to: int | None = None,
    truncation_side: str | None = None,
) -> list[list[int]]:
    """Token ids of each prompt of a completions request (text, ids, or a batch of either)."""
    batch = _prompt_batch(prompt)
    prompts = []
    for index, item in enumerate(batch):
        where = "prompt" if len(batch) == 1 else f"prompt[{index}]"
        if isinstance(item, str):
            _check_length(item, max_chars, where, "prompt")
            token_ids = _encode(tokenizer, item, "prompt", add_special_tokens=add_special_tokens)
        else:
            token_ids = item
        if not token_ids:
            raise APIError(f"{where} must not be empty", param="prompt")
        prompts.append(truncate(list(token_ids), truncate_to, truncation_side))
    return prompts


def _check_length(text: str, max_chars: int, where: str, param: str) -> None:
    if len(text) > max_chars:
        raise APIError(
            f"{where} has {len(text)} characters, more than this model's context can hold "
            f"(at most {max_chars} characters are tokenized)",
            param=param,
        )


def chat_prompt(tokenizer: Tokenizer, request: ChatCompletionRequest, max_chars: int) -> list[int]:
    """Token ids of the conversation rendered with the model's chat template."""
    messages = []
    template_knows_tool_calls = "tool_calls" in (tokenizer.chat_template or "")
    for message in request.messages:
        fields = message.model_dump(exclude_none=True)
        if fields["role"] == "developer":  # OpenAI's newer name for the system role
            fields["role"] = "system"
        if fields.get("tool_calls") and not template_knows_tool_calls:
            fields = tool_calls_as_text(fields)
        messages.append(fields)
    extra = dict(request.chat_template_kwargs or {})
    if request.tools:
        extra["tools"] = [tool.model_dump(exclude_none=True) for tool in request.tools]
    if request.documents:
        extra["documents"] = request.documents
    continuing = request.continue_final_message
    try:
        text = tokenizer.apply_chat_template(
            messages, add_generation_prompt=request.add_generation_prompt and not continuing, **extra
        )
        if continuing:
            text = _cut_after_final_message(text, messages[-1])
    except ChatTemplateError as error:
        raise APIError(str(error), param="messages") from error
    except TypeError as error:  # chat_template_kwargs that clash with the template's own arguments
        raise APIError(f"chat_template_kwargs: {error}", param="chat_template_kwargs") from error
    _check_length(text, max_chars, "the conversation", "messages")
    token_ids = _encode(tokenizer, text, "messages", add_special_tokens=bool(request.add_special_tokens))
    if not token_ids:
        raise APIError("the conversation renders to an empty prompt", param="messages")
    return truncate(token_ids, request.truncate_prompt_tokens, request.truncation_side)


def tool_calls_as_text(message: dict[str, Any]) -> dict[str, Any]:
    """An assistant turn's ``tool_calls`` as its text, for a chat template that knows no tool calls:
    the JSON array of ``{"name", "arguments"}`` that ``tool_choice`` "required" makes a model write,
    after any content, so the next turn sees what was called."""
    calls = []
    for call in message["tool_calls"]:
        function = call.get("function", {}) if isinstance(call, dict) else {}
        arguments = function.get("arguments", "{}")
        with contextlib.suppress(json.JSONDecodeError):  # else kept as the string the client sent
            arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
        calls.append({"name": function.get("name"), "arguments": arguments})
    content = message.get("content") or ""
    text = json.dumps(calls, ensure_ascii=False)
    rest = {key: value for key, value in message.items() if key != "tool_calls"}
    return {**rest, "content": f"{content}\n{text}" if content else text}


def _cut_after_final_message(text: str, final: dict) -> str:
    """``continue_final_message``: the rendered conversation up to the end of the last message's
    content, so that generation continues it (as transformers does)."""
    content = final.get("content")
    content = content.strip() if isinstance(content, str) else ""
    end = text.rfind(content) if content else -1
    if end < 0:
        raise APIError(
            "continue_final_message needs a final message with text content that the template renders",
            param="continue_final_message",
        )
    return text[: end + len(content)]


def _encode(tokenizer: Tokenizer, text: str, param: str, add_special_tokens: bool) -> list[int]:
    try:
        return tokenizer.encode(text, add_special_tokens=add_special_tokens)
    except Exception as error:  # e.g. lone UTF-16 surrogates, which JSON allows and tokenizers refuse
        raise APIError(
            f"{param} cannot be tokenized: {type(error).__name__}: {error}", param=param
        ) from error
