"""The `normlens` command line: one verb per job, `normlens --help` lists them."""
from __future__ import annotations

import importlib

import typer

from normlens.cli.common import run_or_exit

app = typer.Typer(
    name="normlens",
    help="Probes, curvature and loss landscapes for normalized and norm-free transformers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each verb lives in its own module with a register(app) function.
VERB_MODULES = ("train", "sweep", "demo", "analyze", "report", "probe", "hessian", "landscape")


def _register_verbs() -> None:
    for verb in VERB_MODULES:
        importlib.import_module(f"normlens.cli.{verb}").register(app)


_register_verbs()


def main() -> None:
    app()


__all__ = ["app", "main", "run_or_exit"]
