"""LN removal as the paper does it, on zoo models and GPT-2 bridges, and the eps = 1e12 export."""
import math

import pytest
import torch

from normlens.models import build_model, norm_modules
from normlens.models.ln_removal import (FIRST_POSITION, LNRemovalConfig, LNRemovalError, apply_removal_stage,
                                        calibrate_frozen_std, fake_layernorm_copy, remaining_layernorms,
                                        remove_layernorm, removal_stages)
from normlens.models.norms import FrozenStdLayerNorm
from normlens.train import TrainConfig, train

TINY = dict(n_layers=2, d_model=16, n_heads=2, n_ctx=16)
QUICK = LNRemovalConfig(warmup_steps=2, steps_per_removal=2, final_steps=1, batch_size=4, eval_seqs=4)


def _token_std(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Reference per-token std sqrt(var + eps), float64: (..., pos)."""
    return (x.double().var(-1, unbiased=False) + eps).sqrt()


def test_staged_removal_follows_the_paper_and_beats_nothing_silently(embedded_splits):
    model = build_model(**TINY)
    train(model, embedded_splits, TrainConfig(steps=20), progress=False)
    before = [t.clone() for t in model.parameters()]
    removed, result = remove_layernorm(model, embedded_splits, QUICK, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the source is untouched
    assert remaining_layernorms(model) == ["blocks.0.ln1", "blocks.0.ln2", "blocks.1.ln1", "blocks.1.ln2", "ln_final"]
    assert remaining_layernorms(removed) == []
    # the literal schedule: warm-up 2 steps, then one stage every 2 steps in the paper's order
    assert result.schedule == [
        (2, "blocks.0.ln2"), (4, "blocks.1.ln2"), (6, "blocks.0.ln1.qk"), (8, "blocks.1.ln1.qk"),
        (10, "blocks.0.ln1.v"), (12, "blocks.1.ln1.v"), (14, "ln_final"), (16, FIRST_POSITION)]
    assert result.steps == list(range(19)) and len(result.control_train_loss) == 19  # 2 + 8 stages x 2 + 1
    # independent check: every norm is affine in its input on both paths
    x = torch.randn(2, 5, 16)
    for norm in norm_modules(removed).values():
        assert isinstance(norm, FrozenStdLayerNorm)
        torch.testing.assert_close(norm(3 * x) - norm.bias, 3 * (norm(x) - norm.bias), rtol=1e-5, atol=1e-5)
    assert set(result.frozen_std_value) == {"blocks.0.ln1", "blocks.1.ln1"}
    assert result.frozen_std_value["blocks.0.ln1"] != result.frozen_std["blocks.0.ln1"]  # tracked longer
    # the control: same steps with LayerNorm kept; the gap is measured against it
    assert result.val_loss_control != result.val_loss_before  # the control did train
    assert abs(result.val_loss_control - result.val_loss_before) < 0.5


def test_calibration_is_the_mean_per_token_std(embedded_splits):
    from normlens.data import token_windows

    model = build_model(**TINY)
    train(model, embedded_splits, TrainConfig(steps=10), progress=False)
    tokens = token_windows(embedded_splits.train, n_seq=6, n_ctx=16, seed=3)
    fake = fake_layernorm_copy(model)
    calibrate_frozen_std(fake, tokens)
    _, cache = model.run_with_cache(tokens)  # the original LayerNorm model, measured directly
    for slot, norm in norm_modules(fake).items():
        std = _token_std(cache[f"{slot}.hook_in"], 1e-5)  # (batch, pos)
        assert float(norm.std) == pytest.approx(std[:, 1:].mean().item(), rel=1e-6)
        assert float(norm.std_value) == pytest.approx(std[:, 1:].mean().item(), rel=1e-6)
        assert float(norm.std_first) == pytest.approx(std[:, 0].mean().item(), rel=1e-6)


def test_each_stage_freezes_what_it_names_and_position_0_stays_live_until_its_stage():
    """Walk the stages; after each, compare every divisor with the token's own std or the frozen one."""
    torch.manual_seed(0)
    model = build_model(**TINY)
    fake = fake_layernorm_copy(model).eval()
    norms = norm_modules(fake)
    for i, norm in enumerate(norms.values()):
        norm.std.fill_(1.5 + i)  # distinct frozen values, far from the live ones
        norm.std_value.fill_(3.5 + i)
    tokens = torch.randint(0, 256, (2, 16))
    frozen_qk, frozen_v, first_frozen = set(), set(), False
    stages = removal_stages(fake)
    assert stages == ["blocks.0.ln2", "blocks.1.ln2", "blocks.0.ln1.qk", "blocks.1.ln1.qk", "blocks.0.ln1.v",
                      "blocks.1.ln1.v", "ln_final", FIRST_POSITION]
    for stage in [None] + stages:
        if stage is not None:
            apply_removal_stage(fake, stage)
            if stage == FIRST_POSITION:
                first_frozen = True
            elif stage.endswith(".v"):
                frozen_v.add(stage[:-2])
            else:
                frozen_qk.add(stage.removesuffix(".qk"))
                if not stage.endswith(".qk"):
                    frozen_v.add(stage)
        _, cache = fake.run_with_cache(tokens)
        for slot, norm in norms.items():
            x = cache[f"{slot}.hook_in"]
            own = _token_std(x, norm.eps)  # (batch, pos)
            for path, frozen, value in (("qk", frozen_qk, norm.std), ("v", frozen_v, norm.std_value)):
                if path == "v":
                    if not slot.endswith("ln1"):
                        continue
                    layer = slot.split(".")[1]
                    v_in = cache[f"blocks.{layer}.attn.v.hook_in"].double()  # the value projection's input
                    centred = x.double() - x.double().mean(-1, keepdim=True)
                    divisor = centred * norm.weight.double() / (v_in - norm.bias.double())  # (b, pos, d)
                    divisor = divisor.median(-1).values
                else:
                    divisor = cache[f"{slot}.hook_scale"].double()[..., 0]
                expected = own.clone()
                if slot in frozen:
                    expected[:, 1:] = float(value)
                    if first_frozen:
                        expected[:, 0] = float(value)
                torch.testing.assert_close(divisor, expected, rtol=1e-4, atol=1e-5,
                                           msg=f"{slot} {path} after stage {stage}")
        assert remaining_layernorms(fake) == ([] if first_frozen else sorted(norms))


def test_post_ln_blocks_remove_ln1_in_one_stage(embedded_splits):
    """Post-LN blocks end in a norm, so the final slot is empty and ln1 feeds everything: no value stage."""
    model = build_model(placement="post", **TINY)
    removed, result = remove_layernorm(model, embedded_splits, QUICK.__class__(
        warmup_steps=1, steps_per_removal=1, final_steps=1, batch_size=2, eval_seqs=2, control=False),
        progress=False)
    assert [stage for _, stage in result.schedule] == [
        "blocks.0.ln2", "blocks.1.ln2", "blocks.0.ln1", "blocks.1.ln1", FIRST_POSITION]
    assert remaining_layernorms(removed) == [] and "ln_final" not in result.frozen_std
    assert result.frozen_std_value == {} and result.val_loss_control != result.val_loss_control  # nan: no control


def test_removal_refuses_models_without_layernorm(embedded_splits):
    with pytest.raises(LNRemovalError, match="needs a LayerNorm model"):
        remove_layernorm(build_model(norm="rms", **TINY), embedded_splits)
    with pytest.raises(ValueError, match="steps_per_removal must be an integer >= 1"):
        LNRemovalConfig(steps_per_removal=0)


def test_removed_zoo_model_saves_and_loads_with_its_value_divisor(tmp_path):
    from safetensors.torch import load_file, save_file

    from normlens.models.checkpoint import load_checkpoint, save_checkpoint

    fake = fake_layernorm_copy(build_model(**TINY))
    for stage in removal_stages(fake):
        apply_removal_stage(fake, stage)
    norm_modules(fake)["blocks.1.ln1"].std_value.fill_(2.5)
    save_checkpoint(fake, tmp_path / "ck")
    tokens = torch.randint(0, 256, (2, 16))
    loaded = load_checkpoint(tmp_path / "ck")
    assert torch.equal(loaded(tokens), fake(tokens))
    assert float(norm_modules(loaded)["blocks.1.ln1"].std_value) == 2.5
    # a checkpoint written before the value path existed loads with value divisor = output divisor
    weights = load_file(str(tmp_path / "ck" / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.endswith(("std_value", "live_value"))},
              str(tmp_path / "ck" / "model.safetensors"))
    old = load_checkpoint(tmp_path / "ck")
    assert float(norm_modules(old)["blocks.1.ln1"].std_value) == float(norm_modules(old)["blocks.1.ln1"].std)


@pytest.mark.parametrize("placement", ["pre", "scaled"])
def test_zoo_lnfree_export_reloads_with_the_same_logits(tmp_path, placement, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from normlens.models.export import export_lnfree
    from normlens.models.loading import load_model

    model = build_model(norm="lnfree", placement=placement, act_fn="relu", **TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for i, norm in enumerate(norm_modules(model).values()):
            norm.std.fill_(0.5 + i)
            norm.std_value.fill_(0.8 + 0.5 * i)
    export_lnfree(model, tmp_path / "hf")
    reloaded = load_model(str(tmp_path / "hf"))
    tokens = torch.randint(0, 256, (3, 16))
    assert reloaded.normlens_ln_free
    torch.testing.assert_close(reloaded(tokens), model(tokens), rtol=1e-4, atol=1e-5)
    config = __import__("json").loads((tmp_path / "hf" / "config.json").read_text())
    assert config["layer_norm_epsilon"] == 1e12


def test_export_refuses_what_it_cannot_write(tmp_path):
    from normlens.models.export import ExportError, export_lnfree

    live = fake_layernorm_copy(build_model(**TINY))
    with pytest.raises(ExportError, match="still divide by the token's own std; finish LN removal"):
        export_lnfree(live, tmp_path / "a")
    with pytest.raises(ExportError, match="Post-LN"):
        export_lnfree(build_model(norm="lnfree", placement="post", **TINY), tmp_path / "b")
    with pytest.raises(ExportError, match="hold no frozen-std LayerNorm"):
        export_lnfree(build_model(norm="dyt", **TINY), tmp_path / "c")


def test_gpt2_bridge_removal_control_and_export_round_trip(tmp_path, monkeypatch):
    """The paper's procedure on a GPT-2-config model with its own tokenizer, then eps = 1e12 export."""
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NORMLENS_CACHE_DIR", str(tmp_path / "cache"))
    from hf_stand_in import byte_bpe_tokenizer, save_gpt2

    from normlens.data import corpus_for_model, eval_windows
    from normlens.models.export import export_lnfree
    from normlens.models.loading import load_model

    folder = save_gpt2(tmp_path / "gpt2", byte_bpe_tokenizer(), n_layer=2, n_embd=32, n_head=4)
    model = load_model(str(folder))
    splits = corpus_for_model(model, max_bytes=60_000)
    removed, result = remove_layernorm(model, splits, QUICK, progress=False)
    assert [stage for _, stage in result.schedule] == removal_stages(removed) == [
        "blocks.0.ln2", "blocks.1.ln2", "blocks.0.ln1.qk", "blocks.1.ln1.qk", "blocks.0.ln1.v",
        "blocks.1.ln1.v", "ln_final", FIRST_POSITION]
    assert remaining_layernorms(removed) == [] and len(remaining_layernorms(model)) == 5
    assert math.isfinite(result.val_loss_control) and result.val_loss_control != result.val_loss_before
    tokens = eval_windows(splits, n_seq=3, n_ctx=32, seed=1)
    # hook_scale of a removed slot reports the divisor in use, not the token's std
    _, cache = removed.run_with_cache(tokens)
    torch.testing.assert_close(cache["ln_final.hook_scale"], torch.full_like(cache["ln_final.hook_scale"],
                                                                               result.frozen_std["ln_final"]))
    export_lnfree(removed, tmp_path / "lnfree")
    reloaded = load_model(str(tmp_path / "lnfree"))
    assert reloaded.normlens_ln_free and remaining_layernorms(reloaded) == []
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens), removed(tokens), rtol=1e-4, atol=1e-4)
    assert torch.equal(corpus_for_model(reloaded, max_bytes=60_000).val, splits.val)  # the tokenizer came along
