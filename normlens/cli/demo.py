"""`normlens demo`."""
from __future__ import annotations

from pathlib import Path

import typer

from normlens.cli.common import check_output_file, check_output_folder, run_or_exit


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)


def demo_command(
    out: Path = typer.Option(Path("reports/demo.html"), help="where the report is written"),
    steps: int = typer.Option(300, help="training steps per model"),
    seed: int = typer.Option(0),
    fresh: bool = typer.Option(False, help="retrain even if trained models are saved"),
) -> None:
    """Train the zoo (ln, rms, dyt, none, ln→lnfree) on the embedded corpus and write a report."""

    def job() -> None:
        import dataclasses

        from normlens.demo import DemoConfig, run_demo

        base = DemoConfig()
        config = dataclasses.replace(base, out=out, seed=seed, fresh=fresh,
                                     train=dataclasses.replace(base.train, steps=steps, seed=seed),
                                     removal=dataclasses.replace(base.removal, seed=seed))
        check_output_file(out, 64 << 20)  # the report and, beside it, five small models and their data
        check_output_folder(config.data_dir, 64 << 20, option="--out's data folder")
        run_demo(config)

    run_or_exit(job)
