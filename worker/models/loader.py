"""Build a `CausalLM` and fill it from an HF directory (single or sharded safetensors)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from mili.kernels import KernelBackend
from mili.worker.models.cpu_linear import packing_available, prepack_linears
from mili.worker.models.decoder import CausalLM
from mili.worker.models.model_config import ModelConfig

logger = logging.getLogger(__name__)


def safetensors_files(model_dir: Path) -> list[Path]:
    """The checkpoint's weight files: from the shard index when there is one, else every *.safetensors."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / name for name in names]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir} has no *.safetensors weights")
    return files


def load_model(
    model_dir: Path, config: ModelConfig, backend: KernelBackend, dtype: torch.dtype, device: torch.device
) -> CausalLM:
    """Create the model directly on ``device`` in ``dtype`` and load every checkpoint tensor into it."""
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = CausalLM(config, backend)
    finally:
        torch.set_default_dtype(previous_dtype)
    model.cos_sin_cache = model.cos_sin_cache.float().to(device)
    load_weights(model, model_dir)
    if packing_available(dtype, device):
        logger.info("CPU: %d linear layers on oneDNN's prepacked weights", prepack_linears(model))
    return model.eval()


def load_weights(model: CausalLM, model_dir: Path) -> None:
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    for file in safetensors_files(model_dir):
        with safe_open(str(file), framework="pt") as tensors:
            for name in tensors.keys():  # noqa: SIM118 (safe_open is not a dict)
                if "rotary_emb.inv_freq" in name:
                    continue
                if name == "lm_head.weight" and model.config.tie_word_embeddings:
                    continue
                loaded.add(_load_one(model, params, name, tensors.get_tensor(name)))
    missing = set(params) - loaded
    if model.config.tie_word_embeddings:
        missing.discard("lm_head.weight")
    if missing:
        raise ValueError(f"checkpoint in {model_dir} lacks weights for: {', '.join(sorted(missing)[:8])}")


def _load_one(model: CausalLM, params: dict[str, nn.Parameter], name: str, tensor: torch.Tensor) -> str:
    for checkpoint_part, (packed_part, shard) in model.packed_modules.items():
        if f".{checkpoint_part}." in name:
            target = name.replace(checkpoint_part, packed_part)
            module = model.get_submodule(target.rsplit(".", 1)[0])
            module.load_shard(_param(params, target, name), tensor, shard)
            return target
    param = _param(params, name, name)
    if param.shape != tensor.shape:
        raise ValueError(
            f"weight {name} has shape {tuple(tensor.shape)}, the model expects {tuple(param.shape)}"
        )
    param.data.copy_(tensor)
    return name


def _param(params: dict[str, nn.Parameter], target: str, source: str) -> nn.Parameter:
    if target not in params:
        raise ValueError(f"checkpoint tensor {source} has no place in the model (looked for {target})")
    return params[target]
