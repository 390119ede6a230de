"""Checkpoints rebuild identical models; damaged ones give clear errors."""
import json

import pytest
import torch

from normlens.models import build_model, norm_modules
from normlens.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from normlens.models.loading import ModelLoadError, load_model

TINY = dict(n_layers=2, d_model=16, n_heads=2, n_ctx=12, d_vocab=32)


@pytest.mark.parametrize("norm,placement", [("dyt", "mix"), ("lnfree", "pre"), ("rms", "scaled")])
def test_rebuilt_model_gives_identical_logits(tmp_path, norm, placement):
    model = build_model(norm=norm, placement=placement, **TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        for m in norm_modules(model).values():
            if hasattr(m, "std"):
                m.std.fill_(1.7)
    save_checkpoint(model, tmp_path / "ck")
    loaded = load_model(str(tmp_path / "ck"))
    tokens = torch.randint(0, 32, (3, 12))
    assert torch.equal(model(tokens), loaded(tokens))
    assert loaded.normlens_config == model.normlens_config


def test_truncated_weights_file(tmp_path):
    save_checkpoint(build_model(**TINY), tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or not a safetensors file"):
        load_checkpoint(tmp_path)


def test_foreign_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match="not a normlens checkpoint"):
        load_checkpoint(tmp_path)


def test_damaged_config_json(tmp_path):
    save_checkpoint(build_model(**TINY), tmp_path)
    (tmp_path / "config.json").write_text('{"format": "normlens-chec')
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        load_model(str(tmp_path))


def test_weights_of_another_model(tmp_path):
    save_checkpoint(build_model(**TINY), tmp_path / "a")
    save_checkpoint(build_model(norm="dyt", **TINY), tmp_path / "b")
    (tmp_path / "a" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="does not fit its config"):
        load_checkpoint(tmp_path / "a")


def test_missing_path_and_unknown_name(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="neither an existing checkpoint"):
        load_model("no-such-model-name")


@pytest.mark.parametrize("change,message", [
    ({"version": "1"}, "has \"version\": '1', expected an integer"),
    ({"config": {"d_mlp": 1.5}}, "d_mlp must be a positive integer"),
    ({"config": {"eps": -1}}, "eps must be a positive finite number"),
    ({"config": {"norm_kinds": [["x"]]}}, r"norm_kinds entry \['x'\] is not a \[slot, kind\] pair"),
])
def test_bad_config_values_are_one_line_errors(tmp_path, change, message):
    save_checkpoint(build_model(**TINY), tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    for key, value in change.items():
        if isinstance(value, dict):
            meta[key].update(value)
        else:
            meta[key] = value
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=message) as error:
        load_model(str(tmp_path))
    assert "\n" not in str(error.value) and "config.json" in str(error.value)
