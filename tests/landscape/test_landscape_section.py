import math

import torch

from landscape_helpers import tiny_zoo, zoo_tokens
from normlens.landscape import LandscapeResult
from normlens.landscape.section import build_section
from normlens.study import ZooStudy


def test_section_compares_models_and_shows_diverged(tmp_path):
    broken = tiny_zoo("none")
    with torch.no_grad():
        next(broken.parameters()).fill_(float("nan"))
    models = {"ln": tiny_zoo("ln").eval(), "dyt": tiny_zoo("dyt").eval(), "none": broken.eval()}
    before = {n: p.detach().clone() for n, p in models["ln"].named_parameters()}
    study = ZooStudy(models, zoo_tokens(n_seq=3), tmp_path, seed=0, diverged={"none"})
    section = build_section(study, resolution=5)
    frame = section.tables[0].frame
    assert list(frame["model"]) == ["ln", "dyt", "none"]
    assert list(frame["status"]) == ["ok", "ok", "diverged"] and math.isnan(frame["loss f(0,0)"][2])
    assert any("none: diverged" in note for note in section.notes) and len(section.figures) == 2
    result = LandscapeResult.load(tmp_path / "landscape" / "ln.npz")
    assert result.loss.shape == (5, 5) and result.normalization == "filter" and result.one_d == "zero"
    assert frame["loss f(0,0)"][0] == result.center_loss
    assert (tmp_path / "landscape" / "summary.csv").exists()
    assert all(torch.equal(p.detach(), before[n]) and p.grad is None for n, p in models["ln"].named_parameters())
