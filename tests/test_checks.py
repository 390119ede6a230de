"""Checks before the work: finite weights."""
import pytest
import torch

from normlens.models import build_model, norm_modules
from normlens.models.checks import NonFiniteWeightsError, check_finite_weights

TINY = dict(n_layers=2, d_model=16, n_heads=2, n_ctx=8, d_vocab=32)


def test_finite_model_passes_and_the_first_bad_tensor_is_named():
    model = build_model(**TINY)
    check_finite_weights(model)
    with torch.no_grad():
        model.blocks[1].attn.k.original_component.weight[0, :3] = float("nan")
        model.blocks[1].mlp.out.original_component.bias[0] = float("inf")
    with pytest.raises(NonFiniteWeightsError, match=r"3 non-finite values \(NaN or inf\) in parameter "
                       r"'(blocks|layers)\.1\.attn\.k\.weight' \(shape \(16, 16\)\); it diverged") as error:
        check_finite_weights(model, name="run/model")
    assert str(error.value).startswith("run/model has") and "\n" not in str(error.value)


def test_non_finite_buffer_is_named():
    model = build_model(norm="lnfree", **TINY)
    norm_modules(model)["ln_final"].std.fill_(float("inf"))
    with pytest.raises(NonFiniteWeightsError, match="buffer 'ln_final.std'"):
        check_finite_weights(model)
