"""The training section: loss curves and the final numbers of every trained model.

Data (``folder/training.json``)::

    {"summary": str, "notes": [str],
     "models": [{"name", "label", "final_val_loss", "n_params", "diverged_step" | null,
                 "dyt_alpha_mean" | null, "train_seconds", "reused": bool}],
     "runs": [TrainResult.to_dict() ...]}        # curves; "name" matches models[i].name

``train_seconds`` is the original training (or fine-tuning) time; ``reused`` says the model was
loaded from an earlier run instead of trained in this one.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from normlens.io import read_json, write_json
from normlens.plots.training import plot_training_curves
from normlens.report.section import ReportSection, Table
from normlens.report.sections._common import one_axis, short_labels
from normlens.train import TrainResult

DATA = "training.json"


def save_training(folder: str | Path, runs: Sequence[TrainResult], models: Sequence[Mapping[str, Any]], *,
                  summary: str = "", notes: Sequence[str] = ()) -> Path:
    """Write the section's data (see the module docstring) to ``folder/training.json``."""
    return write_json(Path(folder) / DATA, {"summary": summary, "notes": list(notes),
                                            "models": [dict(m) for m in models],
                                            "runs": [r.to_dict() for r in runs]})


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def render_training(folder: Path, options: Mapping[str, Any]) -> ReportSection:
    data = read_json(Path(folder) / DATA)
    labels = {m["name"]: m.get("label") or m["name"] for m in data["models"]}
    short = short_labels(labels.values())
    runs = [dataclasses.replace(TrainResult.from_dict(r), name=short[labels.get(r["name"], r["name"])])
            for r in data["runs"] if labels.get(r["name"], r["name"]) in short]
    rows = []
    for m in data["models"]:
        step = m.get("diverged_step")
        seconds = _nan(m.get("train_seconds"))
        rows.append({
            "model": labels[m["name"]],
            "final val loss": _nan(m.get("final_val_loss")),
            "parameters": m.get("n_params"),
            "diverged": "no" if step is None and not m.get("diverged") else f"yes (step {step})",
            "DyT α (mean)": _nan(m.get("dyt_alpha_mean")),
            "train time (s)": seconds if math.isfinite(seconds) else float("nan"),
            "trained": "earlier run (reused)" if m.get("reused") else "this run",
        })
    figure = one_axis(lambda ax: plot_training_curves(runs, ax=ax), (8, 4.5),
                      "Training and validation loss of every model.",
                      alt="Line plot of training loss (smoothed lines) and validation loss (markers) against "
                          "step, one colour per model: " + ", ".join(labels.values()) + ".", name="training")
    notes = list(data.get("notes", []))
    if any(m.get("reused") for m in data["models"]):
        notes.append("Models marked 'earlier run (reused)' were loaded from the results folder; their train time "
                     "is that of the run that trained them.")
    return ReportSection(title=options.get("title", "Training"), summary=data.get("summary", ""),
                         figures=[figure], tables=[Table("Final validation loss and parameter count",
                                                         pd.DataFrame(rows))], notes=notes)


__all__ = ["render_training", "save_training"]
