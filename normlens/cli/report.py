"""`normlens report RESULTS_DIR`: render a saved results folder again, recomputing nothing."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from normlens.cli.common import run_or_exit


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)


def report_command(
    results: Path = typer.Argument(..., help="a results folder: a study's NAME_data/ or a verb's --out"),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="where to write the page (default: where the run wrote it)"),
) -> None:
    """Re-render the report of a study or verb from its saved data (identical to the run's own page)."""
    from normlens.study import rerender

    path = run_or_exit(lambda: rerender(results, out))
    typer.echo(f"wrote {path}")
