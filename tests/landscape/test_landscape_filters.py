"""Filter normalization follows each weight's true output axis (Li et al. 2018).

Every test computes the expected per-unit norms itself, one output unit at a time
(``weight.select(axis, i)``), from an axis the test decides on its own: by the
layer's documented storage, and for GPT-2's ``Conv1D`` by which output an entry feeds.
"""
import pytest
import torch
import torch.nn as nn

from landscape_helpers import tiny_zoo
from normlens.landscape import random_directions
from normlens.landscape.filters import OutputAxis, UnknownLayerWarning, output_axes

transformers = pytest.importorskip("transformers")


def unit_norms_loop(weight: torch.Tensor, axis: int) -> torch.Tensor:
    """‖W_i‖ for each output unit i along ``axis``, by a plain loop."""
    return torch.stack([weight.select(axis, i).double().norm() for i in range(weight.shape[axis])])


def assert_filter_normalized(model: nn.Module, expected_axis: dict[str, int], rtol: float = 1e-5) -> None:
    """Every ≥2-D weight's direction has the weight's own norms along ``expected_axis[name]``."""
    d = random_directions(model, 2, seed=0)
    params = dict(model.named_parameters())
    checked = 0
    for axis in d.axes:
        for name, p in params.items():
            if p.dim() < 2:
                assert torch.count_nonzero(axis[name]) == 0
                continue
            out = expected_axis[name]
            torch.testing.assert_close(unit_norms_loop(axis[name], out), unit_norms_loop(p.detach(), out),
                                       rtol=rtol, atol=1e-7, msg=lambda m: f"{name} (axis {out}): {m}")
            checked += 1
    assert checked >= 2


def _gpt2_config(**kw):
    return transformers.GPT2Config(n_layer=2, n_embd=24, n_head=4, n_positions=16, vocab_size=40, **kw)


def _hf_gpt2():
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(_gpt2_config()).eval()


def _gpt2_axis(name: str) -> int:
    """GPT-2 stores c_attn/c_proj/c_fc (and the bridge's qkv/o) as Conv1D (in, out); q/k/v split
    by the bridge are nn.Linear (out, in); embeddings have one row per token."""
    conv1d = ("c_attn", "c_proj", "c_fc", "attn.qkv", "attn.o", "attn._original_component.o")
    return 1 if any(part + "." in name for part in conv1d) else 0


def test_conv1d_output_axis_is_dim_1_by_what_each_entry_feeds():
    """Independent of any table: changing column j of a Conv1D weight changes only output j."""
    conv = _hf_gpt2().transformer.h[0].mlp.c_fc  # weight (24, 96)
    x = torch.randn(3, 24)
    with torch.no_grad():
        before = conv(x)
        conv.weight[:, 5] += 1.0
        changed = (conv(x) - before).abs().amax(0) > 0
    assert changed.nonzero().flatten().tolist() == [5]
    assert output_axes(_hf_gpt2())["transformer.h.0.mlp.c_fc.weight"] == OutputAxis(1)


def test_hf_gpt2_every_weight_kind():
    model = _hf_gpt2()
    names = [n for n, p in model.named_parameters() if p.dim() >= 2]
    assert any("c_attn" in n for n in names) and any("wte" in n for n in names)
    assert_filter_normalized(model, {n: _gpt2_axis(n) for n in names})


def test_hf_gpt2_bridge_every_weight_kind(tmp_path, monkeypatch):
    from normlens.models.loading import load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _hf_gpt2().save_pretrained(tmp_path)
    bridge = load_model(str(tmp_path))
    names = [n for n, p in bridge.named_parameters() if p.dim() >= 2]
    kinds = {type(bridge.get_submodule(n.rpartition(".")[0])).__name__ for n in names}
    assert kinds == {"Embedding", "Linear", "Conv1D"}  # the layer kinds a GPT-2 bridge uses
    assert any(n.endswith("attn.q._original_component.weight") for n in names)  # split q: nn.Linear
    assert_filter_normalized(bridge, {n: _gpt2_axis(n) for n in names})


def test_zoo_model_every_weight_kind():
    model = tiny_zoo("ln")
    names = [n for n, p in model.named_parameters() if p.dim() >= 2]
    kinds = {type(model.get_submodule(n.rpartition(".")[0])).__name__ for n in names}
    assert kinds == {"Embedding", "Linear"}
    assert_filter_normalized(model, {n: 0 for n in names})  # Linear (out, in); a row per token


class _Convs(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(3, 5, 3)
        self.c2 = nn.Conv2d(4, 6, (2, 3), groups=2)
        self.t1 = nn.ConvTranspose1d(4, 6, 3)  # weight (in 4, out 6, 3)
        self.mha = nn.MultiheadAttention(8, 2)
        self.emb = nn.EmbeddingBag(7, 4)


def test_convolutions_and_attention_in_projections():
    model = _Convs()
    assert_filter_normalized(model, {"c1.weight": 0, "c2.weight": 0, "t1.weight": 1, "mha.in_proj_weight": 0,
                                     "mha.out_proj.weight": 0, "emb.weight": 0})


def test_grouped_transposed_convolution_per_output_channel():
    conv = nn.ConvTranspose2d(6, 4, 2, groups=2)  # weight (6, 2, 2, 2): group g holds rows 3g..3g+2
    d = random_directions(conv, 1, seed=1).axes[0]["weight"]
    w = conv.weight.detach()
    for g in range(2):
        for j in range(2):  # output channel 2g + j
            rows = slice(3 * g, 3 * g + 3)
            torch.testing.assert_close(d[rows, j].norm(), w[rows, j].norm(), rtol=1e-5, atol=0)


class _Raw(nn.Module):
    """A layer normlens does not know: x @ W with W stored (in, out)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, 3))

    def forward(self, x):
        return x @ self.w


def test_unknown_layer_warns_and_override_applies():
    model = _Raw()
    with pytest.warns(UnknownLayerWarning, match=r"w \(_Raw\).*assumed axis 0"):
        d = random_directions(model, 1, seed=0).axes[0]["w"]
    torch.testing.assert_close(unit_norms_loop(d, 0), unit_norms_loop(model.w.detach(), 0), rtol=1e-5, atol=0)
    d = random_directions(model, 1, seed=0, output_axes={"w": 1}).axes[0]["w"]
    torch.testing.assert_close(unit_norms_loop(d, 1), unit_norms_loop(model.w.detach(), 1), rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="not a parameter"):
        random_directions(model, 1, output_axes={"v": 1})


def test_one_tensor_in_layers_with_different_output_axes_is_refused():
    model = nn.Module()
    model.lin = nn.Linear(4, 4)
    conv = transformers.pytorch_utils.Conv1D(4, 4)
    conv.weight = model.lin.weight  # tied, but read as (out, in) by one and (in, out) by the other
    model.conv = conv
    with pytest.raises(ValueError, match="different output axes.*output_axes"):
        random_directions(model, 1)
    random_directions(model, 1, output_axes={"lin.weight": 0})  # an explicit choice is taken
