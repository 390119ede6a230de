"""The Hugging Face path, on locally built GPT-2 stand-ins (no network)."""
import pytest
import torch
import torch.nn as nn

transformers = pytest.importorskip("transformers")

from normlens.models.loading import is_ln_free, load_hf_model, load_model  # noqa: E402


def _gpt2(eps=1e-5):
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=32, vocab_size=64,
                                     layer_norm_epsilon=eps)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_gpt2_stand_in_logits_match(tmp_path):
    hf = _gpt2()
    hf.save_pretrained(tmp_path)
    bridge = load_model(str(tmp_path))
    tokens = torch.randint(0, 64, (2, 10))
    torch.testing.assert_close(bridge(tokens), hf(tokens).logits, rtol=1e-4, atol=1e-4)
    assert not bridge.normlens_ln_free


def test_ln_free_checkpoint_with_huge_eps(tmp_path):
    """LN disabled as the released LN-free GPT-2s do: eps = 1e12, gain x 1e6."""
    hf = _gpt2(eps=1e12)
    with torch.no_grad():
        for module in hf.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.mul_(1e6)
    hf.save_pretrained(tmp_path)
    bridge = load_model(str(tmp_path))
    tokens = torch.randint(0, 64, (2, 10))
    expected = hf(tokens).logits
    torch.testing.assert_close(bridge(tokens), expected, rtol=1e-4, atol=1e-3)
    assert bridge.normlens_ln_free and is_ln_free(hf)


def test_layernorms_replaced_by_identity(tmp_path):
    hf = _gpt2()
    hf.save_pretrained(tmp_path)
    for block in hf.transformer.h:
        block.ln_1, block.ln_2 = nn.Identity(), nn.Identity()
    hf.transformer.ln_f = nn.Identity()
    bridge = load_hf_model(str(tmp_path), hf_model=hf)
    tokens = torch.randint(0, 64, (2, 10))
    torch.testing.assert_close(bridge(tokens), hf(tokens).logits, rtol=1e-5, atol=1e-5)
    _, cache = bridge.run_with_cache(tokens)
    assert "blocks.0.hook_resid_post" in cache


def test_missing_local_folder_is_a_clear_error(tmp_path):
    from normlens.models.loading import ModelLoadError

    with pytest.raises(ModelLoadError, match="could not load Hugging Face model"):
        load_hf_model(str(tmp_path / "absent"))


def _break(folder, how):
    import json
    import os
    import pickle

    if how == "truncated safetensors":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:200])
    elif how == "pickle bin":
        os.remove(folder / "model.safetensors")
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"payload": print}))
    elif how == "truncated bin":
        state = transformers.GPT2LMHeadModel.from_pretrained(folder).state_dict()
        os.remove(folder / "model.safetensors")
        torch.save(state, folder / "pytorch_model.bin")
        data = (folder / "pytorch_model.bin").read_bytes()
        (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    elif how == "no format":
        config = json.loads((folder / "config.json").read_text())
        del config["model_type"]
        (folder / "config.json").write_text(json.dumps(config))
    elif how == "nan eps":
        config = json.loads((folder / "config.json").read_text())
        config["layer_norm_epsilon"] = float("nan")
        (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("how,message", [
    ("truncated safetensors", r"could not read '.*model\.safetensors' \(SafetensorError\)"),
    ("pickle bin", r"could not read '.*pytorch_model\.bin' \(UnpicklingError\)"),
    ("truncated bin", r"could not read '.*pytorch_model\.bin'"),
    ("no format", r"config\.json' is neither a normlens checkpoint config .* nor a Hugging Face config"),
    ("nan eps", r"has eps=nan; eps must be a positive finite number"),
])
def test_damaged_hf_folders_are_one_line_errors(tmp_path, how, message):
    from normlens.models.loading import ModelLoadError

    _gpt2().save_pretrained(tmp_path)
    _break(tmp_path, how)
    with pytest.raises(ModelLoadError, match=message) as error:
        load_model(str(tmp_path))
    text = str(error.value)
    assert "\n" not in text and "weights_only" not in text
