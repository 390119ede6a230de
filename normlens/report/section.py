"""What a renderer hands to the report: a titled section of figures and tables."""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")  # reports are drawn off-screen
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from normlens.plots.style import plain_text_ticks  # noqa: E402

PNG_DPI = 110


def png_bytes(fig: "plt.Figure", dpi: int = PNG_DPI) -> bytes:
    """``fig`` as PNG bytes, deterministic (no metadata: matplotlib's version string), every label
    drawn as plain text (never mathtext, see :mod:`normlens.plots.style`)."""
    plain_text_ticks(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


@dataclass(frozen=True)
class Figure:
    """A rendered plot: caption, alt text, PNG bytes base64-encoded for inlining.

    ``alt`` describes the image for readers who cannot see it (the caption when empty);
    ``name`` is an optional file stem under which a verb also writes the PNG.
    """

    caption: str
    png_base64: str
    alt: str = ""
    name: str = ""

    @property
    def alt_text(self) -> str:
        return self.alt or self.caption or "figure"

    @property
    def png(self) -> bytes:
        return base64.b64decode(self.png_base64)

    @classmethod
    def from_matplotlib(cls, fig: "plt.Figure", caption: str, dpi: int = PNG_DPI, *, alt: str = "",
                        name: str = "") -> "Figure":
        """Render ``fig`` to PNG and close it."""
        try:
            data = png_bytes(fig, dpi)
        finally:
            plt.close(fig)
        return cls(caption, base64.b64encode(data).decode("ascii"), alt, name)


@dataclass(frozen=True)
class Table:
    """A table with a caption; every cell is escaped when rendered; a wide table scrolls sideways."""

    caption: str
    frame: pd.DataFrame


@dataclass(frozen=True)
class ReportSection:
    """One section of an HTML report.

    ``summary`` is plain text (escaped when rendered); ``notes`` are plain-text
    bullet points (warnings, diverged runs, what was measured and how).
    """

    title: str
    summary: str = ""
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
