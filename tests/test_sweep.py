"""Sweeps over seeds and a grid: resumable per-run folders, differences paired by seed."""
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import normlens.train as train_module
from normlens.models import ZooConfig
from normlens.sweep import SweepConfig, SweepError, SweepResult, run_sweep
from normlens.train import TrainConfig, load_train_result

MODEL = ZooConfig(n_layers=1, d_model=16, n_heads=2, n_ctx=16)
TRAIN = TrainConfig(steps=4, eval_every=2, eval_seqs=4, checkpoint_every=2)


def small_sweep(**changes):
    return SweepConfig(**{"model": MODEL, "train": TRAIN, "seeds": (0, 1), "grid": {"norm": ("ln", "none")},
                          **changes})


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    return out, run_sweep(small_sweep(), out, progress=False, log=lambda _: None)


def test_every_cell_and_seed_trains_in_its_own_folder(swept):
    out, result = swept
    assert list(result.runs.cell) == ["norm=ln", "norm=ln", "norm=none", "norm=none"]
    assert list(result.runs.seed) == [0, 1, 0, 1]
    for row in result.runs.itertuples():
        saved = load_train_result(out / row.folder / "train_result.json")
        assert saved.model_config["norm"] == row.norm
        assert saved.model_config["seed"] == row.seed and saved.train_config["seed"] == row.seed
        assert saved.train_config["eval_seed"] == TRAIN.eval_seed  # one evaluation set for all runs
        assert saved.final_val_loss == row.final_val_loss
    assert len({r.data["sha256"] for r in (load_train_result(out / f / "train_result.json")
                                           for f in result.runs.folder)}) == 1  # one split for all runs


def test_paired_difference_is_the_mean_over_seeds_of_the_same_seed_difference(swept):
    _, result = swept
    table = result.paired_differences()
    runs = result.runs.set_index(["cell", "seed"]).final_val_loss
    expected = np.mean([runs[("norm=none", s)] - runs[("norm=ln", s)] for s in (0, 1)])
    row = table.iloc[0]
    assert row.cell == "norm=none" and row.baseline == "norm=ln" and row.n_pairs == 2
    assert row.estimate == pytest.approx(expected, abs=1e-12)
    assert row.low <= row.estimate <= row.high


def test_a_finished_sweep_is_not_recomputed(swept, monkeypatch):
    out, first = swept
    monkeypatch.setattr(train_module, "next_token_loss", lambda *a: pytest.fail("a finished run trained again"))
    again = run_sweep(small_sweep(), out, progress=False, log=lambda _: None)
    pd.testing.assert_frame_equal(again.runs.drop(columns="wall_time_s"), first.runs.drop(columns="wall_time_s"))
    assert SweepResult.load(out).runs.final_val_loss.tolist() == first.runs.final_val_loss.tolist()


class Killed(BaseException):
    pass


def test_an_interrupted_sweep_resumes_to_the_same_numbers(swept, tmp_path, monkeypatch):
    _, reference = swept
    real = train_module.token_windows
    calls = {"n": 0}

    def die(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 4 + 3:  # the first run, then three steps of the second (after its step-2 commit)
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "token_windows", die)
    with pytest.raises(Killed):
        run_sweep(small_sweep(), tmp_path, progress=False, log=lambda _: None)
    monkeypatch.setattr(train_module, "token_windows", real)
    resumed = run_sweep(small_sweep(), tmp_path, progress=False, log=lambda _: None)
    assert resumed.runs.final_val_loss.tolist() == reference.runs.final_val_loss.tolist()


def test_pairs_are_matched_by_seed_and_diverged_runs_left_out():
    rows = [{"norm": "ln", "cell": "norm=ln", "seed": s, "final_val_loss": v, "diverged": False}
            for s, v in zip(range(5), [2.0, 2.1, 2.2, 2.3, 2.4])]
    rows += [{"norm": "rms", "cell": "norm=rms", "seed": s, "final_val_loss": v, "diverged": math.isnan(v)}
             for s, v in zip([4, 3, 2, 1, 0], [2.9, math.nan, 2.5, 2.15, 2.05])]  # shuffled seeds, one NaN
    result = SweepResult(("norm",), pd.DataFrame(rows))
    row = result.paired_differences(baseline={"norm": "ln"}).iloc[0]
    assert row.n_pairs == 4 and row.n_seeds == 5
    assert row.estimate == pytest.approx(np.mean([0.05, 0.05, 0.3, 0.5]))
    summary = result.cell_summary().set_index("cell")
    assert summary.loc["norm=rms", "n_diverged"] == 1 and summary.loc["norm=ln", "estimate"] == pytest.approx(2.2)
    with pytest.raises(SweepError, match="baseline 'norm=dyt' is not a cell"):
        result.paired_differences(baseline={"norm": "dyt"})


@pytest.mark.parametrize("changes, match", [
    (dict(grid={"colour": ("red",)}), "grid field 'colour' is not a ZooConfig or TrainConfig field"),
    (dict(grid={"seed": (0, 1)}), "swept by seeds"),
    (dict(grid={"n_heads": (2, 3)}), "grid cell n_heads=3 is not a valid configuration"),
    (dict(grid={"lr": (float("inf"),)}), "lr must be a finite number"),
    (dict(seeds=(0, 0)), "seeds must be distinct"),
    (dict(seeds=()), "seeds must be non-negative integers"),
])
def test_bad_sweeps_are_refused_before_training(changes, match):
    with pytest.raises(SweepError, match=match):
        small_sweep(**changes)


def test_a_folder_of_another_sweep_is_refused(swept):
    out, _ = swept
    with pytest.raises(SweepError, match=r"other shared settings \(train\)"):
        run_sweep(small_sweep(train=TRAIN.replace(lr=1e-2)), out, progress=False, log=lambda _: None)


def test_grid_cells_mix_model_and_training_fields():
    config = small_sweep(grid={"norm": ("ln", "rms"), "lr": (1e-3, 3e-3)})
    assert len(config.cells()) == 4
    model, train = config.configs({"norm": "rms", "lr": 1e-3}, seed=5)
    assert model.norm == "rms" and model.seed == 5 and train.lr == 1e-3 and train.seed == 5


def test_sweep_command(tmp_path):
    from normlens.cli import app

    runner = CliRunner()
    args = ["sweep", "--grid", "norm=ln,rms", "--seeds", "0,1", "--layers", "1", "--d-model", "16", "--heads", "2",
            "--n-ctx", "16", "--steps", "3", "--eval-seqs", "4", "--out", str(tmp_path / "s")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "mean difference" in result.output and "norm=rms" in result.output
    bad = runner.invoke(app, args[:2] + ["norm=ln,batchnorm"] + args[3:])
    assert bad.exit_code == 2 and "unknown norm kind" in bad.output
    bad = runner.invoke(app, ["sweep", "--grid", "layers", "--out", str(tmp_path / "t")])
    assert bad.exit_code == 2 and "FIELD=V1,V2" in bad.output
