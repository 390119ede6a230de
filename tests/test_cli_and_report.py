"""The CLI's verbs and errors, the HTML report, and a miniature demo."""
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
    for verb in ("train", "demo", "analyze", "report", "remove-ln", "probe", "hessian", "landscape"):
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
