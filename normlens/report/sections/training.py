"""The training section: loss curves and the final numbers of every trained model.

Data (``folder/training.json``)::

    {"summary": str, "notes": [str],
     "models": [{"name", "label", "final_val_loss", "n_params", "diverged_step" | null,
                 "dyt_alpha_mean" | null, "train_seconds", "reused": bool}],
     "runs": [TrainResult.to_dict() ...]}        # curves; "name" matches models[i].name

``train_seconds`` is the original training (or fine-tuning) time; ``reused`` says the model was
loaded from an earlier run instead of trained in this one. Runs that recorded training probes
(``TrainResult.probes``: "attention" with ``entropy[layer,head]``, "residual" with
``variance[site]``) get figures of those records over training.

Optional ``folder/seeds.json`` (several seeds of the same models)::

    {"seeds": [int], "detail_seed": int, "baseline": name, "level": float,
     "eval": {"eval_seed", "eval_seqs", "n_ctx"},
     "runs": [{"name", "label", "seed", "final_val_loss", "diverged", "diverged_step", "train_seconds",
               "reused"}],
     "summary": [{"name", "label", "n_runs", "n_diverged", "estimate", "low", "high", "level", "n", "method"}],
     "paired": [{"name", "label", "baseline", "baseline_label", "seeds", "values", "n_seeds",
                 "excludes_zero", "estimate", "low", "high", "level", "n", "method"}],
     "removal": [{"seed", "val_loss_before", "val_loss_after", "val_loss_control", "gap_to_control",
                  "diverged", "fixed_before", "fixed_after"}],
     "removal_cost": {"baseline": "control" | "before", "baseline_label", "seeds", "values",
                      "estimate", "low", "high", "level", "n", "method"} | null}

Options: ``band`` (nats) and ``band_label``: a shaded band drawn on the paired-difference plot.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from normlens.io import read_json, write_json
from normlens.plots.training import plot_metric_over_training, plot_paired_differences, plot_training_curves
from normlens.report.section import Figure, ReportSection, Table
from normlens.report.sections._common import one_axis, panel_grid, short_labels, wrap_label
from normlens.train import TrainResult

DATA = "training.json"
SEEDS = "seeds.json"


def save_training(folder: str | Path, runs: Sequence[TrainResult], models: Sequence[Mapping[str, Any]], *,
                  summary: str = "", notes: Sequence[str] = ()) -> Path:
    """Write the section's data (see the module docstring) to ``folder/training.json``."""
    return write_json(Path(folder) / DATA, {"summary": summary, "notes": list(notes),
                                            "models": [dict(m) for m in models],
                                            "runs": [r.to_dict() for r in runs]})


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _interval_text(row: Mapping[str, Any], digits: int = 4, sign: bool = False) -> str:
    value, low, high = (_nan(row.get(k)) for k in ("estimate", "low", "high"))
    if not math.isfinite(value):
        return "—"
    fmt = f"{{:{'+' if sign else ''}.{digits}f}}"
    if not (math.isfinite(low) and math.isfinite(high)):
        return fmt.format(value) + " (no interval)"
    return f"{fmt.format(value)} [{fmt.format(low)}, {fmt.format(high)}]"


def _values_text(values: Sequence[Any], sign: bool = False) -> str:
    return ", ".join("—" if v is None or not math.isfinite(float(v)) else
                     (f"{float(v):+.4f}" if sign else f"{float(v):.4f}") for v in values)


def _seed_parts(seeds: Mapping[str, Any], options: Mapping[str, Any]) -> tuple[list[Figure], list[Table], list[str]]:
    """The seeds' tables, the paired-difference figure and the notes saying how they were measured."""
    level = float(seeds.get("level", 0.95))
    runs = pd.DataFrame(seeds.get("runs", []))
    n_seeds = len(seeds.get("seeds", []))
    summary_rows = []
    for row in seeds.get("summary", []):
        mine = runs[runs.name == row["name"]].sort_values("seed") if len(runs) else runs
        summary_rows.append({"model": row["label"], "seeds": int(row.get("n_runs", 0)),
                             f"final val loss, mean [{level:.0%} CI]": _interval_text(row),
                             "per seed": _values_text(list(mine.final_val_loss)) if len(mine) else "",
                             "diverged": int(row.get("n_diverged", 0))})
    paired = list(seeds.get("paired", []))
    baseline = next((r.get("baseline_label") for r in paired), seeds.get("baseline", "baseline"))
    paired_rows = [{"model": r["label"], "pairs (seeds)": int(r.get("n", 0)),
                    f"difference vs {baseline}, mean [{level:.0%} CI]": _interval_text(r, sign=True),
                    "per seed": _values_text(r.get("values", []), sign=True),
                    "interval excludes 0": "yes" if r.get("excludes_zero") else "no"} for r in paired]
    tables = [Table(f"Final validation loss over {n_seeds} seeds (fixed evaluation set)", pd.DataFrame(summary_rows)),
              Table(f"Paired differences against {baseline} (same seed, same evaluation set)", pd.DataFrame(paired_rows))]
    removal = seeds.get("removal") or []
    if removal:
        tables.append(Table("LayerNorm removal per seed", pd.DataFrame([{
            "seed": r["seed"], "LayerNorm model (fixed set)": _nan(r.get("fixed_before")),
            "LN removed (fixed set)": _nan(r.get("fixed_after")),
            "before removal (removal's eval set)": _nan(r.get("val_loss_before")),
            "after removal (removal's eval set)": _nan(r.get("val_loss_after")),
            "LayerNorm-kept control (removal's eval set)": _nan(r.get("val_loss_control")),
            "gap to control": _nan(r.get("gap_to_control"))} for r in removal])))
    figures = []
    if paired:
        band = options.get("band")
        figures.append(one_axis(
            lambda ax: plot_paired_differences(paired, ax=ax, baseline=baseline, band=band,
                                               band_label=options.get("band_label", "")),
            (8, 0.9 + 0.6 * len(paired)),
            f"Final validation loss minus {baseline}'s, per seed (dots) and mean with its {level:.0%} "
            f"interval over {n_seeds} seeds (diamond and bar)" + (f"; shaded: ±{band:g} nats" if band else "") + ".",
            alt=f"Dot plot of each model's paired difference in final validation loss against {baseline}, one row "
                "per model: " + ", ".join(r["label"] for r in paired) + ".", name="paired"))
    ev = seeds.get("eval", {})
    notes = [f"Seeds {', '.join(map(str, seeds.get('seeds', [])))}: a seed sets a model's initial weights and its batch "
             f"order; every run is validated on the same {ev.get('eval_seqs', '?')} windows of {ev.get('n_ctx', '?')} "
             f"tokens of the validation split (evaluation seed {ev.get('eval_seed', '?')}, independent of the training "
             "seed), so runs with the same seed form pairs. Intervals of means over fewer than 20 values are "
             "Student's t intervals (a bootstrap of so few values undercovers).",
             f"The curves above and the detailed analyses (probes, Hessian, landscapes) use seed "
             f"{seeds.get('detail_seed', '?')} only."]
    cost = seeds.get("removal_cost")
    if cost:
        notes.append(f"Cost of removing LayerNorm: {_interval_text(cost, sign=True)} nats over {int(cost.get('n', 0))} "
                     f"seeds, measured against {cost.get('baseline_label', cost.get('baseline'))}.")
    return figures, tables, notes


def uniform_entropy_ratio(n_ctx: int) -> float:
    """Mean entropy over log T of a head attending uniformly to its visible keys under a causal mask:
    mean_i log(i + 1) / log T = log(T!) / (T log T) (0.771 at T = 64).

    >>> round(uniform_entropy_ratio(64), 3)
    0.771
    """
    return math.lgamma(n_ctx + 1) / (n_ctx * math.log(n_ctx)) if n_ctx >= 2 else float("nan")


def _probe_figures(runs: Sequence[TrainResult], labels: Mapping[str, str]) -> list[Figure]:
    """Attention entropy per layer (over log T) and residual variance per depth over training."""
    figures = []
    attention = [r for r in runs if "attention" in r.probes]
    if attention:
        fig, axes = panel_grid(len(attention))
        for ax, run in zip(axes, attention):
            frame = run.probe_frame("attention")
            frame = frame[frame.metric == "entropy"]
            n_ctx = int(run.model_config.get("n_ctx", 2))
            log_t = math.log(n_ctx)
            per_layer = frame.groupby(["step", "layer"], as_index=False).value.mean()
            plot_metric_over_training(per_layer.assign(value=per_layer.value / log_t), ax=ax, by="layer",
                                      title=wrap_label(labels.get(run.name, run.name)),
                                      ylabel="mean attention entropy / log T", threshold=0.75,
                                      threshold_label="3/4 (overload)", reference=uniform_entropy_ratio(n_ctx),
                                      reference_label="uniform causal head", ylim=(0, 1))
        figures.append(Figure.from_matplotlib(
            fig, "Attention entropy over training: each layer's mean over heads of the head's mean entropy over "
                 "log T (T = the context), measured on held-out windows; the dashed line is ReLU's Revival's 3/4 "
                 "overload bar, the dotted one a head attending uniformly to every visible key "
                 "(log(T!) / (T log T)).",
            alt="Line plots of mean attention entropy over log T per layer against training step, one panel per "
                "model: " + ", ".join(labels.get(r.name, r.name) for r in attention) + ".", name="entropy_training"))
    residual = [r for r in runs if "residual" in r.probes]
    if residual:
        fig, axes = panel_grid(len(residual))
        for ax, run in zip(axes, residual):
            frame = run.probe_frame("residual")
            frame = frame[frame.metric == "variance"]
            order = {site: depth for depth, site in enumerate(dict.fromkeys(frame.site))}
            plot_metric_over_training(frame.assign(depth=frame.site.map(order)), ax=ax, by="depth",
                                      title=wrap_label(labels.get(run.name, run.name)),
                                      ylabel="residual-stream variance", log=True)
        figures.append(Figure.from_matplotlib(
            fig, "Residual-stream variance per depth over training (depth 0 = embeddings, last = after the last "
                 "block), on held-out windows.",
            alt="Line plots of residual-stream variance per depth against training step on a log scale, one panel "
                "per model: " + ", ".join(labels.get(r.name, r.name) for r in residual) + ".",
            name="residual_training"))
    return figures


def render_training(folder: Path, options: Mapping[str, Any]) -> ReportSection:
    data = read_json(Path(folder) / DATA)
    labels = {m["name"]: m.get("label") or m["name"] for m in data["models"]}
    short = short_labels(labels.values())
    full_runs = [TrainResult.from_dict(r) for r in data["runs"] if labels.get(r["name"], r["name"]) in short]
    runs = [dataclasses.replace(r, name=short[labels.get(r.name, r.name)]) for r in full_runs]
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
    seeds_path = Path(folder) / SEEDS
    seeds = read_json(seeds_path) if seeds_path.is_file() else None
    which = f" (seed {seeds['detail_seed']})" if seeds else ""
    figure = one_axis(lambda ax: plot_training_curves(runs, ax=ax), (8, 4.5),
                      f"Training and validation loss of every model{which}.",
                      alt="Line plot of training loss (smoothed lines) and validation loss (markers) against "
                          "step, one colour per model: " + ", ".join(labels.values()) + ".", name="training")
    figures, tables = [figure], [Table(f"Final validation loss and parameter count{which}", pd.DataFrame(rows))]
    notes = list(data.get("notes", []))
    if seeds:
        seed_figures, seed_tables, seed_notes = _seed_parts(seeds, options)
        figures += seed_figures
        tables = seed_tables + tables
        notes = seed_notes + notes
    figures += _probe_figures(full_runs, labels)
    if any(m.get("reused") for m in data["models"]):
        notes.append("Models marked 'earlier run (reused)' were loaded from the results folder; their train time "
                     "is that of the run that trained them.")
    return ReportSection(title=options.get("title", "Training"), summary=data.get("summary", ""),
                         figures=figures, tables=tables, notes=notes)


__all__ = ["SEEDS", "render_training", "save_training", "uniform_entropy_ratio"]
