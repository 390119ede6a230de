"""Shared CLI plumbing: input errors as one line and exit code 2, and the pre-flight checks
every verb runs before its work (output location, free disk space, memory)."""
from __future__ import annotations

from typing import Callable, TypeVar

import typer

from normlens.resources import (  # noqa: F401  (the verbs' pre-flight checks)
    MB, PreflightError, available_memory, check_free_space, check_output_file, check_output_folder, format_bytes,
    require_memory,
)

T = TypeVar("T")

__all__ = ["MB", "PreflightError", "available_memory", "check_free_space", "check_output_file",
           "check_output_folder", "format_bytes", "input_errors", "require_memory", "run_or_exit"]


def input_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "bad input", whose messages name the fix.

    Our own (ConfigError, DataError, CheckpointError, ModelLoadError, GridMismatchError,
    PreflightError, ...) all subclass ValueError.
    """
    return (ValueError, FileNotFoundError)


def run_or_exit(job: Callable[[], T]) -> T:
    """Run ``job``; on bad input print ``error: <message>`` and exit with code 2."""
    try:
        return job()
    except input_errors() as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None
