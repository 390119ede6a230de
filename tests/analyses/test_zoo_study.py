"""The zoo study: names in words, reuse with the original training time, a computed verdict,
failed analyses shown, and a report that re-renders byte for byte."""
import dataclasses
import json
import re
import shutil

import pytest
from typer.testing import CliRunner

from analyses.common.curvature import HessianSettings
from analyses.common.landscape import LandscapeSettings
from analyses.common.probes import ProbeSettings
from analyses.common.names import LABELS
from analyses.common.zoo_models import ZooSettings
from analyses.zoo import STUDY, ZooModeSettings, ZooStudy, zoo_verdict
from normlens.cli import app
from normlens.models import ZooConfig
from normlens.models.ln_removal import LNRemovalConfig
from normlens.study import Study, StudyConfig, discover_studies, rerender, run_study
from normlens.train import TrainConfig

TINY = ZooModeSettings(
    ZooSettings(model=ZooConfig(n_layers=1, d_model=16, n_heads=2, n_ctx=16),
                train=TrainConfig(steps=4, eval_every=2, eval_seqs=4, batch_size=4),
                removal=LNRemovalConfig(warmup_steps=1, steps_per_removal=1, final_steps=1, batch_size=4, eval_seqs=4),
                eval_seqs=4),
    ProbeSettings(n_seq=2), HessianSettings(n_seq=2, n_ctx=8, top_k=2, top_steps=5, density_steps=5, block_steps=3),
    LandscapeSettings(resolution=3, n_seq=2))
runner = CliRunner()


def tiny_study(**zoo) -> ZooStudy:
    settings = dataclasses.replace(TINY, zoo=dataclasses.replace(TINY.zoo, **zoo))
    return ZooStudy({"quick": settings, "full": settings})


def quiet(_):
    pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny zoo trained once (training section only); tests copy its models to reuse them."""
    out = tmp_path_factory.mktemp("trained") / "zoo.html"
    run_study(tiny_study(), StudyConfig(options={"analyses": []}), out, log=quiet)
    return out.parent / "zoo_data"


def with_models(trained, folder):
    shutil.copytree(trained / "models", folder / "models")
    return folder


def test_zoo_is_discovered_by_entry_point_and_listed():
    studies = discover_studies()
    assert isinstance(studies["zoo"], Study) and studies["zoo"] is STUDY
    result = runner.invoke(app, ["analyze", "--list"])
    assert result.exit_code == 0 and re.search(r"^zoo\s+LayerNorm, RMSNorm, DyT", result.output, re.M)


@pytest.mark.parametrize("args,message", [
    (["analyze", "no-such-study"], "no study named 'no-such-study'"),
    (["analyze"], "name a study"),
    (["report", "/no/such/folder"], "manifest.json is missing"),
])
def test_bad_study_or_folder_is_one_line_and_exit_2(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_output_that_is_a_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the study ran")

    monkeypatch.setattr(ZooStudy, "run", never)
    result = runner.invoke(app, ["analyze", "zoo", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "is a folder" in result.output


def test_zoo_report_names_models_in_words_shows_failures_and_rerenders_identically(trained, tmp_path, monkeypatch):
    import analyses.common.probes

    with_models(trained, tmp_path / "zoo_data")
    def broken(*args, **kwargs):
        raise RuntimeError("boom <b>")

    monkeypatch.setattr(analyses.common.probes, "run_probes", broken)
    config = StudyConfig(options={"analyses": ["probes", "hessian"]})
    path = run_study(tiny_study(), config, tmp_path / "zoo.html", log=quiet)
    page = path.read_text()
    for label in LABELS.values():
        assert label in page
    assert "probes (failed)" in page and "boom &lt;b&gt;" in page  # a failed analysis is shown, the rest kept
    assert "Hessian spectra" in page and "quick mode" in page and 'class="verdict"' in page
    data = tmp_path / "zoo_data"
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["study"] == "zoo" and manifest["mode"] == "quick" and manifest["report"] == "../zoo.html"
    assert [s["renderer"] for s in manifest["sections"]] == ["training", "failed", "hessian"]
    assert manifest["provenance"]["seeds"]["seed"] == 0 and "torch" in manifest["provenance"]["libraries"]
    assert 'href="./zoo_data/training/training.json"' in page
    again = rerender(data, tmp_path / "again.html", studies={"zoo": tiny_study()})
    assert again.read_bytes() == path.read_bytes()  # the same folder: byte-identical
    assert rerender(data, studies={"zoo": tiny_study()}) == path and path.read_text() == page  # in place


def test_rerun_reuses_models_and_shows_their_original_training_time(trained, tmp_path):
    config = StudyConfig(options={"analyses": []})
    first = json.loads((trained / "training/seeds.json").read_text())["runs"]
    assert len(first) == 15 and not any(r["reused"] for r in first)  # 4 norms x 3 seeds, 3 LN removals
    models = with_models(trained, tmp_path / "zoo_data") / "models"

    def removal_mtimes():
        return {s: (models / "ln-removed" / f"seed-{s}" / "model" / "model.safetensors").stat().st_mtime_ns
                for s in (0, 1, 2)}

    before = removal_mtimes()
    page = run_study(tiny_study(), config, tmp_path / "zoo.html", log=quiet).read_text()
    again = json.loads((tmp_path / "zoo_data/training/seeds.json").read_text())["runs"]
    assert all(r["reused"] for r in again) and removal_mtimes() == before
    assert [r["train_seconds"] for r in again] == [r["train_seconds"] for r in first]  # the original times
    reused = {m["name"]: m for m in json.loads((tmp_path / "zoo_data/training/training.json").read_text())["models"]}
    saved = json.loads((models / "sweep/runs/norm-ln/seed-0/train_result.json").read_text())["wall_time_s"]
    assert all(m["reused"] for m in reused.values()) and reused["ln"]["train_seconds"] == saved > 0
    assert "earlier run (reused)" in page and f"{saved:.4g}" in page

    # another study seed splits the corpus differently: every "ln" model is retrained, and an LN removal
    # of a model with other weights (same configuration) is not reused
    run_study(tiny_study(norms=("ln",)), dataclasses.replace(config, seed=1), tmp_path / "zoo.html", log=quiet)
    seeds = json.loads((tmp_path / "zoo_data/training/seeds.json").read_text())
    assert seeds["seeds"] == [1, 2, 3] and not any(r["reused"] for r in seeds["runs"])
    after = removal_mtimes()
    assert after[1] != before[1] and after[2] != before[2]
    assert not (models / "sweep" / "runs" / "norm-rms").exists()  # the stale sweep was cleared

    # --fresh retrains even what is saved
    run_study(tiny_study(norms=("ln",), n_seeds=1), dataclasses.replace(config, seed=1, fresh=True),
              tmp_path / "zoo.html", log=quiet)
    seeds = json.loads((tmp_path / "zoo_data/training/seeds.json").read_text())
    assert seeds["seeds"] == [1] and not any(r["reused"] for r in seeds["runs"])


def test_verdict_of_a_one_seed_results_folder_is_computed_from_the_saved_numbers(tmp_path):
    """Results written before the seed sweep (no seeds.json) still get their verdict on re-rendering."""
    folder = tmp_path / "training"
    folder.mkdir()

    def write(ln, dyt, before, after):
        models = [{"name": "ln", "final_val_loss": ln}, {"name": "dyt", "final_val_loss": dyt}]
        (folder / "training.json").write_text(json.dumps({"models": models, "runs": []}))
        (folder / "ln_removal.json").write_text(json.dumps({"val_loss_before": before, "val_loss_after": after}))
        return zoo_verdict(tmp_path)

    agree = write(2.00, 2.02, 2.00, 2.03)
    assert "0.020 nats above LayerNorm" in agree and "parity holds" in agree and "+0.030 nats, within" in agree
    assert "one seed, no interval" in agree
    disagree = write(2.00, 2.50, 2.00, 2.40)
    assert "parity does not hold" in disagree and "+0.400 nats, more than" in disagree


def test_demo_command_runs_the_zoo_study(trained, tmp_path, monkeypatch):
    import normlens.study

    with_models(trained, tmp_path / "demo_data")
    import analyses.zoo

    monkeypatch.setattr(normlens.study, "find_study", lambda name, studies=None: tiny_study())
    monkeypatch.setattr(analyses.zoo, "ANALYSES", ("hessian",))  # the demo runs them all; one is enough here
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo.html"), "--steps", "4"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "demo_data" / "manifest.json").read_text())
    assert manifest["study"] == "zoo" and manifest["provenance"]["config"]["zoo"]["train"]["steps"] == 4
    page = (tmp_path / "demo.html").read_text()
    assert "LayerNorm removed by fine-tuning" in page and "normlens analyze zoo · quick mode" in page


def test_a_broken_third_party_study_does_not_hide_the_others(monkeypatch):
    from importlib.metadata import EntryPoint

    import normlens.study

    real = normlens.study.entry_points
    broken = EntryPoint(name="broken", value="no_such_package.study:STUDY", group="normlens.studies")
    monkeypatch.setattr(normlens.study, "entry_points", lambda group: [*real(group=group), broken])
    rows = dict(normlens.study.list_studies())
    assert rows["zoo"] == STUDY.description and rows["broken"].startswith("(unusable)")
    assert normlens.study.find_study("zoo") is STUDY
    result = runner.invoke(app, ["analyze", "broken"])
    assert result.exit_code == 2 and "failed to import: ModuleNotFoundError" in result.output
