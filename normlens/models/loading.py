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
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
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
    """Load a normlens checkpoint folder, or a Hugging Face model by name or local folder."""
    path = Path(spec)
    if path.exists() and _is_normlens_checkpoint(path):
        model = load_checkpoint(path)
        return model.to(device) if device is not None else model
    if path.exists() or "/" in spec or spec.startswith("gpt2"):
        return load_hf_model(spec, device=device)
    raise ModelLoadError(
        f"{spec!r} is neither an existing checkpoint folder nor a Hugging Face model name; pass "
        "a folder written by `normlens train` or a name such as gpt2 or schaeff/gpt2-small_LNFree300")


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

    try:
        if hf_model is None:
            hf_model = AutoModelForCausalLM.from_pretrained(name_or_path)
        hf_model = hf_model.eval()
        bridge = TransformerBridge.boot_transformers(name_or_path, hf_model=hf_model, device=device)
    except OSError as error:
        raise ModelLoadError(
            f"could not load Hugging Face model {name_or_path!r}: {error}. Check the name and your "
            "network, or pass a local folder holding config.json and the weights") from None
    # Each norm slot runs the wrapped module itself: its own eps (1e12 in the LN-free
    # checkpoints) and identities (LayerNorm removed) both stay exact.
    for norm_bridge in _norm_bridges(bridge):
        norm_bridge.use_native_layernorm_autograd = True
    bridge.normlens_ln_free = is_ln_free(hf_model)
    if verify:
        _verify_logits(bridge, hf_model, atol=atol)
    return bridge


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
