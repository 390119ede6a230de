"""The CLI's verbs and errors, the HTML report, and a miniature demo."""
import dataclasses
import re

import pandas as pd
import pytest
from typer.testing import CliRunner

from normlens.cli import app
from normlens.report import ReportSection, Table, render_html

runner = CliRunner()


def test_help_lists_verbs():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for verb in ("train", "demo", "remove-ln", "probe", "hessian", "landscape"):
        assert re.search(rf"^\W*{re.escape(verb)}\s", result.output, re.M), verb  # a command row


@pytest.mark.parametrize("args,message", [
    (["train", "--heads", "5"], "does not divide d_model"),
    (["train", "--norm", "batchnorm"], "unknown norm kind"),
    (["train", "--data", "/no/such/file.txt"], "does not exist"),
    (["remove-ln", "/no/such/checkpoint"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    result = runner.invoke(app, args + (["--out", str(tmp_path / "o")] if args[0] == "train" else []))
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_train_then_remove_ln(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    result = runner.invoke(app, ["train", "--steps", "6", "--layers", "1", "--d-model", "16", "--n-ctx", "16",
                                 "--data", str(text), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    result = runner.invoke(app, ["remove-ln", str(tmp_path / "run" / "model"), "--data", str(text),
                                 "--out", str(tmp_path / "free")])
    assert result.exit_code == 0, result.output
    assert "LN-free checkpoint" in result.output


def test_report_is_self_contained_and_escaped():
    section = ReportSection(title="<script>x</script>", summary="a < b",
                            tables=[Table("t", pd.DataFrame({"model": ["<b>"], "loss": [1.23456]}))])
    page = render_html([section], title="T")
    assert "<script>x" not in page and "&lt;script&gt;" in page
    assert "1.235" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)


def test_miniature_demo_writes_report_with_all_models(tmp_path):
    from normlens.demo import LN_REMOVED, DemoConfig, run_demo
    from normlens.models import ZooConfig
    from normlens.models.ln_removal import LNRemovalConfig
    from normlens.train import TrainConfig

    config = DemoConfig(model=ZooConfig(n_layers=1, d_model=16, n_heads=2, n_ctx=16),
                        train=TrainConfig(steps=6, eval_every=3),
                        removal=LNRemovalConfig(warmup_steps=1, steps_per_removal=1, final_steps=1),
                        eval_seqs=4, out=tmp_path / "demo.html")

    def failing_section(study):
        raise RuntimeError("boom")

    def model_names_section(study):
        return ReportSection(title="Models seen", notes=sorted(study.models))

    path = run_demo(config, sections={"names": model_names_section, "broken": failing_section},
                    log=lambda _: None)
    page = path.read_text()
    for name in ("ln", "rms", "dyt", "none", LN_REMOVED):
        assert f"<li>{name}</li>" in page
    assert "broken (failed)" in page and "boom" in page  # a failed analysis is shown, the rest kept
    assert (tmp_path / "demo_data" / "training.json").is_file()
    models = tmp_path / "demo_data" / "models"

    def mtimes():
        return {name: (models / name / "model" / "model.safetensors").stat().st_mtime_ns
                for name in ("ln", "ln-removed")}

    # a second run reuses the trained and the LN-removed models instead of training again
    first = mtimes()
    run_demo(dataclasses.replace(config), sections={}, log=lambda _: None)
    assert mtimes() == first
    # a retrained "ln" model (another training seed) is not paired with the old LN removal
    run_demo(dataclasses.replace(config, train=dataclasses.replace(config.train, seed=1)), sections={},
             log=lambda _: None)
    again = mtimes()
    assert again["ln"] != first["ln"] and again["ln-removed"] != first["ln-removed"]
