"""`normlens sweep`: train a configuration over seeds and a grid; paired differences with intervals."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def _parse_value(field: str, text: str, default: Any) -> Any:
    """``text`` as the type of ``default`` (the base configuration's value of ``field``)."""
    try:
        if isinstance(default, bool):
            raise ValueError
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if default is None:  # e.g. d_mlp: an integer or "none"
            return None if text.lower() == "none" else int(text)
        if isinstance(default, str):
            return text
    except ValueError:
        pass
    raise ValueError(f"--grid {field}: cannot read {text!r} as a value of {field} "
                     f"(like {default!r}); write --grid {field}=V1,V2")


def parse_grid(items: list[str], model, train) -> dict[str, tuple]:
    """``["norm=ln,rms", "n_layers=2,4"]`` -> ``{"norm": ("ln", "rms"), "n_layers": (2, 4)}``."""
    grid: dict[str, tuple] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name or not values.strip():
            raise ValueError(f"--grid {item!r} is not FIELD=V1,V2,...; e.g. --grid norm=ln,rms,dyt,none")
        if name in grid:
            raise ValueError(f"--grid {name} is given twice; list all its values in one --grid")
        source = model if hasattr(model, name) else train if hasattr(train, name) else None
        if source is None:
            raise ValueError(f"--grid {name}: not a model or training setting (e.g. norm, placement, act_fn, "
                             "n_layers, d_model, lr, batch_size)")
        grid[name] = tuple(_parse_value(name, v.strip(), getattr(source, name)) for v in values.split(","))
    return grid


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{option} {text!r} is not a comma-separated list of integers, e.g. 0,1,2") from None


def register(app: typer.Typer) -> None:
    @app.command("sweep")
    def sweep(
        grid: list[str] = typer.Option(["norm=ln,rms,dyt,none"], "--grid",
                                       help="FIELD=V1,V2,... (repeat for more axes: every combination is a cell)"),
        seeds: str = typer.Option("0,1,2", help="comma-separated seeds; a seed sets init and batch order"),
        baseline: str = typer.Option("", help="cell to compare against, e.g. norm=ln (default: the first cell)"),
        placement: str = typer.Option("pre", help="pre, post, mix or scaled"),
        act_fn: str = typer.Option("gelu", "--act", help="gelu or relu"),
        n_layers: int = typer.Option(2, "--layers"),
        d_model: int = typer.Option(64, "--d-model"),
        n_heads: int = typer.Option(4, "--heads"),
        n_ctx: int = typer.Option(64, "--n-ctx", help="context length"),
        steps: int = typer.Option(300),
        batch_size: int = typer.Option(16, "--batch-size"),
        lr: float = typer.Option(3e-3),
        eval_seqs: int = typer.Option(128, "--eval-seqs", help="windows in the fixed evaluation set"),
        eval_seed: int = typer.Option(0, "--eval-seed", help="seed of the evaluation set (the same for every run)"),
        split_seed: int = typer.Option(0, "--split-seed", help="seed of the train/validation split"),
        data: str = typer.Option("embedded", help="'embedded', a text file path, or hf:DATASET_NAME"),
        probes: bool = typer.Option(False, "--probes/--no-probes",
                                    help="record attention entropy, residual variance and gradient norms"),
        probe_every: int = typer.Option(50, "--probe-every", help="steps between probe records"),
        out: Path = typer.Option(Path("runs/sweep"), help="sweep folder (one resumable folder per run)"),
    ) -> None:
        """Train over seeds and a grid; print paired differences against a baseline cell with 95 % intervals."""
        from normlens.cli.common import run_or_exit

        def job():
            import pandas as pd

            from normlens.models import ZooConfig
            from normlens.sweep import SweepConfig, run_sweep
            from normlens.train import TrainConfig

            model = ZooConfig(placement=placement, act_fn=act_fn, n_layers=n_layers, d_model=d_model,
                              n_heads=n_heads, n_ctx=n_ctx)
            train = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, eval_seqs=eval_seqs,
                                eval_seed=eval_seed)
            axes = parse_grid(grid, model, train)
            config = SweepConfig(model=model, train=train, seeds=_int_list(seeds, "--seeds"), grid=axes,
                                 data=data, split_seed=split_seed)
            base = parse_grid([baseline], model, train) if baseline else None
            if base is not None:
                base = {k: v[0] for k, v in base.items()}
            factory = None
            if probes:
                from normlens.train_probes import default_training_probes as factory
            result = run_sweep(config, out, probes=factory, every=probe_every, log=typer.echo)
            table = result.paired_differences(baseline=base)
            with pd.option_context("display.width", 160, "display.max_columns", 20):
                typer.echo(result.cell_summary()[["cell", "n_runs", "n_diverged", "estimate", "low", "high"]]
                           .rename(columns={"estimate": "mean"}).to_string(index=False, float_format="%.4f"))
                typer.echo("")
                typer.echo(table[["cell", "baseline", "n_pairs", "estimate", "low", "high", "method"]]
                           .rename(columns={"estimate": "mean difference"}).to_string(index=False, float_format="%.4f"))
            return out

        run_or_exit(job)
        typer.echo(f"runs and sweep_result.json in {out}")
