"""Every field of OpenAI's and vLLM's completions and chat request schemas, and what MILI does with it.

One declaration serves two purposes: ``refuse_unsupported`` answers 400 naming a refused field that a
request sets (to anything but its harmless values), and docs/server.md's table is generated from it
(a test keeps them equal). Fields foreign to both schemas are ignored, as vLLM does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mili.worker.server.errors import APIError

Endpoint = Literal["both", "chat", "completions"]


@dataclass(frozen=True)
class RequestField:
    name: str
    endpoint: Endpoint
    origin: Literal["OpenAI", "vLLM"]
    implemented: bool
    note: str
    harmless: tuple[Any, ...] = (None,)  # values a refused field may have (its "off" values)


def _ok(name: str, endpoint: Endpoint, origin: str, note: str) -> RequestField:
    return RequestField(name, endpoint, origin, True, note)  # type: ignore[arg-type]


def _no(name: str, endpoint: Endpoint, origin: str, note: str, *harmless: Any) -> RequestField:
    return RequestField(name, endpoint, origin, False, note, (None, *harmless))  # type: ignore[arg-type]


FIELDS: tuple[RequestField, ...] = (
    # --- OpenAI, both endpoints ---
    _ok("model", "both", "OpenAI", "must be the served name (404 otherwise)"),
    _ok("n", "both", "OpenAI", "1..16 samples per prompt"),
    _ok("temperature", "both", "OpenAI", "0..2; below 1e-5 decodes greedily"),
    _ok("top_p", "both", "OpenAI", "(0, 1]"),
    _ok("max_tokens", "both", "OpenAI", "completions default 16; chat default: up to the context limit"),
    _ok("stop", "both", "OpenAI", "up to 64 strings of up to 1,024 characters"),
    _ok("stream", "both", "OpenAI", "server-sent events ending with `data: [DONE]`"),
    _ok(
        "stream_options",
        "both",
        "OpenAI",
        "`include_usage`: a last chunk with usage, `usage: null` before; `include_obfuscation: true` "
        "and vLLM's `continuous_usage_stats: true` refused (400)",
    ),
    _ok("seed", "both", "OpenAI", "per-choice generators: choice i uses seed + i"),
    _ok("presence_penalty", "both", "OpenAI", "-2..2"),
    _ok("frequency_penalty", "both", "OpenAI", "-2..2"),
    _ok(
        "logit_bias",
        "both",
        "OpenAI",
        "token id (string) to a bias in -100..100; ids checked against the vocabulary",
    ),
    _ok(
        "user", "both", "OpenAI", "accepted; an end-user id for the client's records, no effect on generation"
    ),
    # --- OpenAI, completions ---
    _ok("prompt", "completions", "OpenAI", "text, token ids, or a batch of either"),
    _ok("logprobs", "completions", "OpenAI", "0..20 top logprobs per token"),
    _ok(
        "echo",
        "completions",
        "OpenAI",
        "the prompt comes first in the text; with logprobs, the prompt's tokens come first in them "
        "(the first with null logprobs), streamed too",
    ),
    _ok("best_of", "completions", "OpenAI", "must equal n (400 otherwise): no ranking is done"),
    _no("suffix", "completions", "OpenAI", "insertion is not supported"),
    # --- OpenAI, chat ---
    _ok("messages", "chat", "OpenAI", "system/developer/user/assistant/tool; text content parts only"),
    _ok("max_completion_tokens", "chat", "OpenAI", "takes precedence over max_tokens"),
    _ok("logprobs", "chat", "OpenAI", "true/false"),
    _ok("top_logprobs", "chat", "OpenAI", "0..20, needs logprobs: true"),
    _ok(
        "response_format",
        "both",
        "OpenAI",
        "`text`, `json_object`, `json_schema` (strict or not): grammar-enforced",
    ),
    _ok("tools", "chat", "OpenAI", "function tools; rendered by the chat template"),
    _ok(
        "tool_choice",
        "chat",
        "OpenAI",
        "`none`, `auto` (needs --tool-call-parser), `required`, a named function",
    ),
    _ok("parallel_tool_calls", "chat", "OpenAI", "false: at most one call"),
    _ok("prompt_cache_key", "chat", "OpenAI", "accepted; prefix caching is automatic"),
    _ok("safety_identifier", "chat", "OpenAI", "accepted; an end-user id, no effect on generation"),
    _no("audio", "chat", "OpenAI", "audio output is not supported"),
    _no("functions", "chat", "OpenAI", "deprecated by OpenAI: use tools"),
    _no("function_call", "chat", "OpenAI", "deprecated by OpenAI: use tool_choice"),
    _no("metadata", "chat", "OpenAI", "stored completions are not supported"),
    _no("store", "chat", "OpenAI", "stored completions are not supported", False),
    _no("modalities", "chat", "OpenAI", "only text output", ["text"]),
    _no("moderation", "chat", "OpenAI", "moderation is not supported"),
    _no("prediction", "chat", "OpenAI", "predicted outputs are not supported"),
    _no(
        "prompt_cache_options",
        "chat",
        "OpenAI",
        "prefix caching is automatic and not configurable per request",
    ),
    _no(
        "prompt_cache_retention",
        "chat",
        "OpenAI",
        "prefix caching is automatic and not configurable per request",
    ),
    _no("reasoning_effort", "chat", "OpenAI", "use chat_template_kwargs (e.g. enable_thinking)"),
    _no("service_tier", "chat", "OpenAI", "one tier only", "auto", "default"),
    _no("verbosity", "chat", "OpenAI", "not supported"),
    _no("web_search_options", "chat", "OpenAI", "web search is not supported"),
    # --- vLLM extras, both endpoints ---
    _ok("top_k", "both", "vLLM", "-1 or 0 = off"),
    _ok("min_p", "both", "vLLM", "0..1"),
    _ok("repetition_penalty", "both", "vLLM", "(0, 2]"),
    _ok("min_tokens", "both", "vLLM", "EOS and stop tokens are masked until then"),
    _ok("ignore_eos", "both", "vLLM", ""),
    _ok("stop_token_ids", "both", "vLLM", "ids checked against the vocabulary"),
    _ok("include_stop_str_in_output", "both", "vLLM", ""),
    _ok("skip_special_tokens", "both", "vLLM", ""),
    _ok("allowed_token_ids", "both", "vLLM", "only these ids may be sampled"),
    _ok("bad_words", "both", "vLLM", "never generated (alone or after a space)"),
    _ok("truncate_prompt_tokens", "both", "vLLM", "keep the prompt's last k tokens"),
    _ok("truncation_side", "both", "vLLM", "`left` (default: keep the last k) or `right` (keep the first k)"),
    _ok("session_id", "both", "vLLM", "accepted; a session id for the client's records, no effect"),
    _ok(
        "structured_outputs",
        "both",
        "vLLM",
        "exactly one of `json`, `json_object`, `regex`, `choice`, `grammar` (EBNF)",
    ),
    _ok("add_special_tokens", "both", "vLLM", "completions default true, chat default false"),
    _ok(
        "prompt_logprobs",
        "both",
        "vLLM",
        "0..20 top logprobs per prompt token, vLLM's shape (per choice on completions, per response "
        "on chat); not with stream (400); such a request takes no prefix-cache hits",
    ),
    _no("use_beam_search", "both", "vLLM", "beam search is not supported", False),
    _no("length_penalty", "both", "vLLM", "beam search is not supported", 1.0),
    _no(
        "spaces_between_special_tokens",
        "both",
        "vLLM",
        "special tokens are decoded as the tokenizer does",
        True,
    ),
    _no("priority", "both", "vLLM", "one priority only", 0),
    _no("request_id", "both", "vLLM", "ids are assigned by the server"),
    _no("logits_processors", "both", "vLLM", "custom logits processors are not supported"),
    _no("return_tokens_as_token_ids", "both", "vLLM", "not supported", False),
    _no("return_token_ids", "both", "vLLM", "not supported", False),
    _no("cache_salt", "both", "vLLM", "the prefix cache is shared"),
    _no("kv_transfer_params", "both", "vLLM", "disaggregated serving is not supported"),
    _no("vllm_xargs", "both", "vLLM", "not supported"),
    _no("guided_json", "both", "vLLM", "removed from vLLM: use structured_outputs.json"),
    _no("guided_regex", "both", "vLLM", "removed from vLLM: use structured_outputs.regex"),
    _no("guided_choice", "both", "vLLM", "removed from vLLM: use structured_outputs.choice"),
    _no("guided_grammar", "both", "vLLM", "removed from vLLM: use structured_outputs.grammar"),
    _no("guided_decoding_backend", "both", "vLLM", "one backend: xgrammar"),
    _no("guided_whitespace_pattern", "both", "vLLM", "not supported"),
    _no("structural_tag", "both", "vLLM", "structural tags are not supported"),
    _no("thinking_token_budget", "both", "vLLM", "reasoning budgets are not supported"),
    _no("watermarking", "both", "vLLM", "watermarking is not supported", False),
    _no("logprob_token_ids", "both", "vLLM", "use logprobs / top_logprobs"),
    _no("routed_experts_prompt_start", "both", "vLLM", "no mixture-of-experts models", 0),
    _no("return_token_offsets", "both", "vLLM", "not supported", False),
    _no("mm_payload", "both", "vLLM", "multimodal input is not supported", "tensors", "none"),
    _no("return_mm_kwargs", "both", "vLLM", "multimodal input is not supported", False),
    _no("ec_transfer_params", "both", "vLLM", "disaggregated serving is not supported"),
    _no("repetition_detection", "both", "vLLM", "not supported"),
    _no("stream_interval", "both", "vLLM", "every step's tokens are streamed", 1),
    # --- vLLM extras, completions ---
    _no("prompt_embeds", "completions", "vLLM", "prompt embeddings are not supported"),
    # --- vLLM extras, chat ---
    _ok("add_generation_prompt", "chat", "vLLM", "default true"),
    _ok(
        "continue_final_message",
        "chat",
        "vLLM",
        "the last (assistant) message is continued; excludes add_generation_prompt",
    ),
    _ok("chat_template_kwargs", "chat", "vLLM", "template variables, e.g. enable_thinking"),
    _ok("documents", "chat", "vLLM", "passed to the chat template"),
    _no("echo", "chat", "vLLM", "not supported for chat", False),
    _ok(
        "include_reasoning",
        "chat",
        "vLLM",
        "false drops reasoning_content (the thinking is still parsed off)",
    ),
    _no("return_prompt_text", "chat", "vLLM", "not supported", False),
    _no("chat_template", "chat", "vLLM", "the model's own template is used"),
    _no("mm_processor_kwargs", "chat", "vLLM", "multimodal input is not supported"),
    _no("media_io_kwargs", "chat", "vLLM", "multimodal input is not supported"),
)


def fields_of(endpoint: Literal["chat", "completions"]) -> list[RequestField]:
    return [field for field in FIELDS if field.endpoint in ("both", endpoint)]


def refuse_unsupported(body: dict[str, Any], endpoint: Literal["chat", "completions"]) -> None:
    """400 for the first refused field that ``body`` (the request's JSON) sets to a non-harmless value."""
    for field in fields_of(endpoint):
        if field.implemented or field.name not in body:
            continue
        if body[field.name] not in field.harmless:
            raise APIError(f"{field.name} is not supported: {field.note}", param=field.name)


def markdown_table() -> str:
    """docs/server.md's field table."""
    rows = ["| field | endpoint | schema | status | notes |", "|---|---|---|---|---|"]
    for field in FIELDS:
        status = "implemented" if field.implemented else "refused (400)"
        rows.append(f"| `{field.name}` | {field.endpoint} | {field.origin} | {status} | {field.note} |")
    return "\n".join(rows)
