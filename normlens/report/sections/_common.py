"""Helpers shared by the section renderers: figure grids, wrapped labels, safe file names."""
from __future__ import annotations

import re
import textwrap
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from normlens.report.section import Figure  # noqa: E402

LABEL_WIDTH = 34  # characters per line of a panel title
LABEL_LIMIT = 48  # characters of a name in a figure (the tables carry the full name)


def short_label(label: str, limit: int = LABEL_LIMIT) -> str:
    """``label`` cut to ``limit`` characters by an ellipsis in the middle (start and end kept)."""
    label = str(label)
    if len(label) <= limit:
        return label
    head = (limit - 1) // 2
    return label[:head] + "…" + label[len(label) - (limit - 1 - head):]


def short_labels(names, limit: int = LABEL_LIMIT) -> dict[str, str]:
    """name -> a short label for figures, unique among ``names`` (a counter added on collision)."""
    out: dict[str, str] = {}
    for name in names:
        label, n = short_label(name, limit), 2
        while label in out.values():
            label, n = f"{short_label(name, limit - 4)} ({n})", n + 1
        out[name] = label
    return out


def wrap_label(label: str, width: int = LABEL_WIDTH) -> str:
    """``label`` shortened (:func:`short_label`) and broken over lines of at most ``width`` characters."""
    label = short_label(label)
    return "\n".join(textwrap.wrap(label, width, break_long_words=True, break_on_hyphens=False)) or label


def file_stem(name: str, taken: set[str] | None = None) -> str:
    """A file-name-safe stem for ``name`` (letters, digits, ``._-``), unique within ``taken``."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.") or "model"
    if taken is not None:
        base, n = stem, 2
        while stem in taken:
            stem, n = f"{base}_{n}", n + 1
        taken.add(stem)
    return stem


MAX_COLUMNS = 3  # panels per row: a row of 3 fits the page (~9.7 in at 110 dpi) without shrinking


def panel_grid(n: int, size: tuple[float, float] = (3.2, 2.9), columns: int = MAX_COLUMNS,
               **subplot_kw) -> tuple["plt.Figure", list]:
    """``n`` panels, at most ``columns`` per row, constrained layout (labels and colour bars never
    overlap); panels beyond ``n`` are removed. Returns the figure and the ``n`` axes."""
    n = max(n, 1)
    cols = min(n, columns)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False,
                             layout="constrained", subplot_kw=subplot_kw or None)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.remove()
    return fig, flat[:n]


def one_axis(draw: Callable[[Any], Any], size: tuple[float, float], caption: str, *, alt: str = "",
             name: str = "") -> Figure:
    """``draw(ax)`` on a new constrained-layout figure of ``size``, rendered to a Figure."""
    fig, ax = plt.subplots(figsize=size, layout="constrained")
    draw(ax)
    return Figure.from_matplotlib(fig, caption, alt=alt, name=name)
