"""Tiny random checkpoints saved with transformers, for numerics and engine tests."""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paged attention stores keys and values in fixed-size blocks.",
    "Continuous batching admits new requests at every step. 0123456789",
    "Prefix caching shares the KV of common prompt prefixes across requests.",
    "Les modèles de langue prédisent le prochain mot. 東京は日本の首都です。 emoji: 🚀✨",
]


def save_tokenizer(directory: Path, vocab_size: int = 512) -> None:
    """A byte-level BPE tokenizer trained on a small corpus, with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "bos_token": None,
                "chat_template": CHAT_TEMPLATE,
                "model_max_length": 4096,
            }
        )
    )


def build_tiny_model(directory: Path, architecture: str, **overrides) -> Path:
    """Save a random tiny ``architecture`` model (float32) plus tokenizer into ``directory``."""
    import torch
    import transformers
    from tokenizers import Tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    save_tokenizer(directory)
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    eos_id = tokenizer.token_to_id("<|im_end|>")
    common = dict(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rms_norm_eps=1e-6,
        eos_token_id=eos_id,
        pad_token_id=tokenizer.token_to_id("<|endoftext|>"),
        bos_token_id=None,
        # Larger than the default 0.02 so logits are peaked: greedy comparisons need clear argmaxes.
        initializer_range=0.25,
    )
    if architecture == "Qwen3ForCausalLM":
        config = transformers.Qwen3Config(head_dim=32, tie_word_embeddings=True, rope_theta=1e6, **common)
    elif architecture == "Qwen2ForCausalLM":
        config = transformers.Qwen2Config(tie_word_embeddings=False, rope_theta=1e6, **common)
    elif architecture == "LlamaForCausalLM":
        config = transformers.LlamaConfig(tie_word_embeddings=False, rope_theta=1e4, **common)
    else:
        raise ValueError(architecture)
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = getattr(transformers, architecture)(config).eval()
    model.save_pretrained(directory, safe_serialization=True)
    return directory
