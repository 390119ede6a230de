"""The resumable state of a training run, committed as one unit.

Layout of a run folder (``checkpoint_dir``, the CLI's ``--out``)::

    state/current.json          the commit pointer: {"step", "folder", "done", ...}
    state/step-000200/          one complete state: model/, trainer.pt, history.json,
                                manifest.json (step, model/training config, data
                                fingerprint, probes, and size + SHA-256 of every file)
    checkpoints/step-000100/    kept checkpoints (``keep_checkpoints``), plain model folders
    model/, train_result.json   the final model and history, derived from the final state

A state is written into a hidden temporary folder, synced, renamed to
``step-NNNNNN`` and only then made current by an atomic rewrite of
``current.json``; the previous state folder is removed afterwards. A kill at
any moment leaves ``current.json`` naming a complete state (or no state at
all), never a mixture of two steps. Reading checks every file against the
manifest and every part's step against the pointer; the caller compares the
manifest's identity (model, training settings, data) with the run it is about
to continue. Leftovers of killed writes (hidden ``.*.tmp`` / ``.*.old``
entries, state folders nobody points to) are removed by :func:`clean_stale`.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from normlens.io import read_json, write_json

STATE_DIR = "state"
POINTER = "current.json"
MANIFEST = "manifest.json"
STATE_FORMAT = "normlens-train-state"
STATE_VERSION = 2
LOCK_FILE = ".normlens-train.lock"


class TrainStateError(ValueError):
    """A saved training state that cannot be used; the message names the folder and the fix."""


def state_folder(folder: str | Path) -> Path:
    return Path(folder) / STATE_DIR


def _restart_hint(folder: Path) -> str:
    return (f"pass another --out (checkpoint_dir), or delete {str(state_folder(folder))!r} "
            "to start this run from scratch")


# -- file plumbing -------------------------------------------------------------------

def _is_temporary(name: str) -> bool:
    """Hidden leftovers of an interrupted write: ``.name.XXXX.tmp`` (normlens.io) or ``.name.XXXX.old``."""
    return name.startswith(".") and (name.endswith(".tmp") or name.endswith(".old"))


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a folder and everything in it) to disk."""
    paths = sorted(path.rglob("*")) + [path] if path.is_dir() else [path]
    for item in paths:
        flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if item.is_dir() else 0)
        try:
            fd = os.open(item, flags)
        except OSError:  # folders cannot be opened on some systems
            continue
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def replaced_folder(target: str | Path) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``target``; on success it replaces ``target``.

    The new folder is synced, the old one renamed away (``.name.XXXX.old``),
    the new one renamed into place, then the old one removed. A kill in between
    leaves hidden leftovers that :func:`clean_stale` removes; ``target`` is
    either the complete old or the complete new folder, or (between the two
    renames) absent.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield tmp
        _fsync(tmp)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
            os.rmdir(old)
            os.rename(target, old)
        os.rename(tmp, target)
        _fsync(target.parent)
        if old is not None:
            _remove(old)
    finally:
        if tmp.exists():
            _remove(tmp)


def clean_stale(folder: str | Path) -> list[Path]:
    """Remove what interrupted writes left in a run folder; return the removed paths.

    Hidden ``.*.tmp`` / ``.*.old`` entries in the folder, its ``model/``,
    ``state/`` and ``checkpoints/`` (and each kept checkpoint), and state
    folders that ``current.json`` does not name. Nothing else is touched.
    """
    folder = Path(folder)
    removed: list[Path] = []
    places = [folder, folder / "model", folder / "checkpoints", state_folder(folder)]
    if (folder / "checkpoints").is_dir():
        places += [p for p in (folder / "checkpoints").iterdir() if p.is_dir()]
    for place in places:
        if not place.is_dir():
            continue
        for entry in place.iterdir():
            if _is_temporary(entry.name):
                _remove(entry)
                removed.append(entry)
    state = state_folder(folder)
    if state.is_dir():
        current = _read_pointer(folder, missing_ok=True)
        keep = {POINTER} | ({current["folder"]} if current else set())
        if current is None and (state / "trainer.pt").is_file():
            return removed  # an older layout: left for the resume check to report
        for entry in state.iterdir():
            if entry.name not in keep and entry.name.startswith("step-"):
                _remove(entry)
                removed.append(entry)
    return removed


@contextmanager
def run_lock(folder: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the run folder; refuse if another process holds it."""
    folder = Path(folder)
    try:
        import fcntl
    except ImportError:  # no advisory locks on this system: run unguarded
        yield
        return
    handle = open(folder / LOCK_FILE, "a")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise TrainStateError(f"another process is training into {str(folder)!r}; wait for it "
                                  "to finish or pass another --out (checkpoint_dir)") from None
        yield
    finally:
        handle.close()


def check_writable(folder: str | Path, *, need_bytes: int = 0) -> Path:
    """Create ``folder`` if needed and check that files can be written there and that
    ``need_bytes`` are free (one line if not), before any long computation."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise TrainStateError(f"--out {str(folder)!r} is a file, not a folder; pass a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise TrainStateError(f"cannot write into --out {str(folder)!r} ({error.strerror or error}); "
                              "pass a writable folder") from None
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise TrainStateError(f"--out {str(folder)!r} has {free / 2**20:.1f} MiB free but the run's states and "
                              f"checkpoints need about {need_bytes / 2**20:.1f} MiB; free space or pass "
                              "another --out")
    return folder


# -- hashing -------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_table(root: Path) -> dict[str, dict[str, Any]]:
    return {p.relative_to(root).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST}


# -- writing -------------------------------------------------------------------------

def step_name(step: int) -> str:
    return f"step-{step:06d}"


def write_state(folder: str | Path, *, step: int, done: bool, model: torch.nn.Module,
                trainer: dict[str, Any], history: dict[str, Any], identity: dict[str, Any]) -> Path:
    """Commit the complete training state at ``step`` (see the module docstring); return its folder.

    Args:
        trainer: optimizer state, generator state and the like, saved with ``torch.save``
            (read back with ``weights_only=True``: tensors and plain containers only).
        history: the run's history so far (JSON).
        identity: what a resume must match (model config, training config, data, probes).
    """
    from normlens.models.checkpoint import save_checkpoint

    folder = Path(folder)
    state = state_folder(folder)
    previous = _read_pointer(folder, missing_ok=True)
    name = step_name(step) + ("-done" if done else "")
    if previous and previous.get("folder") == name:  # never replace the folder the pointer names
        name += "-again"
    with replaced_folder(state / name) as tmp:
        save_checkpoint(model, tmp / "model", extra={"step": step})
        torch.save({**trainer, "step": step}, tmp / "trainer.pt")
        write_json(tmp / "history.json", {**history, "state_step": step})
        write_json(tmp / MANIFEST, {"format": STATE_FORMAT, "version": STATE_VERSION, "step": step,
                                    "done": done, "identity": identity, "files": _file_table(tmp)})
    write_json(state / POINTER, {"format": STATE_FORMAT, "version": STATE_VERSION, "step": step,
                                 "folder": name, "done": done})
    _fsync(state)
    if previous and previous.get("folder") != name:
        _remove(state / str(previous["folder"]))
    return state / name


# -- reading -------------------------------------------------------------------------

@dataclass
class SavedState:
    """A committed state as read back: weights, trainer state, history, and what it was made from."""

    folder: Path
    step: int
    done: bool
    identity: dict[str, Any]
    history: dict[str, Any]
    model_path: Path
    trainer_path: Path

    def load_trainer(self) -> dict[str, Any]:
        try:
            return torch.load(self.trainer_path, weights_only=True)
        except Exception as error:  # a damaged or foreign file: unpickling, zip and EOF errors
            raise TrainStateError(f"{str(self.trainer_path)!r} cannot be read ({type(error).__name__}); "
                                  f"{_restart_hint(self.folder.parent.parent)}") from None


def _read_pointer(folder: Path, *, missing_ok: bool = False) -> dict[str, Any] | None:
    path = state_folder(folder) / POINTER
    if not path.is_file():
        return None
    try:
        data = read_json(path)
        ok = (isinstance(data, dict) and data.get("format") == STATE_FORMAT
              and isinstance(data.get("step"), int) and isinstance(data.get("folder"), str)
              and data["folder"].startswith(step_name(data["step"]))
              and "/" not in data["folder"] and "\\" not in data["folder"] and ".." not in data["folder"])
    except (ValueError, UnicodeDecodeError, OSError):
        ok = False
    if not ok:
        if missing_ok:
            return None
        raise TrainStateError(f"{str(path)!r} is damaged or not a normlens training state; "
                              f"{_restart_hint(folder)}")
    return data


def has_state(folder: str | Path) -> bool:
    """Whether ``folder`` holds a saved training state (of this layout or an older one)."""
    state = state_folder(folder)
    return (state / POINTER).is_file() or (state / "trainer.pt").is_file()


def read_state(folder: str | Path, *, verify_files: bool = True) -> SavedState | None:
    """The committed state of the run folder ``folder``, checked; None if there is none.

    Raises:
        TrainStateError: an older layout, a damaged pointer or manifest, a file
            that differs from the manifest, or parts whose steps disagree.
    """
    folder = Path(folder)
    state = state_folder(folder)
    if not (state / POINTER).is_file():
        if (state / "trainer.pt").is_file():
            raise TrainStateError(f"{str(state)!r} was written by an older normlens (no {POINTER}; its "
                                  f"parts cannot be checked against each other); {_restart_hint(folder)}")
        return None
    pointer = _read_pointer(folder)
    step = pointer["step"]
    where = state / pointer["folder"]
    manifest_path = where / MANIFEST
    try:
        manifest = read_json(manifest_path)
        if not (isinstance(manifest, dict) and manifest.get("format") == STATE_FORMAT):
            raise ValueError("not a manifest")
        files = manifest["files"]
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError):
        raise TrainStateError(f"{str(manifest_path)!r} is missing or damaged; {_restart_hint(folder)}") from None
    if manifest.get("version", 0) > STATE_VERSION:
        raise TrainStateError(f"{str(where)!r} was written by a newer normlens (state version "
                              f"{manifest['version']}); upgrade normlens or {_restart_hint(folder)}")
    if manifest.get("step") != step or bool(manifest.get("done")) != bool(pointer.get("done")):
        raise TrainStateError(f"{str(manifest_path)!r} is for step {manifest.get('step')} but "
                              f"{POINTER} says {step}; {_restart_hint(folder)}")
    if verify_files:
        actual = _file_table(where)
        for name in sorted(set(files) | set(actual)):
            if files.get(name) != actual.get(name):
                state_of = "missing" if name not in actual else "changed or truncated"
                raise TrainStateError(f"{str(where / name)!r} is {state_of} since the state was "
                                      f"written; {_restart_hint(folder)}")
    try:
        history = read_json(where / "history.json")
        meta = read_json(where / "model" / "config.json")
        parts = {"history.json": history.get("state_step"),
                 "model/config.json": meta.get("extra", {}).get("step")}
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        raise TrainStateError(f"the state in {str(where)!r} is damaged; {_restart_hint(folder)}") from None
    for part, part_step in parts.items():
        if part_step != step:
            raise TrainStateError(f"{str(where / part)!r} is for step {part_step}, the state for step "
                                  f"{step}; {_restart_hint(folder)}")
    return SavedState(folder=where, step=step, done=bool(pointer.get("done")),
                      identity=manifest.get("identity", {}), history=history,
                      model_path=where / "model", trainer_path=where / "trainer.pt")


def identity_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first part of a run's identity that differs, as words; None when they match."""
    words = {"model_config": "another model", "train_config": "other training settings",
             "data": "other data", "probes": "other training probes or kept checkpoints"}
    for key, what in words.items():
        if saved.get(key) != current.get(key):
            detail = ""
            if isinstance(saved.get(key), dict) and isinstance(current.get(key), dict):
                changed = sorted(k for k in set(saved[key]) | set(current[key])
                                 if saved[key].get(k) != current[key].get(k))
                detail = f" ({', '.join(changed[:4])} differ)" if changed else ""
            return f"was written for {what}{detail}"
    return None


def refuse(folder: str | Path, problem: str) -> TrainStateError:
    """The one-line error for a state that cannot continue this run."""
    return TrainStateError(f"the saved training state in {str(state_folder(folder))!r} {problem}; "
                           f"{_restart_hint(Path(folder))}")
