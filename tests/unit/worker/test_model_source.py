"""model_source: every accepted form resolves to a model directory; bad ones fail with a clear message."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import huggingface_hub.constants
import pytest

from mili.worker.model_source import (
    DEFAULT_MODEL,
    ModelSource,
    ModelSourceError,
    cache_root,
    parse_model_source,
    resolve_model_source,
)


def _model_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_cache_root_honours_env_and_defaults_to_home(monkeypatch, tmp_path):
    monkeypatch.setenv("MILI_CACHE_DIR", str(tmp_path / "cache"))
    assert cache_root() == tmp_path / "cache"
    monkeypatch.delenv("MILI_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root() == tmp_path / ".cache" / "mili"


def test_plain_path_and_file_url_resolve_to_the_directory(tmp_path):
    model = _model_dir(tmp_path / "model")
    assert resolve_model_source(str(model)) == model.resolve()
    assert resolve_model_source(f"file://{model}") == model.resolve()


def test_pvc_source_resolves_under_the_mount_root(monkeypatch, tmp_path):
    monkeypatch.setenv("MILI_PVC_ROOT", str(tmp_path))
    model = _model_dir(tmp_path / "weights" / "qwen3" / "0.6b")
    assert resolve_model_source("pvc://weights/qwen3/0.6b") == model.resolve()
    parsed = parse_model_source("pvc://weights/qwen3/0.6b/")
    assert (parsed.scheme, parsed.claim, parsed.location) == ("pvc", "weights", "qwen3/0.6b")


def test_pvc_root_defaults_to_models(monkeypatch):
    monkeypatch.delenv("MILI_PVC_ROOT", raising=False)
    with pytest.raises(ModelSourceError, match="/models/claim/x is not a directory"):
        resolve_model_source("pvc://claim/x")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("hf://Qwen/Qwen3-0.6B", ModelSource("hf", "Qwen/Qwen3-0.6B")),
        (
            "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main",
            ModelSource("hf", "HuggingFaceTB/SmolLM2-135M-Instruct", "main"),
        ),
        ("hf://org/name@0123abcd", ModelSource("hf", "org/name", "0123abcd")),
        ("builtin:smollm2-135m-instruct", ModelSource("builtin", "smollm2-135m-instruct")),
        ("file:///models/x", ModelSource("file", "/models/x")),
        ("./relative/dir", ModelSource("path", "./relative/dir")),
    ],
)
def test_parse_splits_each_form(source, expected):
    assert parse_model_source(source) == dataclasses.replace(expected, uri=source)


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("", "empty"),
        ("ftp://host/model", "unknown scheme"),
        ("s3://bucket/model", "unknown scheme"),
        ("hf://only-a-name", "ORG/NAME"),
        ("hf://a/b/c", "ORG/NAME"),
        ("hf://org/name@", "revision"),
        ("pvc://Bad_Claim/x", "PersistentVolumeClaim name"),
        ("pvc://claim/../etc", "'..'"),
        ("file://relative/path", "absolute path"),
        ("builtin:", "model name"),
    ],
)
def test_malformed_sources_name_the_source_and_the_accepted_forms(source, problem):
    with pytest.raises(ModelSourceError) as caught:
        parse_model_source(source)
    message = str(caught.value)
    assert problem in message
    assert repr(source) in message
    assert "hf://ORG/NAME[@REV], pvc://CLAIM/PATH, file:///PATH, builtin:NAME" in message


def test_model_source_error_is_a_value_error():
    assert issubclass(ModelSourceError, ValueError)


def test_missing_directory_and_directory_without_config_are_refused(tmp_path):
    with pytest.raises(ModelSourceError, match="is not a directory"):
        resolve_model_source(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match=r"has no config\.json"):
        resolve_model_source(f"file://{tmp_path / 'empty'}")


def test_hub_source_that_cannot_be_downloaded_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("MILI_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no hub here: fail fast
    with pytest.raises(ModelSourceError) as caught:
        resolve_model_source("hf://mili-test/no-such-model@v1")
    message = str(caught.value)
    assert "could not download mili-test/no-such-model at revision v1 from the Hugging Face Hub" in message
    assert "'hf://mili-test/no-such-model@v1'" in message


def test_unknown_builtin_lists_the_builtin_models():
    with pytest.raises(ModelSourceError, match=r"unknown builtin model .nope.*smollm2-135m-instruct"):
        resolve_model_source("builtin:nope")


def test_default_model_resolves_to_the_converted_builtin(smollm2_dir):
    directory = resolve_model_source(DEFAULT_MODEL)
    assert directory == smollm2_dir
    assert (directory / "config.json").is_file()
