"""`normlens landscape SPEC`: a loss surface around a checkpoint or Hugging Face model.

Works under ``torchrun --nproc_per_node N -m normlens.cli landscape ...`` too:
grid cells are split across ranks and rank 0 writes the outputs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import typer
from tqdm.auto import tqdm

AXES = ("random", "hessian", "pca", "interpolate")
LANDSCAPE_OUTPUT_BYTES = 32 << 20  # surface, grid, metrics, PNGs and the report, before the directions


def parse_range(text: str) -> tuple[float, float]:
    """"-0.5,1.5" -> (-0.5, 1.5)."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--range must be two numbers 'LO,HI' such as '-0.5,1.5', got {text!r}") from None
    return lo, hi


def build_directions(model, tokens, *, axes: str, dims: int, normalization: str, one_d: str, seed: int,
                     other=None, trajectory: Sequence = (), directions_file: Optional[Path] = None):
    """The Directions the options ask for (loaded from ``directions_file`` if given)."""
    from normlens.landscape import (
        Directions, hessian_directions, interpolation_direction, pca_directions, random_directions,
    )

    if directions_file is not None:
        directions = Directions.load(directions_file)
        directions.check_fits(model)
        return directions
    if axes not in AXES:
        raise ValueError(f"--axes must be one of {', '.join(AXES)}, got {axes!r}")
    if dims not in (1, 2):
        raise ValueError(f"--dims must be 1 or 2, got {dims}")
    if axes == "random":
        return random_directions(model, dims, normalization=normalization, one_d=one_d, seed=seed,
                                 eval_items=tokens)
    one_d_rule = "zero" if one_d == "zero" else "included"  # the other axes have no "copy"
    if axes == "hessian":
        return hessian_directions(model, tokens, k=dims, one_d=one_d_rule, seed=seed)
    if axes == "pca":
        if len(trajectory) < 2:
            raise ValueError("--axes pca needs at least two --trajectory checkpoints (SPEC is the last point)")
        return pca_directions([*trajectory, model], one_d=one_d_rule)
    if other is None:
        raise ValueError("--axes interpolate needs --other SPEC, the model at coefficient 1")
    return interpolation_direction(model, other, one_d=one_d_rule)


def run_landscape(model, tokens, out: Path, *, axes: str = "random", dims: int = 2, span: float = 1.0,
                  value_range: Optional[tuple[float, float]] = None, resolution: int = 21,
                  normalization: str = "filter", one_d: str = "zero", seed: int = 0, other=None,
                  trajectory: Sequence = (), directions_file: Optional[Path] = None,
                  grid_file: Optional[Path] = None, log_scale: bool = False, memory_mb: int = 128,
                  model_name: str = "", eval_name: str = "", accuracy: bool = False) -> Path:
    """Compute, save and plot a landscape of ``model`` over ``tokens``; returns ``out``.

    Writes ``landscape.npz`` (the surface), ``metrics.json``, ``directions.safetensors``,
    ``manifest.json``, then ``report.html`` and PNG plots rendered from those files under ``out``;
    ``grid_file`` (default ``out/grid.npz``) makes the run resumable.
    """
    import time

    from normlens.io import write_json
    from normlens.landscape import axis_coordinates, compute_landscape, compute_metrics
    from normlens.landscape.distributed import world
    from normlens.landscape.params import parameters_of
    from normlens.parameters import check_finite
    from normlens.report.build import publish_results
    from normlens.report.manifest import SectionRef, collect_provenance

    if value_range is None and not span > 0:
        raise ValueError(f"--span must be positive, got {span}")
    start = time.perf_counter()
    # the checks compute_landscape makes, before the directions (a Hessian's Lanczos) are built
    check_finite(parameters_of(model))
    if other is not None:
        check_finite(parameters_of(other), "the --other model")

    def checked_range(kind: str) -> tuple[float, float]:
        lo, hi = value_range or ((-0.25, 1.25) if kind == "interpolation" else (-span, span))
        axis_coordinates(lo, hi, resolution)  # the grid's own errors (resolution, range), before any work
        return lo, hi

    if directions_file is None:
        checked_range("interpolation" if axes == "interpolate" else axes)
    directions = build_directions(model, tokens, axes=axes, dims=dims, normalization=normalization,
                                  one_d=one_d, seed=seed, other=other, trajectory=trajectory,
                                  directions_file=directions_file)
    lo_hi = checked_range(directions.kind)
    out = Path(out)
    bar = tqdm(desc="landscape", unit="chunk", disable=world()[0] != 0, leave=False)

    def advance(chunk: int, n_chunks: int) -> None:
        bar.total = n_chunks  # resumed chunks are not computed again, so the bar may end early
        bar.update(1)

    try:
        result = compute_landscape(
            model, directions, tokens, span=lo_hi,
            resolution=resolution, memory_bytes=memory_mb << 20, grid_file=grid_file or out / "grid.npz",
            model_name=model_name, eval_name=eval_name, accuracy=accuracy, on_chunk=advance,
        )
    finally:
        bar.close()
    if world()[0] != 0:
        return out
    result.save(out / "landscape.npz")
    directions.save(out / "directions.safetensors")
    (out / "metrics.json").unlink(missing_ok=True)  # an earlier run's metrics would be drawn with this surface
    if min(len(c) for c in result.coords) >= 3:
        reach = min(max(abs(lo), abs(hi)) for lo, hi in result.ranges)
        metrics = compute_metrics(result, radii=(reach / 2, reach), n_side=1,
                                  model=model, directions=directions, eval_items=tokens)
        metrics.save(out / "metrics.json")
    write_json(out / "section.json", {"model_name": model_name, "log_scale": log_scale})
    config = {"model": model_name, "axes": axes, "dims": dims, "span": span,
              "range": list(value_range) if value_range is not None else None, "resolution": resolution,
              "normalization": normalization, "one_d": one_d, "eval": eval_name, "accuracy": accuracy,
              "log_scale": log_scale, "directions_file": str(directions_file) if directions_file else None}
    provenance = collect_provenance(device=str(tokens.device), seeds={"seed": seed},
                                    wall_seconds={"total": time.perf_counter() - start}, config=config)
    publish_results(out, kind="landscape", title=f"normlens landscape: {model_name or 'model'}",
                    sections=[SectionRef("landscape")], provenance=provenance, pngs=True)
    return out


def register(app: typer.Typer) -> None:
    @app.command("landscape")
    def landscape(
        spec: str = typer.Argument(..., help="checkpoint folder written by `normlens train`, or a HF model name"),
        out: Path = typer.Option(Path("landscape-out"), "--out", help="folder for the surface, metrics and plots"),
        axes: str = typer.Option("random", "--axes", help="random | hessian | pca | interpolate"),
        dims: int = typer.Option(2, "--dims", help="1 or 2 axes (random and hessian)"),
        span: float = typer.Option(1.0, "--span", help="coefficients from -SPAN to SPAN on every axis"),
        value_range: Optional[str] = typer.Option(None, "--range", help="'LO,HI' instead of --span (must contain 0)"),
        resolution: int = typer.Option(21, "--resolution", help="points per axis; the grid contains 0, so odd "
                                       "for a range symmetric about 0 (e.g. --span), >= 3 across 0"),
        normalization: str = typer.Option("filter", "--normalization", help="filter | layer | none (random axes)"),
        one_d: str = typer.Option("zero", "--one-d", help="1-D parameters (biases, gains, DyT alpha): zero | copy"),
        seed: int = typer.Option(0, "--seed", help="seed of the random directions and data windows"),
        other: Optional[str] = typer.Option(None, "--other", help="--axes interpolate: the model at coefficient 1"),
        trajectory: list[str] = typer.Option([], "--trajectory", help="--axes pca: earlier checkpoints, in order"),
        directions_file: Optional[Path] = typer.Option(None, "--directions", help="reuse saved directions"),
        grid_file: Optional[Path] = typer.Option(None, "--grid-file", help="resumable grid file (default OUT/grid.npz)"),
        eval_source: str = typer.Option("embedded", "--eval", help="evaluation text: embedded | FILE | hf:NAME"),
        n_seq: int = typer.Option(16, "--n-seq", help="evaluation sequences"),
        n_ctx: int = typer.Option(0, "--n-ctx", help="tokens per sequence (0: the model's context)"),
        log_scale: bool = typer.Option(False, "--log-scale", help="log colour/y scale"),
        memory_mb: int = typer.Option(128, "--memory-mb", help="memory bound for batched evaluation, MB (>= 1)"),
        accuracy: bool = typer.Option(False, "--accuracy", help="also record next-token accuracy per cell"),
    ) -> None:
        """Loss landscape: filter-normalized random, Hessian, PCA or interpolation axes."""
        from normlens.cli.common import check_free_space, check_output_file, check_output_folder, run_or_exit

        def job() -> Path:
            from normlens.data import corpus_for_model, eval_windows
            from normlens.landscape.distributed import init_from_env
            from normlens.models.loading import load_model

            if n_seq < 1:
                raise ValueError(f"--n-seq must be at least 1 (the evaluation set is empty), got {n_seq}")
            if memory_mb < 1:
                raise ValueError(f"--memory-mb must be at least 1 (MB for the batched evaluation), got {memory_mb}")
            check_output_folder(out, LANDSCAPE_OUTPUT_BYTES)
            if grid_file is not None:
                check_output_file(grid_file, LANDSCAPE_OUTPUT_BYTES, option="--grid-file")
            init_from_env()
            model = load_model(spec).eval()
            # the saved directions: dims float32 vectors of the model's size
            check_free_space(out, LANDSCAPE_OUTPUT_BYTES + 4 * dims * sum(p.numel() for p in model.parameters()))
            ctx = n_ctx or int(model.cfg.n_ctx)
            if not 2 <= ctx <= model.cfg.n_ctx:
                raise ValueError(f"--n-ctx {ctx} must lie in 2..{model.cfg.n_ctx} for this model")
            tokens = eval_windows(corpus_for_model(model, eval_source, seed=seed), n_seq=n_seq, n_ctx=ctx,
                                  seed=seed)
            return run_landscape(
                model, tokens, out, axes=axes, dims=dims, span=span,
                value_range=parse_range(value_range) if value_range else None, resolution=resolution,
                normalization=normalization, one_d=one_d, seed=seed,
                other=load_model(other).eval() if other else None,
                trajectory=[load_model(t).eval() for t in trajectory], directions_file=directions_file,
                grid_file=grid_file, log_scale=log_scale, memory_mb=memory_mb, model_name=spec,
                eval_name=f"{eval_source}: {n_seq}×{ctx}", accuracy=accuracy,
            )

        written = run_or_exit(job)
        from normlens.landscape.distributed import world

        if world()[0] == 0:  # under torchrun only rank 0 writes
            typer.echo(f"wrote the landscape to {written}")
