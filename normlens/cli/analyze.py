"""`normlens analyze NAME`: run one study (found by entry point) and write its report."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from normlens.cli.common import run_or_exit


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze_command)


def analyze_command(
    name: Optional[str] = typer.Argument(None, help="the study to run (see --list)"),
    list_: bool = typer.Option(False, "--list", help="list the installed studies and exit"),
    full: bool = typer.Option(False, "--full/--quick",
                              help="--quick (default): minutes on 2 CPU cores; --full: larger models, for a GPU"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="report file (default reports/NAME.html)"),
    seed: int = typer.Option(0, "--seed", help="seed of training, data windows and every estimate"),
    fresh: bool = typer.Option(False, "--fresh", help="retrain even if checkpoints are saved"),
) -> None:
    """Run a study: its data go to OUT's folder as NAME_data/, its report (rendered from them) to OUT."""
    from normlens.study import StudyConfig, find_study, list_studies, run_study

    if list_:
        rows = list_studies()
        if not rows:
            typer.echo("no studies installed (reinstall normlens: pip install -e .)")
        width = max((len(n) for n, _ in rows), default=0)
        for study_name, description in rows:
            typer.echo(f"{study_name:<{width}}  {description}")
        return
    if name is None:
        typer.echo("error: name a study (normlens analyze --list shows them)", err=True)
        raise typer.Exit(code=2)

    def job() -> Path:
        study = find_study(name)
        mode = "full" if full else "quick"
        command = f"normlens analyze {name} --{mode}" + (f" --out {out}" if out else "") + f" --seed {seed}"
        return run_study(study, StudyConfig(mode=mode, seed=seed, fresh=fresh), out, command=command)

    run_or_exit(job)
