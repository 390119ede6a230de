"""The figures' style: every label, title and tick drawn as plain text, never as mathtext.

Model names and paths reach figures (titles, legends, tick labels); matplotlib would parse
``m$\\alpha$x`` as mathtext (drawn "mαx") and abort on ``$\\nope{$``. Inside :func:`plot_style`
``text.parse_math`` is off, so every Text created there is drawn as written; the tick formatters
that speak mathtext themselves (log and symlog axes: ``$\\mathdefault{10^{2}}$``) are wrapped by
:func:`plain_text_ticks` to give the same label in Unicode ("10²").
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Iterator

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

STYLE: dict[str, Any] = {
    "text.parse_math": False,
    "font.size": 9.0,
    "axes.titlesize": 9.0,
    "axes.labelsize": 9.0,
    "xtick.labelsize": 8.0,
    "ytick.labelsize": 8.0,
    "legend.fontsize": 8.0,
    "figure.titlesize": 10.0,
    "svg.hashsalt": "normlens",  # deterministic ids, should anyone save SVG
}

_SUPERSCRIPT = str.maketrans("0123456789-+.", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺·")
_POWER = re.compile(r"(\d+(?:\.\d+)?)\^\{?([-+]?[\d.]+)\}?")


def mathtext_to_plain(label: Any) -> Any:
    """A formatter's mathtext tick label as plain Unicode: ``$\\mathdefault{2\\times10^{-3}}$`` -> "2×10⁻³"."""
    if not isinstance(label, str) or "$" not in label:
        return label
    text = label.replace("$", "").replace(r"\mathdefault", "").replace(r"\times", "×").replace(r"\cdot", "·")
    text = text.replace(r"\ ", " ").replace(r"\,", " ").replace(r"\!", "").replace(r"\minus", "−")
    text = _POWER.sub(lambda m: m.group(1) + m.group(2).translate(_SUPERSCRIPT), text)
    text = text.replace("{", "").replace("}", "").replace("\\", "")
    return text.replace("-", "−")


class PlainTextFormatter(ticker.Formatter):
    """Wraps a tick formatter and turns its mathtext labels into plain text."""

    def __init__(self, inner: ticker.Formatter):
        self.inner = inner

    def set_axis(self, axis) -> None:
        super().set_axis(axis)
        self.inner.set_axis(axis)

    def set_locs(self, locs) -> None:
        self.locs = locs
        self.inner.set_locs(locs)

    def __call__(self, x, pos=None) -> str:
        return mathtext_to_plain(self.inner(x, pos))

    def format_ticks(self, values) -> list[str]:
        return [mathtext_to_plain(label) for label in self.inner.format_ticks(values)]

    def get_offset(self) -> str:
        return mathtext_to_plain(self.inner.get_offset())

    def format_data(self, value) -> str:
        return mathtext_to_plain(self.inner.format_data(value))

    def format_data_short(self, value) -> str:
        return mathtext_to_plain(self.inner.format_data_short(value))


def _axes_of(fig: "plt.Figure") -> Iterator[Any]:
    for ax in fig.get_axes():
        for name in ("xaxis", "yaxis", "zaxis"):
            axis = getattr(ax, name, None)
            if axis is not None:
                yield axis


def plain_text_ticks(fig: "plt.Figure") -> "plt.Figure":
    """Wrap every tick formatter of ``fig`` (colour bars and 3-D axes included) in a
    :class:`PlainTextFormatter`; also turns mathtext parsing off on every Text already made."""
    for axis in _axes_of(fig):
        for get, set_ in ((axis.get_major_formatter, axis.set_major_formatter),
                          (axis.get_minor_formatter, axis.set_minor_formatter)):
            formatter = get()
            if not isinstance(formatter, (PlainTextFormatter, ticker.NullFormatter)):
                set_(PlainTextFormatter(formatter))
    for text in fig.findobj(matplotlib.text.Text):
        text.set_parse_math(False)
    return fig


@contextmanager
def plot_style() -> Iterator[None]:
    """Our figures' rcParams (plain-text labels, readable sizes) for the duration of the block."""
    with plt.rc_context(STYLE):
        yield


__all__ = ["PlainTextFormatter", "STYLE", "mathtext_to_plain", "plain_text_ticks", "plot_style"]
