"""Train a zoo model on a token stream: AdamW, warmup + cosine, clipping, validation.

A run that diverges (non-finite loss or gradient norm, as norm-free models
do) stops, and its result says so with the step; it never raises. With a
``checkpoint_dir`` the run commits its whole state (weights, optimizer, RNG,
history) as one unit every ``checkpoint_every`` steps and at the end
(:mod:`normlens.train_state`), and a second call with the same folder resumes
it, after checking that the model, the training settings, the data and the
training probes are the ones it was written for; a finished run is returned
without training again.

Validation losses are measured on a fixed evaluation set: ``eval_seqs``
windows of the validation split drawn with ``eval_seed``, independent of the
training seed, so runs with different seeds are compared on the same tokens.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from normlens import train_state as ST
from normlens.data.corpus import TokenSplits, eval_windows, token_windows
from normlens.io import as_json_value, read_json, write_json
from normlens.losses import next_token_loss
from normlens.models.checkpoint import model_tensors, save_checkpoint
from normlens.models.zoo import count_parameters, get_config
from normlens.train_probes import Measurement, TrainingProbe, split_key


class TrainConfigError(ValueError):
    """Training settings that cannot be used; the message names the fix."""


_INT_FIELDS = {"steps": 1, "batch_size": 1, "warmup_steps": 0, "eval_every": 1, "eval_seqs": 1,
               "checkpoint_every": 1, "seed": 0, "eval_seed": 0}


@dataclass(frozen=True)
class TrainConfig:
    """Optimization settings. The learning rate warms up linearly for
    ``warmup_steps``, then follows a cosine down to ``lr * min_lr_ratio``.

    ``seed`` draws the training batches; ``eval_seed`` draws the fixed
    evaluation set (``eval_seqs`` windows of the validation split, 128 by
    default: 128 x n_ctx tokens), independently of ``seed``. ``grad_clip`` 0
    turns clipping off.
    """

    steps: int = 300
    batch_size: int = 16
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_seqs: int = 128
    eval_seed: int = 0
    checkpoint_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in _INT_FIELDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise TrainConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("lr", "min_lr_ratio", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                    or not math.isfinite(value):
                raise TrainConfigError(f"{name} must be a finite number, got {value!r}")
        if not self.lr > 0:
            raise TrainConfigError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise TrainConfigError(f"min_lr_ratio must lie in [0, 1] (the final lr over the peak lr), "
                                   f"got {self.min_lr_ratio}")
        if self.weight_decay < 0:
            raise TrainConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.grad_clip < 0:
            raise TrainConfigError(f"grad_clip must be >= 0 (0 turns clipping off), got {self.grad_clip}")
        betas = self.betas
        if (not isinstance(betas, (tuple, list)) or len(betas) != 2
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                           for b in betas)):
            raise TrainConfigError(f"betas must be two numbers in [0, 1) (Adam's decay rates), got {betas!r}")
        object.__setattr__(self, "betas", (float(betas[0]), float(betas[1])))

    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        floor = self.lr * self.min_lr_ratio
        return floor + 0.5 * (self.lr - floor) * (1 + math.cos(math.pi * progress))

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainConfigError(f"unknown TrainConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**data)


class TrainResultError(ValueError):
    """A training history that cannot be read; the message names the file and the fix."""


@dataclass
class TrainResult:
    """The history of one training run, as data.

    ``steps``/``train_loss``/``grad_norm``/``lr`` have one entry per optimizer
    step (``grad_norm`` before clipping); ``val_steps``/``val_loss`` one per
    evaluation (after ``val_steps[i]`` updates). ``data`` names the corpus and
    its fingerprint. ``probes`` holds the training probes' records::

        {probe name: {"steps": [k, ...],          # after k updates
                      "values": {metric: [v_k, ...]},   # floats, or nested lists
                      "axes": {metric: [[labels of axis 0], ...]}}}

    with array metrics named ``"name[axis,...]"`` (see :meth:`probe_series`,
    :meth:`probe_frame`). ``checkpoint_steps`` lists the kept checkpoints
    (``checkpoints/step-NNNNNN`` in the run folder).
    """

    name: str
    model_config: dict[str, Any]
    train_config: dict[str, Any]
    n_params: int
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    diverged: bool = False
    diverged_step: int | None = None
    wall_time_s: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)
    probes: dict[str, Any] = field(default_factory=dict)
    checkpoint_steps: list[int] = field(default_factory=list)

    @property
    def final_val_loss(self) -> float:
        return self.val_loss[-1] if self.val_loss else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"final_val_loss": self.final_val_loss}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainResult":
        """Rebuild from :meth:`to_dict`'s output; TrainResultError (one line) if it is not one."""
        if not isinstance(data, dict):
            raise TrainResultError(f"a training history is a JSON object, got {type(data).__name__}")
        missing = [k for k in ("name", "model_config", "train_config", "n_params") if k not in data]
        if missing:
            raise TrainResultError(f"the training history lacks {missing}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in fields}
        lists = ("steps", "train_loss", "grad_norm", "lr", "val_steps", "val_loss", "checkpoint_steps")
        for name in lists:
            if name in kwargs and not isinstance(kwargs[name], list):
                raise TrainResultError(f"the training history's {name!r} is not a list")
        for name in ("model_config", "train_config", "data", "probes"):
            if name in kwargs and not isinstance(kwargs[name], dict):
                raise TrainResultError(f"the training history's {name!r} is not an object")
        if len(kwargs.get("steps", [])) != len(kwargs.get("train_loss", [])) or \
                len(kwargs.get("val_steps", [])) != len(kwargs.get("val_loss", [])):
            raise TrainResultError("the training history's step and loss lists differ in length")
        return cls(**kwargs)

    def probe_series(self, probe: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one probe metric; values are (n_records, *axes), NaN where missing."""
        if probe not in self.probes:
            raise KeyError(f"no training probe {probe!r}; recorded: {sorted(self.probes)}")
        record = self.probes[probe]
        if metric not in record["values"]:
            raise KeyError(f"probe {probe!r} has no metric {metric!r}; it has {sorted(record['values'])}")
        values = record["values"][metric]
        shape = next((np.shape(v) for v in values if v is not None), ())
        rows = [np.full(shape, np.nan) if v is None else np.asarray(v, dtype=np.float64) for v in values]
        return np.asarray(record["steps"]), (np.stack(rows) if rows else np.zeros((0, *shape)))

    def probe_frame(self, probe: str) -> pd.DataFrame:
        """Tidy records of one probe: step, metric, one column per axis (labels), value."""
        record = self.probes.get(probe)
        if record is None:
            raise KeyError(f"no training probe {probe!r}; recorded: {sorted(self.probes)}")
        frames = []
        for key in record["values"]:
            metric, axes = split_key(key)
            steps, values = self.probe_series(probe, key)
            labels = record.get("axes", {}).get(key) or [list(range(n)) for n in values.shape[1:]]
            grids = np.meshgrid(*[np.arange(n) for n in values.shape[1:]], indexing="ij")
            for i, step in enumerate(steps):
                part = {"step": int(step), "metric": metric, "value": values[i].ravel()}
                for axis, grid, names in zip(axes, grids, labels):
                    part[axis] = [names[j] for j in grid.ravel()]
                frames.append(pd.DataFrame(part))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["step", "metric", "value"])


def load_train_result(path: str | Path) -> TrainResult:
    """Read a ``train_result.json``; a missing or damaged file is one TrainResultError line."""
    path = Path(path)
    try:
        return TrainResult.from_dict(read_json(path))
    except FileNotFoundError:
        raise TrainResultError(f"{str(path)!r} does not exist; train first with `normlens train --out "
                               f"{str(path.parent)!r}`") from None
    except (OSError, ValueError, UnicodeDecodeError, TypeError) as error:
        reason = error if isinstance(error, TrainResultError) else type(error).__name__
        raise TrainResultError(f"{str(path)!r} is not a normlens training history ({reason}); run "
                               f"`normlens train` again with --out {str(path.parent)!r} to rewrite it") from None


def data_fingerprint(splits: TokenSplits) -> dict[str, Any]:
    """The corpus a run trains on: name, token counts and a SHA-256 of both token streams."""
    digest = hashlib.sha256(f"vocab={splits.vocab_size}".encode())
    for part in (splits.train, splits.val):
        array = part.detach().cpu().to(torch.int64).contiguous().numpy()
        digest.update(f"|{array.size}|".encode())
        digest.update(array.astype("<i8", copy=False).tobytes())
    return {"name": splits.name, "sha256": digest.hexdigest(), "vocab_size": int(splits.vocab_size),
            "n_train_tokens": int(splits.train.numel()), "n_val_tokens": int(splits.val.numel())}


@torch.no_grad()
def evaluate(model: TransformerBridge, tokens: torch.Tensor, batch_size: int = 16) -> float:
    """Mean next-token loss over (n_seq, n_ctx) ``tokens``, in eval mode, restoring the mode."""
    was_training = model.training
    model.eval()
    try:
        total, count = 0.0, 0
        for start in range(0, tokens.shape[0], batch_size):
            batch = tokens[start:start + batch_size]
            total += next_token_loss(model, batch).item() * batch.shape[0]
            count += batch.shape[0]
        return total / count
    finally:
        model.train(was_training)


def _grad_norm(model: torch.nn.Module, clip: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    return float(torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf")))


def checkpoint_path(folder: str | Path, step: int) -> Path:
    """Where ``train(..., keep_checkpoints=[step])`` keeps the model after ``step`` updates."""
    return Path(folder) / "checkpoints" / ST.step_name(step)


def _check_arguments(config: TrainConfig, probes: Sequence[TrainingProbe], every: int, probe_seqs: int,
                     keep_checkpoints: Sequence[int], folder: Path | None) -> list[int]:
    if not isinstance(config, TrainConfig):
        raise TrainConfigError(f"config must be a TrainConfig, got {type(config).__name__}")
    names = []
    for probe in probes:
        if not isinstance(probe, TrainingProbe):
            raise TrainConfigError(f"probes must be TrainingProbe instances (normlens.train_probes), got "
                                   f"{type(probe).__name__}; wrap a normlens probe in ResultProbe(...)")
        names.append(probe.name)
    if len(set(names)) != len(names):
        raise TrainConfigError(f"training probes need distinct names, got {names}")
    for name, value in (("every", every), ("probe_seqs", probe_seqs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TrainConfigError(f"{name} must be a positive integer, got {value!r}")
    if probes and probe_seqs > config.eval_seqs:
        raise TrainConfigError(f"probe_seqs={probe_seqs} exceeds eval_seqs={config.eval_seqs} (probes read "
                               "the first windows of the evaluation set); lower probe_seqs")
    for step in keep_checkpoints:
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= step <= config.steps:
            raise TrainConfigError(f"keep_checkpoints must be steps in [0, {config.steps}], got {step!r}")
    if len(keep_checkpoints) and folder is None:
        raise TrainConfigError("keep_checkpoints needs a checkpoint_dir to keep them in")
    return sorted({int(s) for s in keep_checkpoints})


def train(
    model: TransformerBridge,
    splits: TokenSplits,
    config: TrainConfig = TrainConfig(),
    *,
    name: str = "",
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    probes: Sequence[TrainingProbe] = (),
    every: int = 50,
    probe_seqs: int = 16,
    keep_checkpoints: Sequence[int] = (),
) -> TrainResult:
    """Train ``model`` in place on ``splits`` and return its history.

    The model ends in eval mode. With ``checkpoint_dir``, the state is committed
    every ``config.checkpoint_every`` steps and at the end, the final model is
    saved there (``model/``) with ``train_result.json``, and a second call
    resumes (or, for a finished run, returns the saved result and loads its
    weights into ``model``).

    Args:
        probes: training probes (:mod:`normlens.train_probes`); held-out ones read the
            first ``probe_seqs`` windows of the evaluation set after every ``every``
            updates (0, every, 2*every, ... and the last step), gradient ones read
            the training gradient of those steps (before clipping).
        keep_checkpoints: steps (updates done, 0 = initialization) whose model is kept
            in ``checkpoint_dir/checkpoints/step-NNNNNN`` (see :func:`checkpoint_path`).

    Raises:
        TrainConfigError, TrainStateError: bad settings, or a saved state written for
            another model, other settings or other data (one line, before training).
    """
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    keep = _check_arguments(config, probes, every, probe_seqs, keep_checkpoints, folder)
    model_config = get_config(model)
    n_ctx = model_config.n_ctx
    if splits.vocab_size > model_config.d_vocab:
        raise ValueError(f"the corpus has vocabulary {splits.vocab_size} but the model only "
                         f"{model_config.d_vocab}; build the model with d_vocab={splits.vocab_size}")
    val_tokens = eval_windows(splits, n_seq=config.eval_seqs, n_ctx=n_ctx, seed=config.eval_seed)
    data = data_fingerprint(splits)
    result = TrainResult(name or model_config.norm, model_config.to_dict(), config.to_dict(),
                         count_parameters(model), data=data)
    identity = as_json_value({
        "model_config": model_config.to_dict(), "train_config": config.to_dict(),
        "data": {k: data[k] for k in ("sha256", "vocab_size", "n_train_tokens", "n_val_tokens")},
        "probes": {"probes": [p.describe() for p in probes], "every": every if probes else None,
                   "probe_seqs": probe_seqs if probes else None, "keep_checkpoints": keep},
    })
    run = _Run(model, splits, config, result, folder, identity, probes, every, val_tokens, probe_seqs, keep)
    if folder is None:
        return run.fit(progress)
    model_bytes = sum(t.numel() * t.element_size() for t in model_tensors(model).values())
    # a commit holds the old and the new state (weights + two Adam moments each), then the final
    # model and the kept checkpoints; 1 MiB for the histories
    ST.check_writable(folder, need_bytes=model_bytes * (2 * 3 + 1 + len(keep)) + 2**20)
    with ST.run_lock(folder):
        ST.clean_stale(folder)
        return run.fit(progress)


class _Run:
    """One call of :func:`train`: the loop, the probes and the writes."""

    def __init__(self, model, splits, config, result, folder, identity, probes, every, val_tokens,
                 probe_seqs, keep):
        self.model, self.splits, self.config, self.result = model, splits, config, result
        self.folder, self.identity, self.every, self.keep = folder, identity, every, keep
        self.held_out = [p for p in probes if not p.reads_gradients]
        self.gradient = [p for p in probes if p.reads_gradients]
        self.val_tokens, self.probe_tokens = val_tokens, val_tokens[:probe_seqs]
        self.generator = torch.Generator().manual_seed(config.seed)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=config.betas,
                                           weight_decay=config.weight_decay)

    # -- state ------------------------------------------------------------------------
    def _resume(self) -> tuple[int, bool]:
        saved = ST.read_state(self.folder)
        if saved is None:
            return 0, False
        problem = ST.identity_mismatch(saved.identity, self.identity)
        if problem:
            raise ST.refuse(self.folder, problem)
        try:
            history = TrainResult.from_dict(saved.history)
        except TrainResultError as error:
            raise ST.refuse(self.folder, f"has a damaged history ({error})") from None
        n_records = saved.step + (1 if history.diverged else 0)
        if history.steps != list(range(n_records)) or saved.step > self.config.steps:
            raise ST.refuse(self.folder, f"holds a history of {len(history.steps)} steps for step {saved.step}")
        from safetensors.torch import load_file

        weights = load_file(str(saved.model_path / "model.safetensors"))
        tensors = model_tensors(self.model)
        if set(weights) != set(tensors) or any(weights[k].shape != t.shape for k, t in tensors.items()):
            raise ST.refuse(self.folder, "holds weights that do not fit this model")
        with torch.no_grad():
            for key, tensor in tensors.items():
                tensor.copy_(weights[key])
        if not saved.done:
            trainer = saved.load_trainer()
            if trainer.get("step") != saved.step:
                raise ST.refuse(self.folder, f"has optimizer state for step {trainer.get('step')}")
            self.optimizer.load_state_dict(trainer["optimizer"])
            self.generator.set_state(trainer["generator"])
            if "torch_rng" in trainer:
                torch.set_rng_state(trainer["torch_rng"])
        kept = dataclasses.replace(history, name=self.result.name, data=self.result.data)
        self.result = kept
        return saved.step, saved.done

    def _commit(self, step: int, done: bool) -> None:
        self.result.wall_time_s = time.perf_counter() - self.started
        trainer = {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                   "torch_rng": torch.get_rng_state()}
        ST.write_state(self.folder, step=step, done=done, model=self.model, trainer=trainer,
                       history=self.result.to_dict(), identity=self.identity)

    def _keep_checkpoint(self, step: int) -> None:
        with ST.replaced_folder(checkpoint_path(self.folder, step)) as tmp:
            save_checkpoint(self.model, tmp, extra={"step": step, "train_result": self.result.name})
        if step not in self.result.checkpoint_steps:
            self.result.checkpoint_steps.append(step)

    def _write_outputs(self, step: int) -> None:
        with ST.replaced_folder(self.folder / "model") as tmp:
            save_checkpoint(self.model, tmp, extra={"train_result": self.result.name, "step": step})
        write_json(self.folder / "train_result.json", self.result.to_dict())

    # -- probes -----------------------------------------------------------------------
    def _record(self, probe: TrainingProbe, step: int, reading: Measurement) -> None:
        if not isinstance(reading, Measurement):
            raise TypeError(f"training probe {probe.name!r} returned {type(reading).__name__}, not a Measurement")
        record = self.result.probes.setdefault(probe.name, {"steps": [], "values": {}, "axes": {}})
        n_before = len(record["steps"])
        record["steps"].append(step)
        for key, value in reading.values.items():
            series = record["values"].setdefault(key, [None] * n_before)
            series.append(value.tolist() if isinstance(value, np.ndarray) else value)
            if key in reading.axes:
                record["axes"][key] = reading.axes[key]
        for series in record["values"].values():
            if len(series) < len(record["steps"]):
                series.append(None)

    def _measure_held_out(self, step: int) -> None:
        for probe in self.held_out:
            self._record(probe, step, probe.measure(self.model, self.probe_tokens))

    # -- the loop ---------------------------------------------------------------------
    def fit(self, progress: bool) -> TrainResult:
        model, config, result, folder = self.model, self.config, self.result, self.folder
        start_step, done = self._resume() if folder is not None else (0, False)
        result = self.result
        self.started = time.perf_counter() - result.wall_time_s
        if done:
            model.eval()
            self._write_outputs(start_step)
            return result
        val_tokens = self.val_tokens
        if start_step == 0 and 0 in self.keep:
            self._keep_checkpoint(0)
        model.train()
        bar = tqdm(range(start_step, config.steps), desc=f"train {result.name}", disable=not progress,
                   leave=False, initial=start_step, total=config.steps)
        n_ctx = get_config(model).n_ctx
        for step in bar:
            measuring = step % self.every == 0
            if measuring:
                self._measure_held_out(step)
            lr = config.lr_at(step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            batch = token_windows(self.splits.train, n_seq=config.batch_size, n_ctx=n_ctx,
                                  generator=self.generator)
            loss = next_token_loss(model, batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                _record_divergence(result, step, loss_value)
                break
            loss.backward()
            if measuring:
                for probe in self.gradient:
                    self._record(probe, step, probe.measure_gradients(model))
            grad_norm = _grad_norm(model, config.grad_clip)
            if not math.isfinite(grad_norm):
                _record_divergence(result, step, loss_value)
                break
            self.optimizer.step()
            result.steps.append(step)
            result.train_loss.append(loss_value)
            result.grad_norm.append(grad_norm)
            result.lr.append(lr)
            last = step == config.steps - 1
            if (step + 1) % config.eval_every == 0 or last:
                result.val_steps.append(step + 1)
                result.val_loss.append(evaluate(model, val_tokens))
                bar.set_postfix(loss=f"{loss_value:.3f}", val=f"{result.val_loss[-1]:.3f}")
            if folder is not None and step + 1 in self.keep:
                self._keep_checkpoint(step + 1)
            if folder is not None and (step + 1) % config.checkpoint_every == 0 and not last:
                self._commit(step + 1, done=False)
        else:  # finished without diverging: the held-out probes read the final model too
            if self.held_out:
                self._measure_held_out(config.steps)
        bar.close()
        model.eval()
        result.wall_time_s = time.perf_counter() - self.started
        if folder is not None:
            n_done = result.diverged_step if result.diverged else config.steps
            self._commit(n_done, done=True)
            self._write_outputs(n_done)
        return result


def _record_divergence(result: TrainResult, step: int, loss_value: float) -> None:
    result.diverged, result.diverged_step = True, step
    result.steps.append(step)
    result.train_loss.append(loss_value)
    result.grad_norm.append(float("nan"))
    result.lr.append(float("nan"))


def saved_state_mismatch(folder: str | Path, model_config, train_config: TrainConfig,
                         splits: TokenSplits | None = None) -> str | None:
    """Why the resumable state in ``folder`` cannot continue this run (None if it can or there is none).

    Checks the model config, the training settings and, with ``splits``, the
    data fingerprint (training probes and kept checkpoints are checked by
    :func:`train`). A state of an older layout or a damaged one is a reason too.
    """
    try:
        saved = ST.read_state(folder, verify_files=False)
    except ST.TrainStateError as error:
        return str(error)
    if saved is None:
        return None
    current = {"model_config": as_json_value(model_config.to_dict()),
               "train_config": as_json_value(dataclasses.asdict(train_config))}
    if splits is not None:
        fingerprint = data_fingerprint(splits)
        current["data"] = {k: fingerprint[k] for k in ("sha256", "vocab_size", "n_train_tokens", "n_val_tokens")}
    return ST.identity_mismatch({k: saved.identity.get(k) for k in current}, current)
