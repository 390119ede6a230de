"""`normlens demo`: the zoo study (``normlens analyze zoo``) with the report at reports/demo.html."""
from __future__ import annotations

from pathlib import Path

import typer

from normlens.cli.common import run_or_exit


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)


def demo_command(
    out: Path = typer.Option(Path("reports/demo.html"), help="where the report is written"),
    steps: int = typer.Option(300, help="training steps per model"),
    seed: int = typer.Option(0),
    fresh: bool = typer.Option(False, help="retrain even if trained models are saved"),
) -> None:
    """Train the zoo (LayerNorm, RMSNorm, DyT, no norm, LN removed) on the embedded corpus and write a report."""

    def job() -> Path:
        from normlens.study import StudyConfig, find_study, run_study

        if steps < 1:
            raise ValueError(f"--steps must be at least 1, got {steps}")
        command = f"normlens demo --out {out} --steps {steps} --seed {seed}" + (" --fresh" if fresh else "")
        return run_study(find_study("zoo"), StudyConfig(mode="quick", seed=seed, fresh=fresh,
                                                        options={"steps": steps}), out, command=command)

    run_or_exit(job)
