"""Train one model configuration over seeds and a grid, and compare grid cells with intervals.

Each run (grid cell x seed) trains in its own folder ``runs/<cell>/seed-<s>``
with :func:`normlens.train.train`, so a finished run is never recomputed and
an interrupted one resumes. A seed sets both the model's initialization and
the batch order; the corpus split and the evaluation set are the same for
every run (``split_seed``, ``TrainConfig.eval_seed``), so two cells trained
with the same seed form a pair. Differences between cells are reported as the
mean paired difference over seeds with a confidence interval
(:func:`normlens.uncertainty.paired_difference_interval`: Student's t for fewer
than 20 seeds, where a bootstrap of so few values undercovers; BCa bootstrap
above that).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from normlens.io import as_json_value, read_json, write_json
from normlens.models.config import ZooConfig
from normlens.train import TrainConfig, TrainResult
from normlens.uncertainty import bootstrap_interval, paired_difference_interval

SWEEP_FILE = "sweep.json"
RESULT_FILE = "sweep_result.json"
_MODEL_FIELDS = {f.name for f in dataclasses.fields(ZooConfig)} - {"seed", "norm_kinds"}
_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {"seed"}


class SweepError(ValueError):
    """A sweep that cannot run as asked; the message names the fix."""


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", str(value))


@dataclass(frozen=True)
class SweepConfig:
    """What to sweep.

    Args:
        model, train: the base configuration; each run replaces the grid's fields
            and the seed (``model.seed`` and ``train.seed`` both take the run's seed).
        seeds: one run per seed and grid cell.
        grid: field name -> values; fields of :class:`ZooConfig` or :class:`TrainConfig`
            (e.g. ``{"norm": ("ln", "rms"), "placement": ("pre", "post"), "n_layers": (2, 4)}``);
            every combination is a cell.
        data: the corpus (``normlens.data.load_corpus`` source).
        split_seed: the seed of the train/validation split, the same for every run.
    """

    model: ZooConfig = ZooConfig()
    train: TrainConfig = TrainConfig()
    seeds: tuple[int, ...] = (0, 1, 2)
    grid: Mapping[str, tuple[Any, ...]] = field(default_factory=lambda: {"norm": ("ln", "rms", "dyt", "none")})
    data: str = "embedded"
    split_seed: int = 0

    def __post_init__(self) -> None:
        seeds = tuple(self.seeds)
        if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
            raise SweepError(f"seeds must be non-negative integers, got {self.seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise SweepError(f"seeds must be distinct, got {list(seeds)}")
        object.__setattr__(self, "seeds", seeds)
        grid = {str(k): tuple(v) for k, v in dict(self.grid).items()}
        for key, values in grid.items():
            if key in ("seed",):
                raise SweepError("'seed' is swept by seeds=..., not by the grid")
            if key not in _MODEL_FIELDS | _TRAIN_FIELDS:
                raise SweepError(f"grid field {key!r} is not a ZooConfig or TrainConfig field; choose from "
                                 f"{sorted(_MODEL_FIELDS | _TRAIN_FIELDS)}")
            if not values or len(set(map(repr, values))) != len(values):
                raise SweepError(f"grid field {key!r} needs distinct values, got {list(values)}")
        object.__setattr__(self, "grid", grid)
        if not isinstance(self.split_seed, int) or self.split_seed < 0:
            raise SweepError(f"split_seed must be a non-negative integer, got {self.split_seed!r}")
        for cell in self.cells():  # every cell must build: errors now, not after hours of training
            self.configs(cell, seeds[0])

    def cells(self) -> list[dict[str, Any]]:
        """Every combination of the grid's values, in grid order."""
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*self.grid.values())]

    def configs(self, cell: Mapping[str, Any], seed: int) -> tuple[ZooConfig, TrainConfig]:
        """The model and training configuration of one run."""
        model = {k: v for k, v in cell.items() if k in _MODEL_FIELDS}
        train = {k: v for k, v in cell.items() if k in _TRAIN_FIELDS and k not in model}
        try:
            return self.model.replace(**model, seed=seed), self.train.replace(**train, seed=seed)
        except (ValueError, TypeError) as error:
            raise SweepError(f"grid cell {cell_label(cell)} is not a valid configuration: {error}") from None

    def run_folder(self, root: str | Path, cell: Mapping[str, Any], seed: int) -> Path:
        return Path(root) / "runs" / cell_slug(cell) / f"seed-{seed}"

    def base_spec(self) -> dict[str, Any]:
        """What every run shares; a sweep folder keeps it and refuses another."""
        return as_json_value({"model": {k: v for k, v in self.model.to_dict().items() if k != "seed"},
                              "train": {k: v for k, v in self.train.to_dict().items() if k != "seed"},
                              "data": self.data, "split_seed": self.split_seed})


def cell_label(cell: Mapping[str, Any]) -> str:
    """``{"norm": "ln", "n_layers": 2}`` -> ``"norm=ln, n_layers=2"``."""
    return ", ".join(f"{k}={v}" for k, v in cell.items()) or "base"


def cell_slug(cell: Mapping[str, Any]) -> str:
    return "__".join(f"{_slug(k)}-{_slug(v)}" for k, v in cell.items()) or "base"


@dataclass(frozen=True)
class SweepResult:
    """One row per run: the grid's fields, ``cell`` (label), ``seed``, ``final_val_loss``
    (NaN for a diverged run), ``last_val_loss`` (as recorded), ``diverged``, ``diverged_step``,
    ``n_steps``, ``wall_time_s``, ``folder`` (relative to the sweep folder)."""

    axes: tuple[str, ...]
    runs: pd.DataFrame

    def cell_summary(self, metric: str = "final_val_loss", *, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
        """Per cell: the mean of ``metric`` over seeds with a bootstrap interval, and the divergences."""
        rows = []
        for label, group in self.runs.groupby("cell", sort=False):
            interval = bootstrap_interval(group[metric].to_numpy(float), level=level, seed=seed)
            rows.append({"cell": label, **{k: group[k].iloc[0] for k in self.axes}, "n_runs": len(group),
                         "n_diverged": int(group.diverged.sum()), **_interval_columns(interval)})
        return pd.DataFrame(rows)

    def paired_differences(self, metric: str = "final_val_loss", *, baseline: Mapping[str, Any] | None = None,
                           level: float = 0.95, seed: int = 0) -> pd.DataFrame:
        """Per cell: mean over seeds of ``metric(cell) - metric(baseline)`` (same seed), with a
        bootstrap interval; ``baseline`` defaults to the first cell. Pairs with a NaN (a
        diverged run) are left out and counted in ``n_pairs``."""
        cells = list(dict.fromkeys(self.runs.cell))
        base = cell_label(baseline) if baseline is not None else cells[0]
        if base not in cells:
            raise SweepError(f"baseline {base!r} is not a cell of this sweep; cells: {cells}")
        reference = self.runs[self.runs.cell == base].set_index("seed")[metric]
        rows = []
        for label in cells:
            if label == base:
                continue
            values = self.runs[self.runs.cell == label].set_index("seed")[metric]
            seeds = sorted(set(values.index) & set(reference.index))
            a, b = values.loc[seeds].to_numpy(float), reference.loc[seeds].to_numpy(float)
            interval = paired_difference_interval(a, b, level=level, seed=seed)
            first = self.runs[self.runs.cell == label].iloc[0]
            rows.append({"cell": label, "baseline": base, **{k: first[k] for k in self.axes},
                         "n_pairs": interval.n, "n_seeds": len(seeds), **_interval_columns(interval),
                         "excludes_zero": interval.excludes(0.0)})
        return pd.DataFrame(rows)

    def to_dict(self) -> dict[str, Any]:
        return {"axes": list(self.axes), "runs": self.runs.to_dict(orient="records")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SweepResult":
        return cls(tuple(data["axes"]), pd.DataFrame(data["runs"]))

    @classmethod
    def load(cls, folder: str | Path) -> "SweepResult":
        path = Path(folder) / RESULT_FILE
        try:
            return cls.from_dict(read_json(path))
        except FileNotFoundError:
            raise SweepError(f"{str(path)!r} does not exist; run `normlens sweep --out {str(folder)!r}` first") from None
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
            raise SweepError(f"{str(path)!r} is damaged ({type(error).__name__}); run `normlens sweep` again "
                             f"with --out {str(folder)!r} to rewrite it (finished runs are reused)") from None


def _interval_columns(interval) -> dict[str, Any]:
    return {"estimate": interval.estimate, "low": interval.low, "high": interval.high,
            "level": interval.level, "method": interval.method}


def _run_row(result: TrainResult, cell: Mapping[str, Any], seed: int, folder: Path, root: Path) -> dict[str, Any]:
    return {**cell, "cell": cell_label(cell), "seed": seed,
            "final_val_loss": math.nan if result.diverged else result.final_val_loss,
            "last_val_loss": result.final_val_loss, "diverged": result.diverged,
            "diverged_step": result.diverged_step, "n_steps": len(result.steps),
            "wall_time_s": result.wall_time_s, "folder": folder.relative_to(root).as_posix()}


def run_sweep(config: SweepConfig, out: str | Path, *, probes: Callable[[], Sequence[Any]] | None = None,
              every: int = 50, progress: bool = True, log: Callable[[str], None] = print) -> SweepResult:
    """Train every (cell, seed) of ``config`` under ``out`` (resumable) and return the runs.

    Args:
        probes: a function returning the training probes of one run (``normlens.train_probes``).
        every: steps between probe records.

    Writes ``out/sweep.json`` (the shared settings; a folder holding another
    sweep's is refused) and ``out/sweep_result.json`` (:class:`SweepResult`).
    """
    from normlens.data import load_corpus
    from normlens.models import build_model
    from normlens.train import train
    from normlens.train_state import check_writable

    root = check_writable(out)
    spec_path = root / SWEEP_FILE
    spec = config.base_spec()
    if spec_path.is_file():
        try:
            saved = read_json(spec_path)
        except (ValueError, UnicodeDecodeError):
            raise SweepError(f"{str(spec_path)!r} is damaged; pass another --out or delete it") from None
        if saved != spec:
            changed = sorted(k for k in spec if saved.get(k) != spec.get(k)) if isinstance(saved, dict) else []
            raise SweepError(f"{str(root)!r} holds a sweep with other shared settings ({', '.join(changed)}); "
                             "pass another --out (grid values and seeds may be added, the base may not change)")
    write_json(spec_path, spec)
    splits = load_corpus(config.data, seed=config.split_seed)
    rows = []
    cells = config.cells()
    total = len(cells) * len(config.seeds)
    for i, (cell, seed) in enumerate(itertools.product(cells, config.seeds), start=1):
        folder = config.run_folder(root, cell, seed)
        model_config, train_config = config.configs(cell, seed)
        result = train(build_model(model_config), splits, train_config, name=cell_label(cell),
                       checkpoint_dir=folder, progress=progress,
                       probes=list(probes()) if probes is not None else (), every=every)
        rows.append(_run_row(result, cell, seed, folder, root))
        status = f"diverged at step {result.diverged_step}" if result.diverged else f"val {result.final_val_loss:.4f}"
        log(f"  [{i}/{total}] {cell_label(cell)} seed {seed}: {status} ({result.wall_time_s:.1f} s)")
    sweep = SweepResult(tuple(config.grid), pd.DataFrame(rows))
    write_json(root / RESULT_FILE, sweep.to_dict())
    return sweep
