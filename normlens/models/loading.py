"""Load any model normlens can analyse: a zoo checkpoint or a Hugging Face model.

Hugging Face models (GPT-2 and the LN-free GPT-2 family) go through
``TransformerBridge.boot_transformers``. The LN-free checkpoints disable each
LayerNorm with eps = 1e12 and the gain multiplied by 1e6, so every norm must
use the module's own eps; :func:`load_hf_model` makes each norm slot run the
Hugging Face module itself and checks the bridge's logits against the
Hugging Face model's on a probe input.
"""
from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from transformer_lens.model_bridge import TransformerBridge

from normlens.models.checkpoint import CONFIG_FILE, FORMAT, load_checkpoint

LN_DISABLED_EPS = 1e3  # an eps this large means "this LayerNorm is switched off"


class ModelLoadError(ValueError):
    """A model that could not be loaded; the message names the fix."""


def _is_normlens_checkpoint(path: Path) -> bool:
    """Ours when config.json says so; a config that is not valid JSON counts as
    ours too (Hugging Face never writes one), so load_checkpoint explains it."""
    config = (path if path.is_dir() else path.parent) / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        meta = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return True
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def load_model(spec: str, *, device: str | torch.device | None = None) -> TransformerBridge:
    """Load a normlens checkpoint folder, or a Hugging Face model by name or local folder.

    A Hugging Face model remembers where it came from (``model.normlens_source``),
    so :func:`normlens.data.model_tokenizer` finds its tokenizer there.
    """
    path = Path(spec)
    if not path.exists() and spec.startswith(("/", "./", "../", "~")):
        raise ModelLoadError(f"{spec!r} does not exist; pass a folder written by `normlens train`, a "
                             "Hugging Face model folder, or a hub name such as gpt2")
    if path.exists() and _is_normlens_checkpoint(path):
        model = load_checkpoint(path)
        return model.to(device) if device is not None else model
    if path.exists() or "/" in spec or spec.startswith("gpt2"):
        if path.exists():
            _check_hf_folder(path)
        return load_hf_model(spec, device=device)
    raise ModelLoadError(
        f"{spec!r} is neither an existing checkpoint folder nor a Hugging Face model name; pass "
        "a folder written by `normlens train` or a name such as gpt2 or schaeff/gpt2-small_LNFree300")


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")


def _check_hf_folder(path: Path) -> None:
    """One-line errors for a local folder that cannot be a Hugging Face model."""
    folder = path if path.is_dir() else path.parent
    config = folder / CONFIG_FILE
    if not config.is_file():
        raise ModelLoadError(
            f"{str(folder)!r} has no {CONFIG_FILE}; pass a folder written by `normlens train` or by "
            "a Hugging Face model's save_pretrained")
    try:
        meta = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        meta = None
    if not isinstance(meta, dict) or "model_type" not in meta:
        raise ModelLoadError(
            f"{str(config)!r} is neither a normlens checkpoint config (it lacks \"format\": "
            f"\"{FORMAT}\") nor a Hugging Face config (it lacks \"model_type\"); pass a folder "
            "written by `normlens train` or by save_pretrained")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ModelLoadError(
            f"{str(folder)!r} has a Hugging Face config but no weights ({' or '.join(WEIGHT_FILES[:2])}); "
            "save the model with save_pretrained into that folder")


def _weights_error(name_or_path: str, error: BaseException) -> ModelLoadError:
    """A one-line error naming the weights file that could not be read.

    The library's own text is left out on purpose: torch's unpickling error
    suggests ``weights_only=False``, which would run whatever the file holds.
    """
    folder = Path(name_or_path)
    files = [str(folder / name) for name in WEIGHT_FILES if (folder / name).is_file()]
    where = " / ".join(repr(f) for f in files) if files else f"the weights of {name_or_path!r}"
    return ModelLoadError(
        f"could not read {where} ({type(error).__name__}): the file is truncated, damaged, or not a "
        "plain tensor file (a pickle holding other objects is refused); re-save the model with "
        "save_pretrained, preferably as safetensors")


def _layer_norms(hf_model: nn.Module) -> list[nn.Module]:
    return [m for m in hf_model.modules() if isinstance(m, nn.LayerNorm)]


def _norm_bridges(bridge: TransformerBridge) -> list[Any]:
    from transformer_lens.model_bridge.generalized_components.normalization import NormalizationBridge

    return [m for m in bridge.modules() if isinstance(m, NormalizationBridge)]


def is_ln_free(hf_model: nn.Module) -> bool:
    """True when the model's LayerNorms are disabled (huge eps) or replaced by identities."""
    norms = _layer_norms(hf_model)
    return not norms or all(m.eps >= LN_DISABLED_EPS for m in norms)


def load_hf_model(
    name_or_path: str, *, hf_model: nn.Module | None = None, device: str | torch.device | None = None,
    verify: bool = True, atol: float = 1e-3,
) -> TransformerBridge:
    """Wrap a Hugging Face causal LM in a TransformerBridge with correct logits.

    Args:
        name_or_path: hub name (online) or local folder with config.json and weights.
        hf_model: an already-built model (e.g. one whose LayerNorms were replaced
            by ``nn.Identity``); ``name_or_path`` still names its config.
        verify: compare the bridge's logits with ``hf_model``'s on a probe input.
    """
    from transformers import AutoModelForCausalLM

    local = Path(name_or_path).exists()
    try:
        if hf_model is None:
            hf_model = AutoModelForCausalLM.from_pretrained(name_or_path)
    except (pickle.UnpicklingError, SafetensorError, EOFError, RuntimeError) as error:
        raise _weights_error(name_or_path, error) from None
    except OSError as error:
        if local and any((Path(name_or_path) / name).is_file() for name in WEIGHT_FILES):
            raise _weights_error(name_or_path, error) from None
        raise ModelLoadError(
            f"could not load Hugging Face model {name_or_path!r}: {_first_line(error)}. Check the name "
            "and your network, or pass a local folder holding config.json and the weights") from None
    except ValueError as error:
        raise ModelLoadError(
            f"could not load Hugging Face model {name_or_path!r}: {_first_line(error)}") from None
    _check_norm_eps(hf_model, name_or_path)
    try:
        hf_model = hf_model.eval()
        bridge = TransformerBridge.boot_transformers(name_or_path, hf_model=hf_model, device=device)
    except OSError as error:
        raise ModelLoadError(
            f"could not load Hugging Face model {name_or_path!r}: {_first_line(error)}. Check the name "
            "and your network, or pass a local folder holding config.json and the weights") from None
    bridge.normlens_source = name_or_path
    # Each norm slot runs the wrapped module itself: its own eps (1e12 in the LN-free
    # checkpoints) and identities (LayerNorm removed) both stay exact.
    for norm_bridge in _norm_bridges(bridge):
        norm_bridge.use_native_layernorm_autograd = True
    bridge.normlens_ln_free = is_ln_free(hf_model)
    if verify:
        _verify_logits(bridge, hf_model, atol=atol)
    return bridge


def _check_norm_eps(hf_model: nn.Module, name_or_path: str) -> None:
    for name, module in hf_model.named_modules():
        eps = getattr(module, "eps", getattr(module, "variance_epsilon", None))
        if isinstance(module, nn.LayerNorm) or "norm" in type(module).__name__.lower():
            if isinstance(eps, (int, float)) and not (math.isfinite(eps) and eps > 0):
                raise ModelLoadError(
                    f"norm {name!r} of {name_or_path!r} has eps={eps}; eps must be a positive finite "
                    "number: fix layer_norm_epsilon (or rms_norm_eps) in its config.json")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _verify_logits(bridge: TransformerBridge, hf_model: nn.Module, *, atol: float) -> None:
    vocab = int(bridge.cfg.d_vocab)
    device = next(hf_model.parameters()).device
    probe = (torch.arange(8, device=device).unsqueeze(0) * 7919) % vocab  # (1, 8)
    with torch.no_grad():
        expected = hf_model(probe).logits
        got = bridge(probe)
    error = (got - expected).abs().max().item()
    if not error <= atol * max(1.0, expected.abs().max().item()):
        raise ModelLoadError(
            f"the bridge's logits differ from the Hugging Face model's by {error:.3g}; "
            "this architecture is not supported faithfully by normlens yet")
