"""Shared CLI plumbing: input errors as one line and exit code 2, and the pre-flight checks
every verb runs before its work (output location, free disk space, memory)."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

import typer

T = TypeVar("T")

MB = 1 << 20


class PreflightError(ValueError):
    """A verb's output location, disk space or memory cannot serve the run; the message names the fix."""


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


def _size(n_bytes: float) -> str:
    return f"{n_bytes / MB:.0f} MB" if n_bytes < 10 * 1024 * MB else f"{n_bytes / (1024 * MB):.1f} GB"


def _existing_ancestor(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing parent folder."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable_folder(folder: Path, option: str, target: Path) -> None:
    """Create and remove a scratch folder in ``folder``: proves it accepts new files (read-only
    mounts, immutable folders and permissions all show here, also for root)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".normlens-write-check-", dir=folder))
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise PreflightError(f"{option} {target}: cannot write in {folder} ({reason}); "
                             f"choose a writable location for {option}") from None


def check_free_space(path: Path, need_bytes: int, option: str = "--out") -> None:
    """Refuse when the file system holding ``path`` has less than ``need_bytes`` free."""
    base = _existing_ancestor(Path(path))
    free = shutil.disk_usage(base).free
    if free < need_bytes:
        raise PreflightError(f"{option} {path}: {_size(free)} free on its disk, and this run writes about "
                             f"{_size(need_bytes)}; free some space or choose another {option}")


def check_output_folder(path: Path, need_bytes: int = 16 * MB, option: str = "--out") -> Path:
    """Check, before any work, that ``path`` can be the run's output folder.

    It must be a folder or not exist yet (an existing file is refused), the
    nearest existing folder on its path must accept new files, and its disk
    must have ``need_bytes`` free. Nothing is created.

    Raises:
        PreflightError: one line naming the path, what is wrong and the fix.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PreflightError(f"{option} {path} is an existing file; {option} takes a folder: "
                             "give a new or existing folder path")
    base = _existing_ancestor(path)
    if not base.is_dir():
        raise PreflightError(f"{option} {path}: {base} on its path is a file, not a folder; "
                             f"choose another {option}")
    _check_writable_folder(base, option, path)
    check_free_space(path, need_bytes, option)
    return path


def check_output_file(path: Path, need_bytes: int = 16 * MB, option: str = "--out") -> Path:
    """Check, before any work, that a file can be written at ``path`` (not a folder, writable, space)."""
    path = Path(path)
    if path.is_dir():
        raise PreflightError(f"{option} {path} is a folder; {option} takes a file path, "
                             f"e.g. {path / 'report.html'}")
    base = _existing_ancestor(path.parent)
    if not base.is_dir():
        raise PreflightError(f"{option} {path}: {base} on its path is a file, not a folder; "
                             f"choose another {option}")
    _check_writable_folder(base, option, path)
    check_free_space(path, need_bytes, option)
    return path


def available_memory_bytes() -> int | None:
    """Memory the system can give a new allocation without swapping (Linux MemAvailable), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(need_bytes: float, what: str, fix: str) -> None:
    """Refuse (one line, with the estimate) when ``need_bytes`` exceeds the available memory."""
    available = available_memory_bytes()
    if available is not None and need_bytes > available:
        raise PreflightError(f"{what} needs about {_size(need_bytes)} of memory but {_size(available)} "
                             f"is available; {fix}")


def zoo_parameter_count(config) -> int:
    """Parameters of a zoo model from its config alone (no allocation): embeddings, per block
    attention (4 d² + 4 d), MLP (2 d d_mlp + d_mlp + d), two norms (4 d), final norm, unembedding;
    exact for LayerNorm models, within a few norm parameters per block for the other norms."""
    d, d_mlp = config.d_model, config.resolved_d_mlp
    per_block = 4 * d * d + 4 * d + 2 * d * d_mlp + d_mlp + d + 4 * d
    return config.d_vocab * d + config.n_ctx * d + config.n_layers * per_block + 2 * d + d * config.d_vocab
