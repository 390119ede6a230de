import math

import pytest
import torch

import normlens.train as train_module
from normlens.models import build_model
from normlens.models.checkpoint import load_checkpoint, model_tensors
from normlens.io import as_json_value
from normlens.train import TrainConfig, train

TINY = dict(n_layers=1, d_model=16, n_heads=2, n_ctx=16)


def test_training_lowers_validation_loss(embedded_splits):
    model = build_model(**TINY)
    result = train(model, embedded_splits, TrainConfig(steps=40, eval_every=20, lr=1e-2), progress=False)
    assert result.val_loss[-1] < result.val_loss[0] < math.log(256) + 0.5
    assert not result.diverged and not model.training
    assert len(result.steps) == 40 and result.val_steps == [20, 40]


def test_schedule_warms_up_then_decays_to_floor():
    config = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert config.lr_at(0) == pytest.approx(0.1)
    assert config.lr_at(9) == pytest.approx(1.0)
    assert config.lr_at(10) == pytest.approx(1.0)
    assert config.lr_at(100) == pytest.approx(0.1)
    lrs = [config.lr_at(s) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_divergence_is_recorded_not_raised(embedded_splits):
    model = build_model(norm="none", **TINY)
    with torch.no_grad():  # an overflowing weight: the loss becomes non-finite mid-run
        model.blocks[0].mlp.out.original_component.weight.mul_(1e38)
    result = train(model, embedded_splits, TrainConfig(steps=30, warmup_steps=0), progress=False)
    assert result.diverged and result.diverged_step is not None and result.diverged_step < 30
    assert not math.isfinite(result.train_loss[-1])
    assert len(result.steps) == result.diverged_step + 1


def test_interrupted_run_resumes_to_identical_weights(embedded_splits, tmp_path, monkeypatch):
    config = TrainConfig(steps=12, eval_every=4, checkpoint_every=4)
    reference = build_model(**TINY)
    train(reference, embedded_splits, config, progress=False)

    real_windows = train_module.token_windows
    calls = {"n": 0}

    def crash_after_ten(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 10:  # one call per step (the validation windows come from eval_windows)
            raise KeyboardInterrupt
        return real_windows(*args, **kwargs)

    monkeypatch.setattr(train_module, "token_windows", crash_after_ten)
    with pytest.raises(KeyboardInterrupt):
        train(build_model(**TINY), embedded_splits, config, checkpoint_dir=tmp_path, progress=False)
    monkeypatch.setattr(train_module, "token_windows", real_windows)
    resumed = build_model(**TINY)
    result = train(resumed, embedded_splits, config, checkpoint_dir=tmp_path, progress=False)
    assert result.steps == list(range(12))
    for (name, a), b in zip(model_tensors(reference).items(), model_tensors(resumed).values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    saved = load_checkpoint(tmp_path / "model")
    tokens = torch.randint(0, 256, (2, 16))
    assert torch.equal(saved(tokens), resumed(tokens))


def test_resume_into_another_model_is_refused(embedded_splits, tmp_path):
    config = TrainConfig(steps=4, checkpoint_every=2, eval_every=2)
    model = build_model(**TINY)
    train(model, embedded_splits, TrainConfig(steps=8, checkpoint_every=2, eval_every=2),
          checkpoint_dir=tmp_path, progress=False)
    (tmp_path / "train_result.json").unlink()
    with pytest.raises(ValueError, match="written for another model"):
        train(build_model(norm="dyt", **TINY), embedded_splits, config, checkpoint_dir=tmp_path,
              progress=False)


def test_resume_with_other_training_settings_is_refused(embedded_splits, tmp_path):
    train(build_model(**TINY), embedded_splits, TrainConfig(steps=4, checkpoint_every=2, eval_every=2),
          checkpoint_dir=tmp_path, progress=False)
    assert train_module.saved_state_mismatch(tmp_path, build_model(**TINY).normlens_config,
                                             TrainConfig(steps=4, checkpoint_every=2, eval_every=2)) is None
    with pytest.raises(ValueError, match="other training settings"):
        train(build_model(**TINY), embedded_splits, TrainConfig(steps=4, checkpoint_every=2, eval_every=2, lr=1e-2),
              checkpoint_dir=tmp_path, progress=False)


@pytest.mark.parametrize("changes, match", [
    (dict(lr=float("inf")), "lr must be a finite number"),
    (dict(lr=float("nan")), "lr must be a finite number"),
    (dict(lr=0.0), "lr must be positive"),
    (dict(betas=(2, 2)), r"betas must be two numbers in \[0, 1\)"),
    (dict(betas=(0.9,)), "betas must be two numbers"),
    (dict(min_lr_ratio=-5), r"min_lr_ratio must lie in \[0, 1\]"),
    (dict(weight_decay=-0.1), "weight_decay must be >= 0"),
    (dict(grad_clip=float("nan")), "grad_clip must be a finite number"),
    (dict(steps=1.5), "steps must be an integer >= 1"),
    (dict(eval_seqs=0), "eval_seqs must be an integer >= 1"),
    (dict(seed=True), "seed must be an integer"),
])
def test_absurd_training_settings_are_one_line_errors(changes, match):
    with pytest.raises(train_module.TrainConfigError, match=match) as error:
        TrainConfig(**changes)
    assert "\n" not in str(error.value)


def test_config_round_trips_through_json():
    config = TrainConfig(steps=7, betas=[0.8, 0.9], eval_seed=3)
    assert config.betas == (0.8, 0.9)
    assert TrainConfig.from_dict(as_json_value(config.to_dict())) == config
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"n_steps": 3})


def test_evaluation_set_is_independent_of_the_training_seed(embedded_splits, monkeypatch):
    seen = []
    real = train_module.evaluate
    monkeypatch.setattr(train_module, "evaluate", lambda model, tokens: seen.append(tokens) or real(model, tokens))
    for config in (TrainConfig(steps=1, seed=0), TrainConfig(steps=1, seed=1), TrainConfig(steps=1, eval_seed=1)):
        train(build_model(**TINY), embedded_splits, config, progress=False)
    assert seen[0].shape == (128, TINY["n_ctx"])  # the default evaluation set: 128 windows
    assert torch.equal(seen[0], seen[1])  # another training seed, the same evaluation tokens
    assert not torch.equal(seen[0], seen[2])  # the evaluation set has its own seed
    # every window is a stretch of the validation split
    val = embedded_splits.val
    for row in seen[0][:4]:
        starts = (val[: val.numel() - TINY["n_ctx"] + 1] == row[0]).nonzero().ravel()
        assert any(torch.equal(val[s:s + TINY["n_ctx"]], row) for s in starts.tolist())


def test_result_records_data_and_evaluation_set(embedded_splits):
    result = train(build_model(**TINY), embedded_splits, TrainConfig(steps=2, eval_seqs=4, eval_seed=5),
                   progress=False)
    assert result.train_config["eval_seed"] == 5 and result.train_config["eval_seqs"] == 4
    assert result.data["name"] == embedded_splits.name and len(result.data["sha256"]) == 64
    assert result.data["n_val_tokens"] == embedded_splits.val.numel()


def test_bad_train_arguments_are_refused_before_training(embedded_splits, tmp_path):
    model = build_model(**TINY)
    with pytest.raises(ValueError, match="keep_checkpoints needs a checkpoint_dir"):
        train(model, embedded_splits, TrainConfig(steps=4), keep_checkpoints=[2], progress=False)
    with pytest.raises(ValueError, match=r"keep_checkpoints must be steps in \[0, 4\]"):
        train(model, embedded_splits, TrainConfig(steps=4), keep_checkpoints=[5], checkpoint_dir=tmp_path,
              progress=False)
    with pytest.raises(ValueError, match="TrainingProbe instances"):
        train(model, embedded_splits, TrainConfig(steps=4), probes=["entropy"], progress=False)
