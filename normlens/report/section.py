"""What an analysis hands to the report: a titled section of figures and tables."""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")  # reports are drawn off-screen
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


@dataclass(frozen=True)
class Figure:
    """A rendered plot: its caption and the PNG bytes, base64-encoded for inlining."""

    caption: str
    png_base64: str

    @classmethod
    def from_matplotlib(cls, fig: "plt.Figure", caption: str, dpi: int = 110) -> "Figure":
        """Render ``fig`` to PNG and close it."""
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        return cls(caption, base64.b64encode(buffer.getvalue()).decode("ascii"))


@dataclass(frozen=True)
class Table:
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
