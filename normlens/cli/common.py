"""Shared CLI plumbing: turn our input errors into one line and exit code 2."""
from __future__ import annotations

from typing import Callable, TypeVar

import typer

T = TypeVar("T")


def input_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "bad input", whose messages name the fix.

    Our own (ConfigError, DataError, CheckpointError, ModelLoadError, GridMismatchError, ...)
    all subclass ValueError.
    """
    return (ValueError, FileNotFoundError)


def run_or_exit(job: Callable[[], T]) -> T:
    """Run ``job``; on bad input print ``error: <message>`` and exit with code 2."""
    try:
        return job()
    except input_errors() as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None
