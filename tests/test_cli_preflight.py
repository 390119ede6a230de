"""Every verb checks its output location, disk space and absurd options before any work.

"Before any work" is checked by replacing the first expensive step of each
verb (loading the model, the data, the training, the demo) with a function
that fails the test if it is reached.
"""
from __future__ import annotations

import errno
import math
import os
import shutil
from collections import namedtuple

import pytest
from typer.testing import CliRunner

import normlens
import normlens.resources
from normlens.cli import app, common
from normlens.models.checkpoint import save_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ck") / "model"
    save_checkpoint(normlens.build_model(norm="ln", n_layers=1, d_model=16, n_heads=2, n_ctx=16), folder)
    return folder


def _no_work(monkeypatch):
    """Fail the test if any verb starts its work."""

    def reached(*args, **kwargs):
        raise AssertionError("the verb started its work before refusing its options")

    import types

    import normlens.data
    import normlens.models.loading
    import normlens.study
    import normlens.train

    monkeypatch.setattr(normlens.models.loading, "load_model", reached)
    monkeypatch.setattr(normlens.data, "load_corpus", reached)
    monkeypatch.setattr(normlens.data, "load_embedded", reached)
    monkeypatch.setattr(normlens.train, "train", reached)
    study = types.SimpleNamespace(name="zoo", run=reached)  # the demo is the zoo study
    monkeypatch.setattr(normlens.study, "find_study", lambda name, studies=None: study)


def _refused(args, *needles):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _verbs(spec, out):
    return {
        "probe": ["probe", spec, "--out", out],
        "hessian": ["hessian", spec, "--out", out],
        "landscape": ["landscape", spec, "--out", out],
        "train": ["train", "--steps", "1", "--out", out],
        "remove-ln": ["remove-ln", spec, "--out", out],
    }


@pytest.mark.parametrize("verb", ["probe", "hessian", "landscape", "train", "remove-ln"])
def test_an_existing_file_as_out_is_refused_before_work(verb, tmp_path, monkeypatch):
    _no_work(monkeypatch)
    existing = tmp_path / "results.txt"
    existing.write_text("keep me")
    _refused(_verbs(tmp_path / "ck", existing)[verb], str(existing), "is an existing file")
    assert existing.read_text() == "keep me"


def test_a_path_through_a_file_is_refused(tmp_path, monkeypatch):
    _no_work(monkeypatch)
    (tmp_path / "f").write_text("")
    _refused(["probe", "x", "--out", tmp_path / "f" / "sub"], "is a file, not a folder")


def test_demo_out_pointing_at_a_folder_is_refused_before_training(tmp_path, monkeypatch):
    _no_work(monkeypatch)
    _refused(["demo", "--out", tmp_path], "is a folder", "report.html")


@pytest.mark.parametrize("verb", ["probe", "hessian", "landscape", "train", "remove-ln"])
def test_a_read_only_location_is_refused(verb, tmp_path, monkeypatch):
    """The write probe fails as it does on a read-only mount (EROFS), whoever runs the test."""
    _no_work(monkeypatch)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(normlens.resources.tempfile, "mkdtemp", read_only)
    _refused(_verbs(tmp_path / "ck", tmp_path / "new")[verb], "cannot write in", "Read-only file system")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into mode-0500 folders; the EROFS case covers it")
def test_a_folder_without_write_permission_is_refused(tmp_path, monkeypatch):
    _no_work(monkeypatch)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _refused(["probe", "x", "--out", locked / "out"], "cannot write in", "Permission denied")
    finally:
        locked.chmod(0o700)


def test_the_write_probe_leaves_nothing_behind(tmp_path):
    common.check_output_folder(tmp_path / "a" / "b")
    common.check_output_file(tmp_path / "report.html")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("verb", ["probe", "hessian", "landscape", "train", "remove-ln", "demo"])
def test_a_full_disk_is_refused_with_the_estimate(verb, tmp_path, monkeypatch):
    _no_work(monkeypatch)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(normlens.resources.shutil, "disk_usage", lambda path: usage(10 << 20, 10 << 20, 1 << 20))
    args = ["demo", "--out", tmp_path / "demo.html"] if verb == "demo" else _verbs(tmp_path, tmp_path / "o")[verb]
    _refused(args, "1.0 MiB free", "writes about")


def test_free_space_is_compared_with_the_real_disk(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    common.check_free_space(tmp_path, free // 2)
    with pytest.raises(common.PreflightError, match="free some space"):
        common.check_free_space(tmp_path / "new", free * 2)


@pytest.mark.parametrize("value", ["0", "-1"])
def test_memory_mb_must_be_positive(value, tmp_path, monkeypatch):
    _no_work(monkeypatch)
    _refused(["landscape", "x", "--memory-mb", value, "--out", tmp_path / "o"], "--memory-mb", value)


def test_hessian_n_ctx_beyond_the_model_is_refused_like_probe(checkpoint, tmp_path):
    hessian = _refused(["hessian", checkpoint, "--n-ctx", "1000", "--out", tmp_path / "h"])
    probe = _refused(["probe", checkpoint, "--n-ctx", "1000", "--out", tmp_path / "p"])
    assert hessian == probe == "error: --n-ctx 1000 must lie in 2..16 for this model"


def test_hessian_k_beyond_the_parameters_is_refused_before_any_product(checkpoint, tmp_path, monkeypatch):
    import normlens.cli.hessian as cli_hessian

    monkeypatch.setattr(cli_hessian, "run_hessian", lambda *a, **k: pytest.fail("computed"))
    n = sum(p.numel() for p in normlens.models.checkpoint.load_checkpoint(checkpoint).parameters())
    _refused(["hessian", checkpoint, "--k", "100000", "--out", tmp_path / "h"], f"over {n} parameters",
             f"--k <= {n - 1}")
    _refused(["hessian", checkpoint, "--k", str(n // 2 + 1), "--which", "both", "--out", tmp_path / "h"],
             f"--k <= {(n - 1) // 2}")


def test_hessian_k_beyond_the_memory_is_refused_with_the_estimate(checkpoint, tmp_path, monkeypatch):
    import normlens.cli.hessian as cli_hessian

    monkeypatch.setattr(cli_hessian, "run_hessian", lambda *a, **k: pytest.fail("computed"))
    import normlens.resources

    monkeypatch.setattr(normlens.resources, "available_memory", lambda device: 50 << 20)
    n = sum(p.numel() for p in normlens.models.checkpoint.load_checkpoint(checkpoint).parameters())
    steps = min(n, 2 * 400 + 20)
    # the plan compute_eigenpairs makes: the basis plus 2 + max(4, k + 2) working vectors, float32
    need = 4 * n * (steps + 2 + 400 + 2)
    line = _refused(["hessian", checkpoint, "--k", "400", "--out", tmp_path / "h"], f"{steps} vectors x {n:,} float32",
                    "50.0 MiB is available", "lower --k")
    assert normlens.resources.format_bytes(need) in line


@pytest.mark.parametrize("m", ["0", "3"])
def test_trace_matvecs_without_an_error_estimate_are_refused(m, tmp_path, monkeypatch):
    _no_work(monkeypatch)
    _refused(["hessian", "x", "--trace-matvecs", m, "--out", tmp_path / "h"], "--trace-matvecs must be at least 4")


def test_the_smallest_accepted_trace_matvecs_gives_an_error_estimate():
    """Hutch++ with the CLI's minimum m on a matrix larger than its sketch: a finite standard error."""
    import torch

    from normlens.cli.hessian import MIN_TRACE_MATVECS
    from normlens.report.sections.curvature import _plus_minus
    from normlens.curvature.trace import estimate_trace

    result = estimate_trace(torch.diag(torch.arange(1.0, 21.0)) + 0.1 * torch.ones(20, 20), MIN_TRACE_MATVECS)
    assert math.isfinite(result.std_error)
    assert math.isnan(estimate_trace(torch.eye(20), MIN_TRACE_MATVECS - 1).std_error)
    assert _plus_minus(float("nan")) == " (no error estimate)" and _plus_minus(0.5) == " ± 0.5"


def test_hessian_basis_memory_spills_and_gives_the_same_eigenvalues(checkpoint, tmp_path, caplog):
    """--basis-memory-mb 1 keeps 1 MB of each Lanczos basis in memory and memory-maps the rest: the
    eigenvalues equal the in-memory run's, and no spill folder is left behind."""
    import numpy as np

    from normlens.io import read_npz

    _refused(["hessian", checkpoint, "--basis-memory-mb", "-1", "--out", tmp_path / "bad"], "--basis-memory-mb")
    import logging

    caplog.set_level(logging.INFO, logger="normlens.curvature")
    runs, logs = {}, {}
    for name, extra in (("memory", []), ("spilled", ["--basis-memory-mb", "1"])):
        out = tmp_path / name
        caplog.clear()
        result = runner.invoke(app, ["hessian", str(checkpoint), "--k", "2", "--n-seq", "2", "--n-ctx", "8",
                                     "--no-blocks", "--out", str(out)] + extra)
        assert result.exit_code == 0, result.output
        assert not (out / "lanczos-spill").exists()
        runs[name] = read_npz(out / "eigen.npz")["eigenvalues"]
        logs[name] = caplog.text
    assert "spilled to a memory-mapped file" in logs["spilled"]
    assert "spilled" not in logs["memory"]
    np.testing.assert_allclose(runs["spilled"], runs["memory"], rtol=1e-5)
