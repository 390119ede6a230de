"""Figures draw every label as plain text (never mathtext), with readable integer depth ticks."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from normlens.plots.style import mathtext_to_plain, plain_text_ticks, plot_style  # noqa: E402
from normlens.report.section import Figure  # noqa: E402


@pytest.mark.parametrize("label,plain", [
    ("$\\mathdefault{10^{0}}$", "10⁰"), ("$\\mathdefault{10^{-3}}$", "10⁻³"),
    ("$\\mathdefault{2\\times10^{1}}$", "2×10¹"), ("$\\mathdefault{-10^{2}}$", "−10²"),
    ("$\\mathdefault{0}$", "0"), ("0.5", "0.5"), (3, 3),
])
def test_mathtext_tick_labels_become_unicode(label, plain):
    assert mathtext_to_plain(label) == plain


def test_user_text_is_never_parsed_as_mathtext_and_log_ticks_stay_readable():
    with plot_style():
        fig, ax = plt.subplots()
        ax.plot([1, 10, 100], [1, 10, 1000], label="$\\nope{$")
        ax.set_yscale("log")
        ax.set_title("m$\\alpha$x")
        ax.legend()
        figure = Figure.from_matplotlib(fig, "c")  # would raise on "$\\nope{$" if parsed
    assert figure.png.startswith(b"\x89PNG")
    assert ax.title.get_parse_math() is False and ax.title.get_text() == "m$\\alpha$x"
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert "10⁰" in labels and "10²" in labels and not any("$" in t for t in labels)


def test_plain_text_outside_the_style_context_too():
    fig, ax = plt.subplots()
    ax.set_xlabel("$\\nope{$")
    plain_text_ticks(fig)
    fig.canvas.draw()  # would raise if the label were parsed
    assert ax.xaxis.label.get_parse_math() is False
    plt.close(fig)


def test_depth_axes_have_integer_ticks_and_the_kurtosis_plot_labels_values_between_decades():
    import pandas as pd

    from normlens.plots.probes import plot_kurtosis_and_massive, plot_residual_growth

    growth = {"a": pd.DataFrame({"depth": [0, 1, 2], "rms": [1.0, 2.0, 4.0]})}
    stats = pd.DataFrame({"kind": "resid", "group": "body", "model": "a", "excess_kurtosis": [0.1, 0.5, 1.5],
                          "massive_ratio": [3.0, 6.0, 8.0]})
    with plot_style():
        fig, (left, right) = plt.subplots(1, 2)
        plot_residual_growth(growth, ax=left)
        plot_kurtosis_and_massive(stats, ax=right)
        fig.canvas.draw()
    for ax in (left, right):
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    labels = {t.get_text() for t in right.get_yticklabels()}
    assert {"1", "2", "5"} <= labels  # values between 1 and 10 are readable
    plt.close(fig)


@pytest.fixture(scope="module")
def suite():
    """Probe results of a tiny 2-layer model (through the public entry point, whatever fields they hold)."""
    import torch

    import normlens
    from normlens.probes.suite import run_probe_suite

    model = normlens.build_model(norm="ln", n_layers=2, d_model=16, n_heads=4, n_ctx=16).eval()
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    return run_probe_suite(model, tokens, s_curve_samples=64, probe_bytes=1 << 16)


@pytest.mark.parametrize("kind", ["entropy", "s_curve"])
def test_side_by_side_panels_and_their_colour_bars_do_not_overlap(kind, suite):
    """The entropy heatmaps' "layer" label used to run into the previous panel's colour bar, and the
    S-curve panels' labels into their neighbours."""
    from normlens.plots.probes import plot_entropy_heatmap, plot_s_curve
    from normlens.report.sections._common import panel_grid

    names = ["LayerNorm (Pre-LN)", "RMSNorm", "DyT", "no normalization", "LayerNorm removed by fine-tuning"]
    with plot_style():
        fig, axes = panel_grid(len(names))
        for ax, name in zip(axes, names):
            if kind == "entropy":
                plot_entropy_heatmap(suite.entropy, ax=ax, title=name)
            else:
                plot_s_curve(suite.s_curve, ax=ax, title=name)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
    overlaps = []
    for i, ax in enumerate(axes):
        own = {ax} | {c.colorbar.ax for c in ax.collections if getattr(c, "colorbar", None) is not None}
        box = ax.get_tightbbox(renderer)  # the panel with its labels and tick labels
        overlaps += [(i, other) for other in fig.get_axes() if other not in own
                     and box.overlaps(other.get_tightbbox(renderer))]
    assert overlaps == [], f"panels overlapping their neighbours (or their colour bars): {overlaps}"
    plt.close(fig)
