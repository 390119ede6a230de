"""What a run needs from the machine, checked before the work: memory, free disk, a writable output.

Each check raises one line (:class:`PreflightError`, a ``ValueError``) naming the
path or the estimate and the fix; none allocates or creates anything.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

MB = 1 << 20


class PreflightError(ValueError):
    """An output location, disk or memory cannot serve the run; the message names the fix."""


def format_bytes(count: float) -> str:
    """1536 -> '1.5 KiB' (powers of 1024)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"  # pragma: no cover


def _cgroup_free() -> int | None:
    """memory.max - memory.current of this process's cgroup (v2), when it sets a limit."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as f:
            return int(limit) - int(f.read().strip())
    except (OSError, ValueError):
        return None


def available_memory(device: torch.device | str) -> int | None:
    """Bytes that can still be allocated on ``device`` (None when unknown).

    CUDA: ``torch.cuda.mem_get_info``; CPU: MemAvailable of /proc/meminfo
    (psutil elsewhere), lowered to the cgroup's limit when one is set.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    free = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
    except OSError:
        try:
            import psutil

            free = int(psutil.virtual_memory().available)
        except ImportError:
            return None
    limit = _cgroup_free()
    return free if limit is None or free is None else min(free, limit)


def require_memory(need_bytes: float, what: str, fix: str, device: torch.device | str = "cpu") -> None:
    """Refuse (one line, with the estimate) when ``need_bytes`` exceeds the memory available on ``device``."""
    available = available_memory(device)
    if available is not None and need_bytes > available:
        raise PreflightError(f"{what} needs about {format_bytes(need_bytes)} of memory but {format_bytes(available)} "
                             f"is available on {torch.device(device).type}; {fix}")


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
        raise PreflightError(f"{option} {path}: {format_bytes(free)} free on its disk, and this run writes about "
                             f"{format_bytes(need_bytes)}; free some space or choose another {option}")


def _check_location(path: Path, base: Path, need_bytes: int, option: str) -> None:
    """``base``, the nearest existing folder on ``path``'s way, is a folder that accepts new files
    on a disk with ``need_bytes`` free."""
    if not base.is_dir():
        raise PreflightError(f"{option} {path}: {base} on its path is a file, not a folder; "
                             f"choose another {option}")
    _check_writable_folder(base, option, path)
    check_free_space(path, need_bytes, option)


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
    _check_location(path, base, need_bytes, option)
    return path


def check_output_file(path: Path, need_bytes: int = 16 * MB, option: str = "--out") -> Path:
    """Check, before any work, that a file can be written at ``path`` (not a folder, writable, space)."""
    path = Path(path)
    if path.is_dir():
        raise PreflightError(f"{option} {path} is a folder; {option} takes a file path, "
                             f"e.g. {path / 'report.html'}")
    base = _existing_ancestor(path.parent)
    _check_location(path, base, need_bytes, option)
    return path
