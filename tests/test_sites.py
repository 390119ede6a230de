"""sites.py's slot and parameter-name builders against a zoo model's own module and parameter names."""
from __future__ import annotations

import re

import normlens
from normlens import sites
from normlens.curvature.blocks import transformer_blocks
from normlens.parameters import describe_parameters, layer_pattern


def _model(n_layers=3):
    return normlens.build_model(norm="ln", n_layers=n_layers, d_model=16, n_heads=2, n_ctx=8, d_vocab=32)


def test_norm_slots_are_the_models_norm_modules():
    model = _model()
    # every norm module of the model sits in one of the slots (independent: the module class names)
    norm_paths = {name.replace("._original_component", "").removesuffix("._original_component")
                  for name, m in model.named_modules() if type(m).__name__ == "LayerNorm"}
    assert norm_paths == set(sites.norm_slots(3))
    assert all(model.get_submodule(slot) is not None for slot in sites.norm_slots(3))


def test_block_groups_partition_the_parameters():
    model = _model()
    names = [info.name for info in describe_parameters(model)]
    groups = sites.block_param_groups(3)
    assert transformer_blocks(3) == groups
    for name in names:
        owners = [label for label, pattern in groups.items() if re.search(pattern, name)]
        assert len(owners) == 1, (name, owners)
        if name.startswith("blocks."):
            layer, part = name.split(".")[1], name.split(".")[2]
            kind = "norms" if part.startswith("ln") else part
            assert owners == [f"blocks.{layer}.{kind}"]
    # block 1 does not catch block 10 and up
    assert not re.search(sites.layer_params(1), "blocks.10.attn.W_Q")
    assert [n for n in names if re.search(layer_pattern(2), n)] == [n for n in names if n.startswith("blocks.2.")]
