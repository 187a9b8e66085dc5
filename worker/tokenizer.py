"""The engine's tokenizer: a Hugging Face ``tokenizer.json`` plus the checkpoint's special tokens and
chat template, with the same results as ``transformers.AutoTokenizer`` but without transformers.

Reads ``tokenizer.json`` and ``tokenizer_config.json`` (``chat_template.jinja`` too, where a newer
checkpoint keeps its template there) and, for the end-of-sequence ids, ``generation_config.json`` and
``config.json``. Chat templates are rendered like transformers renders them: a sandboxed jinja2
environment with ``trim_blocks``/``lstrip_blocks``, ``raise_exception``, ``strftime_now``, a ``tojson``
that keeps non-ASCII text, and the special tokens (``bos_token``, ``eos_token``, ...) as variables.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import tokenizers
from jinja2.sandbox import ImmutableSandboxedEnvironment

# The named special tokens transformers exposes to chat templates.
NAMED_SPECIAL_TOKENS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
CHAT_ROLES = ("system", "user", "assistant", "tool")

# transformers' `clean_up_tokenization`, applied on decode when tokenizer_config asks for it.
_CLEANUP_REPLACEMENTS = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


class ChatTemplateError(ValueError):
    """Messages a chat template cannot render, or a template that fails; the message says why."""


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _token_content(value: Any) -> str | None:
    """A special token from tokenizer_config: a string or a serialized AddedToken ``{"content": ...}``."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _as_id_list(value: Any) -> list[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, int)]
    return []


class Tokenizer:
    """Encode, decode and chat-format text for one checkpoint."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        tokenizer_config: dict[str, Any] | None = None,
        generation_config: dict[str, Any] | None = None,
        model_config: dict[str, Any] | None = None,
        chat_template: str | None = None,
    ) -> None:
        self._backend = backend
        config = tokenizer_config or {}
        self.special_tokens_map: dict[str, str] = {
            name: content for name in NAMED_SPECIAL_TOKENS if (content := _token_content(config.get(name)))
        }
        self._mark_named_tokens_special(config)
        self.bos_token_id: int | None = self._id_of(self.special_tokens_map.get("bos_token"))
        self.eos_token_ids: list[int] = self._collect_eos_ids(
            config, generation_config or {}, model_config or {}
        )
        self.chat_template: str | None = chat_template or self._template_from_config(
            config.get("chat_template")
        )
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self._bos_fix = self._bos_policy(config.get("add_bos_token"))
        self._special_ids = frozenset(
            token_id for token_id, added in backend.get_added_tokens_decoder().items() if added.special
        )

    @classmethod
    def from_pretrained(cls, model_dir: Path | str) -> Tokenizer:
        """Load from a Hugging Face-style model directory (needs ``tokenizer.json``)."""
        model_dir = Path(model_dir)
        tokenizer_file = model_dir / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(
                f"{model_dir} has no tokenizer.json (only fast, tokenizers-format tokenizers load)"
            )
        template_file = model_dir / "chat_template.jinja"
        return cls(
            tokenizers.Tokenizer.from_file(str(tokenizer_file)),
            tokenizer_config=_read_json(model_dir / "tokenizer_config.json"),
            generation_config=_read_json(model_dir / "generation_config.json"),
            model_config=_read_json(model_dir / "config.json"),
            chat_template=template_file.read_text(encoding="utf-8") if template_file.is_file() else None,
        )

    # --- construction helpers ---

    def _id_of(self, token: str | None) -> int | None:
        return self._backend.token_to_id(token) if token is not None else None

    def _mark_named_tokens_special(self, config: dict[str, Any]) -> None:
        """Like transformers: the named and additional special tokens are special (skipped on decode)."""
        named = list(self.special_tokens_map.values())
        extra = [_token_content(token) for token in config.get("additional_special_tokens") or []]
        added = {
            added.content for added in self._backend.get_added_tokens_decoder().values() if added.special
        }
        missing = [token for token in [*named, *extra] if token and token not in added]
        missing = [token for token in dict.fromkeys(missing) if self._backend.token_to_id(token) is not None]
        if missing:
            self._backend.add_special_tokens(
                [tokenizers.AddedToken(token, special=True, normalized=False) for token in missing]
            )

    def _collect_eos_ids(self, config: dict, generation_config: dict, model_config: dict) -> list[int]:
        """generation_config's eos ids first (what generation stops on), then tokenizer_config's eos_token;
        config.json's only when generation_config has none."""
        ids = _as_id_list(generation_config.get("eos_token_id"))
        if not ids:
            ids = _as_id_list(model_config.get("eos_token_id"))
        eos_token_id = self._id_of(self.special_tokens_map.get("eos_token"))
        if eos_token_id is not None:
            ids.append(eos_token_id)
        return list(dict.fromkeys(ids))

    @staticmethod
    def _template_from_config(template: Any) -> str | None:
        """A template string, or the "default" of a list of named templates (older tokenizer_config files)."""
        if isinstance(template, list):
            named = {
                entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)
            }
            return named.get("default")
        return template if isinstance(template, str) else None

    def _bos_policy(self, add_bos_token: Any) -> str | None:
        """Reconcile tokenizer_config's add_bos_token with what tokenizer.json's post-processor does."""
        if self.bos_token_id is None or add_bos_token is None:
            return None
        post_processor_adds = self._backend.encode("", add_special_tokens=True).ids[:1] == [self.bos_token_id]
        if add_bos_token and not post_processor_adds:
            return "prepend"
        if not add_bos_token and post_processor_adds:
            return "strip"
        return None

    # --- vocabulary ---

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer knows, added tokens included (``len(hf_tokenizer)``)."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def eos_token_id(self) -> int | None:
        return self.eos_token_ids[0] if self.eos_token_ids else None

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def convert_ids_to_tokens(
        self, ids: int | Iterable[int], skip_special_tokens: bool = False
    ) -> str | list[str]:
        """Vocabulary strings of ids (byte-level spelling, e.g. ``Ġthe``); one id gives one string."""
        if isinstance(ids, int):
            return self._backend.id_to_token(ids)
        return [
            self._backend.id_to_token(i) for i in ids if not (skip_special_tokens and i in self._special_ids)
        ]

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    def backend_json(self) -> str:
        """The ``tokenizer.json`` text (model, pre-tokenizer, decoder): what grammar engines read the
        vocabulary's encoding (byte-level, byte-fallback) from."""
        return self._backend.to_str()

    # --- text ---

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; special tokens written in the text become their ids.

        With ``add_special_tokens``, BOS comes first only where the checkpoint says so
        (tokenizer_config ``add_bos_token`` or the tokenizer.json post-processor), as in transformers.
        """
        ids = self._backend.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens and self._bos_fix == "prepend":
            ids = [self.bos_token_id, *ids]
        elif add_special_tokens and self._bos_fix == "strip" and ids[:1] == [self.bos_token_id]:
            ids = ids[1:]
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        text = self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self.clean_up_tokenization_spaces:
            for before, after in _CLEANUP_REPLACEMENTS:
                text = text.replace(before, after)
        return text

    def decode_raw(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Decode without transformers' space clean-up (what incremental detokenization builds on)."""
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # --- chat ---

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template)

    @cached_property
    def _compiled_template(self) -> jinja2.Template:
        if not self.chat_template:
            raise ChatTemplateError("this model has no chat template; use the completions API instead")
        try:
            return _chat_environment().from_string(self.chat_template)
        except jinja2.TemplateSyntaxError as error:
            raise ChatTemplateError(f"the model's chat template does not compile: {error}") from error

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        """Render ``messages`` (OpenAI-style dicts) into the prompt text the model was trained on.

        Extra keyword arguments (``tools``, ``documents``, ``enable_thinking``, ...) are template variables.
        """
        chat = validate_chat_messages(messages)
        variables = {**self.special_tokens_map, "tools": None, "documents": None, **kwargs}
        try:
            return self._compiled_template.render(
                messages=chat, add_generation_prompt=add_generation_prompt, **variables
            )
        except jinja2.TemplateError as error:
            raise ChatTemplateError(f"the chat template refused the messages: {error}") from error
        except (TypeError, KeyError, AttributeError, IndexError, ValueError) as error:
            raise ChatTemplateError(f"the chat template failed on these messages: {error!r}") from error


def validate_chat_messages(messages: Any) -> list[dict[str, Any]]:
    """Check OpenAI-style messages and normalise them for templates.

    Each message is a dict with a ``role`` among system/user/assistant/tool and a ``content`` that is a
    string or a list of ``{"type": "text", "text": ...}`` parts (joined with newlines, since most
    templates concatenate ``content`` as a string). Keys whose value is None are dropped (so an
    assistant turn with only ``tool_calls`` renders), other keys pass through to the template.
    """
    if not isinstance(messages, list) or not messages:
        raise ChatTemplateError("messages must be a non-empty list")
    chat = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise ChatTemplateError(
                f"{where} must be an object with 'role' and 'content', got {type(message).__name__}"
            )
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise ChatTemplateError(f"{where}.role must be one of {', '.join(CHAT_ROLES)}, got {role!r}")
        normalised = {key: value for key, value in message.items() if value is not None}
        content = message.get("content")
        if content is None:
            if role != "assistant" or not message.get("tool_calls"):
                raise ChatTemplateError(
                    f"{where}.content is required (only an assistant turn with tool_calls may omit it)"
                )
        elif isinstance(content, list):
            normalised["content"] = "\n".join(_text_parts(content, where))
        elif not isinstance(content, str):
            raise ChatTemplateError(f"{where}.content must be a string or a list of text parts")
        chat.append(normalised)
    return chat


def _text_parts(parts: list[Any], where: str) -> list[str]:
    texts = []
    for index, part in enumerate(parts):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ChatTemplateError(
                f"{where}.content[{index}] must be {{'type': 'text', 'text': '...'}}: "
                "only text content is supported"
            )
        texts.append(part["text"])
    return texts


# --- the jinja2 environment chat templates run in ---


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` marks assistant text in some templates; renders its body."""

    tags = {"generation"}  # noqa: RUF012 (jinja2's Extension API declares it a class attribute)

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    @staticmethod
    def _render_body(caller: Any) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: Any = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _chat_environment() -> ImmutableSandboxedEnvironment:
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    return environment
