"""Write an LN-free model in the Hugging Face format of the released LN-free GPT-2s.

The released checkpoints (Baroni, Heimersheim et al. 2025; e.g.
``schaeff/gpt2-small_LNFree300``) are plain GPT-2s whose LayerNorms are
switched off by eps = 1e12 with their gain multiplied by 1e6: with
sqrt(var + 1e12) ~= 1e6 a LayerNorm computes (x - mean) * g + b. A frozen-std
norm y = s * ((x - mean) / sigma * g + b) (s the LayerNorm-Scaling factor, 1
in GPT-2) is written with gain s * g / sigma * 1e6 and bias s * b. An
attention-input norm whose value path divides by sigma_v instead is exact
after folding c = sigma / sigma_v into the value projection:
W_v' = c W_v and b_v' = b_v + (1 - c) (s b) W_v.

:func:`normlens.models.loading.load_model` reads the result back (its logits
check included).
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn
from transformer_lens.model_bridge import TransformerBridge

from normlens.models.ln_removal import FIRST_POSITION, is_zoo_model, remaining_layernorms
from normlens.models.norms import FrozenStdLayerNorm
from normlens.models.zoo import norm_modules

LN_FREE_EPS = 1e12
LN_FREE_GAIN = 1e6


class ExportError(ValueError):
    """A model the LN-free export cannot write exactly; the message names the fix."""


def _conv1d_weight(module: nn.Module) -> torch.Tensor:
    """A projection's weight in GPT-2's Conv1D layout (in, out)."""
    inner = getattr(module, "original_component", module)
    if isinstance(inner, nn.Linear):
        return inner.weight.detach().t()
    if hasattr(inner, "nf"):  # transformers' Conv1D stores (in, out)
        return inner.weight.detach()
    raise ExportError(f"cannot export a projection of type {type(inner).__name__}")


def _bias(module: nn.Module) -> torch.Tensor:
    inner = getattr(module, "original_component", module)
    return inner.bias.detach()


def _check_exportable(model: TransformerBridge) -> dict[str, FrozenStdLayerNorm]:
    norms = {slot: norm for slot, norm in norm_modules(model).items() if isinstance(norm, FrozenStdLayerNorm)}
    live = remaining_layernorms(model)
    if live:
        raise ExportError(
            f"{', '.join(live)} still divide by the token's own std; finish LN removal "
            "(normlens.models.ln_removal.remove_layernorm) before exporting")
    legacy = [slot for slot, norm in norms.items() if bool(norm.separate_first_position)]
    if legacy:
        raise ExportError(
            f"{', '.join(legacy)} divide position 0 by a separate std, which the eps = 1e12 format cannot "
            f"hold; redo the removal with this normlens (its {FIRST_POSITION!r} stage joins position 0 "
            "to the common divisor)")
    expected = set(norm_modules(model))
    if is_zoo_model(model):
        config = model.normlens_config
        posts = [layer for layer in range(config.n_layers) if config.block_placement(layer) != "pre"]
        if posts:
            raise ExportError(f"blocks {posts} are Post-LN; GPT-2's format holds Pre-LN blocks only")
    if set(norms) != expected:
        other = sorted(expected - set(norms))
        raise ExportError(f"{', '.join(other)} hold no frozen-std LayerNorm; only LN-free models "
                          "(norm='lnfree' or the output of remove_layernorm) can be exported")
    return norms


def _gpt2_config(model: TransformerBridge):
    from transformers import GPT2Config

    if not is_zoo_model(model):
        config = copy.deepcopy(model.original_model.config)
        if config.model_type != "gpt2":
            raise ExportError(f"LN-free export writes GPT-2 checkpoints; this model is {config.model_type!r}")
        config.layer_norm_epsilon = LN_FREE_EPS
        return config
    zoo = model.normlens_config
    return GPT2Config(
        vocab_size=zoo.d_vocab, n_positions=zoo.n_ctx, n_embd=zoo.d_model, n_layer=zoo.n_layers,
        n_head=zoo.n_heads, n_inner=zoo.resolved_d_mlp, activation_function=zoo.act_fn,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=LN_FREE_EPS,
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=None)


@torch.no_grad()
def lnfree_state_dict(model: TransformerBridge) -> dict[str, torch.Tensor]:
    """GPT-2 (``GPT2LMHeadModel``) tensors of an LN-free zoo model or GPT-2 bridge, norms folded."""
    norms = _check_exportable(model)
    n_layers = int(model.cfg.n_layers)
    state: dict[str, torch.Tensor] = {
        "transformer.wte.weight": model.embed.original_component.weight.detach(),
        "transformer.wpe.weight": model.pos_embed.original_component.weight.detach(),
        "lm_head.weight": model.unembed.original_component.weight.detach(),
    }
    unembed_bias = getattr(model.unembed.original_component, "bias", None)
    if unembed_bias is not None and bool(unembed_bias.detach().abs().max() > 0):
        raise ExportError("the unembedding has a bias, which GPT-2's lm_head cannot hold")

    def fold(slot: str, prefix: str) -> None:
        norm = norms[slot]
        s = float(norm.output_scale)
        state[f"{prefix}.weight"] = norm.weight.detach() * (s * LN_FREE_GAIN) / norm.std.to(norm.weight.dtype)
        state[f"{prefix}.bias"] = norm.bias.detach() * s

    for layer in range(n_layers):
        block = f"transformer.h.{layer}"
        attn = f"blocks.{layer}.attn"
        weights = [_conv1d_weight(model.get_submodule(f"{attn}.{name}")) for name in ("q", "k", "v")]
        biases = [_bias(model.get_submodule(f"{attn}.{name}")) for name in ("q", "k", "v")]
        ln1 = norms[f"blocks.{layer}.ln1"]
        if ln1.feeds_value_path:
            c = (ln1.std / ln1.std_value).to(weights[2].dtype)
            offset = ln1.bias.detach() * float(ln1.output_scale)  # the norm's output bias s*b, (d_model,)
            biases[2] = biases[2] + (1 - c) * (offset @ weights[2])
            weights[2] = c * weights[2]
        state[f"{block}.attn.c_attn.weight"] = torch.cat(weights, dim=1)  # (d_model, 3 d_model)
        state[f"{block}.attn.c_attn.bias"] = torch.cat(biases)
        state[f"{block}.attn.c_proj.weight"] = _conv1d_weight(model.get_submodule(f"{attn}.o"))
        state[f"{block}.attn.c_proj.bias"] = _bias(model.get_submodule(f"{attn}.o"))
        state[f"{block}.mlp.c_fc.weight"] = _conv1d_weight(model.get_submodule(f"blocks.{layer}.mlp.in"))
        state[f"{block}.mlp.c_fc.bias"] = _bias(model.get_submodule(f"blocks.{layer}.mlp.in"))
        state[f"{block}.mlp.c_proj.weight"] = _conv1d_weight(model.get_submodule(f"blocks.{layer}.mlp.out"))
        state[f"{block}.mlp.c_proj.bias"] = _bias(model.get_submodule(f"blocks.{layer}.mlp.out"))
        fold(f"blocks.{layer}.ln1", f"{block}.ln_1")
        fold(f"blocks.{layer}.ln2", f"{block}.ln_2")
    fold("ln_final", "transformer.ln_f")
    return {name: tensor.detach().cpu().contiguous().clone() for name, tensor in state.items()}


def export_lnfree(model: TransformerBridge, folder: str | Path, *, tokenizer: bool = True) -> Path:
    """Write ``model`` (LN-free: a finished removal, or a zoo "lnfree" Pre-LN model) to ``folder``
    as a Hugging Face GPT-2 with eps = 1e12 and gains x 1e6; returns the folder.

    A Hugging Face source's tokenizer is saved beside it when ``tokenizer``.
    """
    from transformers import GPT2LMHeadModel

    state = lnfree_state_dict(model)
    config = _gpt2_config(model)
    with torch.random.fork_rng(devices=[]):
        hf_model = GPT2LMHeadModel(config)
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    missing = [name for name in missing if not name.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing or unexpected:
        raise ExportError(f"the GPT-2 layout does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if getattr(config, "tie_word_embeddings", True):
        if not torch.equal(state["lm_head.weight"], state["transformer.wte.weight"]):
            raise ExportError("the model's unembedding differs from its embedding, but its config ties them")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(folder)
    source = getattr(model, "normlens_source", None)
    if tokenizer and source is not None:
        from normlens.data.tokenize import load_tokenizer

        load_tokenizer(source).tokenizer.save_pretrained(folder)
    return folder
