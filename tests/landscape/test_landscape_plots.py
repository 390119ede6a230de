import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from normlens.landscape.results import LandscapeResult  # noqa: E402
from normlens.plots.landscape import (  # noqa: E402
    colour_norm, plot_landscape_1d, plot_landscape_2d, plot_landscape_3d, plot_landscapes,
)


def _result(shift=0.0, nan_cells=0, name="m"):
    c = np.linspace(-1, 1, 5)
    a, b = np.meshgrid(c, c, indexing="ij")
    loss = 1.0 + a ** 2 + 2 * b ** 2 + shift
    loss.ravel()[:nan_cells] = np.nan
    return LandscapeResult((c, c), loss, float(loss[2, 2]), "random", "filter", "zero", (1.0, 1.0),
                           model_name=name, info={"trajectory": [[0.5, 0.5], [0.0, 0.0]]})


def test_2d_plot_writes_span_normalization_and_counts_nonfinite_cells():
    ax = plot_landscape_2d(_result(nan_cells=3))
    title = ax.get_title()
    assert "span [-1, 1] × [-1, 1]" in title and "filter-normalized" in title and "1-D zeroed" in title
    assert "3 non-finite cells" in title
    plt.close("all")


def test_log_scale_and_1d_and_3d():
    r = _result(nan_cells=1)
    ax = plot_landscape_2d(r, log=True)
    assert "log" in ax.figure.axes[-1].get_ylabel()
    line = r.loss[:, 2].copy()
    line[4] = np.inf
    ax1 = plot_landscape_1d(LandscapeResult((r.coords[0],), line, 1.0, "random", "filter", "zero", (1.0,)), log=True)
    assert ax1.get_yscale() == "log" and "non-finite" in " ".join(t.get_text() for t in ax1.get_legend().texts)
    ax3 = plot_landscape_3d(r)
    assert "1 non-finite cell" in ax3.get_title()
    with pytest.raises(ValueError, match="needs a 2-D result"):
        plot_landscape_2d(LandscapeResult((r.coords[0],), r.loss[:, 2], 1.0, "random", "filter", "zero", (1.0,)))
    plt.close("all")


def test_side_by_side_share_one_colour_scale_and_show_diverged():
    results = {"low": _result(0.0), "high": _result(5.0), "none": None}
    axes = plot_landscapes(results)
    norm = colour_norm([results["low"], results["high"]])
    meshes = [ax.collections[0] for ax in axes[:2]]
    for mesh in meshes:
        assert mesh.norm.vmin == norm.vmin == 1.0 and mesh.norm.vmax == norm.vmax == 9.0
    assert "diverged" in axes[2].texts[0].get_text()
    plt.close("all")
