"""Helpers shared by the section renderers: figure grids, wrapped labels, safe file names."""
from __future__ import annotations

import re
import textwrap
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from normlens.report.section import Figure  # noqa: E402

LABEL_WIDTH = 26  # characters per line of a panel title


def wrap_label(label: str, width: int = LABEL_WIDTH) -> str:
    """``label`` broken over lines of at most ``width`` characters (long paths too)."""
    return "\n".join(textwrap.wrap(str(label), width, break_long_words=True, break_on_hyphens=False)) or str(label)


def file_stem(name: str, taken: set[str] | None = None) -> str:
    """A file-name-safe stem for ``name`` (letters, digits, ``._-``), unique within ``taken``."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.") or "model"
    if taken is not None:
        base, n = stem, 2
        while stem in taken:
            stem, n = f"{base}_{n}", n + 1
        taken.add(stem)
    return stem


def panel_grid(n: int, size: tuple[float, float] = (3.4, 3.0)) -> tuple["plt.Figure", list]:
    """A row of ``n`` panels with constrained layout (labels and colour bars never overlap)."""
    n = max(n, 1)
    fig, axes = plt.subplots(1, n, figsize=(size[0] * n, size[1]), squeeze=False, layout="constrained")
    return fig, list(axes[0])


def one_axis(draw: Callable[[Any], Any], size: tuple[float, float], caption: str, *, alt: str = "",
             name: str = "") -> Figure:
    """``draw(ax)`` on a new constrained-layout figure of ``size``, rendered to a Figure."""
    fig, ax = plt.subplots(figsize=size, layout="constrained")
    draw(ax)
    return Figure.from_matplotlib(fig, caption, alt=alt, name=name)
