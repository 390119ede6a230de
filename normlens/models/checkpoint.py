"""Save and load zoo models: a folder with ``config.json`` and ``model.safetensors``.

The config carries everything :func:`normlens.build_model` needs, so a model
is rebuilt exactly (same logits). Tensors are the model's parameters and
persistent buffers (DyT's alpha, the frozen std of an LN-free model), under
their module paths, each tensor once.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformer_lens.model_bridge import TransformerBridge

from normlens.io import atomic_path, write_json
from normlens.models.config import ConfigError, ZooConfig
from normlens.models.zoo import build_model, get_config

FORMAT = "normlens-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the fix."""


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers by module path, each tensor once."""
    tensors: dict[str, torch.Tensor] = {}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for name, param in module.named_parameters(recurse=False):
            tensors[prefix + name] = param
        for name, buffer in module.named_buffers(recurse=False):
            if name not in module._non_persistent_buffers_set:
                tensors[prefix + name] = buffer
    return tensors


def save_checkpoint(model: TransformerBridge, path: str | Path, *,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (a zoo model) to the folder ``path``, atomically per file.

    ``extra`` is stored beside the config (e.g. training step, losses).
    """
    config = get_config(model)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in model_tensors(model).items()}
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    write_json(folder / CONFIG_FILE, {
        "format": FORMAT, "version": FORMAT_VERSION, "config": config.to_dict(), "extra": extra or {},
    })
    return folder


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint folder (with clear errors)."""
    folder = Path(path)
    if not folder.exists():
        raise CheckpointError(f"checkpoint {str(folder)!r} does not exist; pass a folder written "
                              "by `normlens train` (it holds config.json and model.safetensors)")
    if folder.is_file():
        folder = folder.parent
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{str(folder)!r} has no {CONFIG_FILE}; it is not a normlens "
                              "checkpoint. Pass a folder written by `normlens train`")
    try:
        meta = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{str(config_path)!r} is not valid JSON ({error}); the checkpoint "
                              "is truncated or damaged: re-save it with `normlens train`") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(config_path)!r} is not a normlens checkpoint config "
                              f"(expected \"format\": \"{FORMAT}\")")
    version = meta.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{str(config_path)!r} has \"version\": {version!r}, expected an integer "
                              f"such as {FORMAT_VERSION}; re-save the checkpoint with `normlens train`")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format version {meta['version']} is newer than this "
                              f"normlens understands ({FORMAT_VERSION}); upgrade normlens")
    return meta


# Buffers added after format version 1 was fixed, with the buffer an older file holds instead.
_ADDED_BUFFERS = {"std_value": "std", "live_value": "live"}


def _fill_value_path_buffers(saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Checkpoints written before LN removal had a value path: the value path is the output path."""
    for name in expected:
        prefix, _, leaf = name.rpartition(".")
        older = _ADDED_BUFFERS.get(leaf)
        if older is not None and name not in saved and f"{prefix}.{older}" in saved:
            saved[name] = saved[f"{prefix}.{older}"]


def load_checkpoint(path: str | Path) -> TransformerBridge:
    """Rebuild the zoo model saved at ``path`` with its exact weights."""
    folder = Path(path)
    folder = folder.parent if folder.is_file() else folder
    meta = read_checkpoint_meta(folder)
    try:
        config = ZooConfig.from_dict(meta["config"])
    except (ConfigError, TypeError, KeyError) as error:
        what = f"has no {error}" if isinstance(error, KeyError) else f"is not usable: {error}"
        raise CheckpointError(f"the checkpoint config {str(folder / CONFIG_FILE)!r} {what}") from None
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{str(folder)!r} has no {WEIGHTS_FILE}; the checkpoint is "
                              "incomplete: re-save it with `normlens train`")
    try:
        saved = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{str(weights_path)!r} is truncated or not a safetensors file "
                              f"({error}); re-save the checkpoint with `normlens train`") from None
    model = build_model(config)
    expected = model_tensors(model)
    _fill_value_path_buffers(saved, expected)
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{str(weights_path)!r} does not fit its config: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}; the files come from different models. Re-save the checkpoint")
    with torch.no_grad():
        for name, tensor in expected.items():
            if saved[name].shape != tensor.shape:
                raise CheckpointError(f"tensor {name!r} has shape {tuple(saved[name].shape)} in "
                                      f"the file but {tuple(tensor.shape)} in the model")
            tensor.copy_(saved[name])
    return model
