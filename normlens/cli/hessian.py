"""`normlens hessian SPEC`: Hessian spectra of a checkpoint or a Hugging Face model.

Writes to the output folder: eigen.npz (top-k eigenpairs with residuals),
trace.npz, density.npz, blocks.npz, weight_spectra.npz, summary.json, manifest.json,
then report.html and PNG plots rendered from those files (``normlens report OUT`` redraws them).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from normlens.curvature.blocks import compute_block_spectra, transformer_blocks
from normlens.curvature.density import estimate_density
from normlens.hygiene import preserved_state
from normlens.curvature.lanczos import WHICH, compute_eigenpairs, plan_eigenpairs
from normlens.curvature.operators import METHODS, HessianOperator
from normlens.curvature.trace import estimate_trace
from normlens.curvature.weight_spectra import compute_weight_spectra
from normlens.io import write_json
from normlens.report.section import ReportSection


def run_hessian(
    model: nn.Module,
    tokens: torch.Tensor,
    out_dir: Path,
    *,
    name: str = "model",
    k: int = 5,
    which: str = "largest",
    params: Optional[str] = None,
    method: str = "auto",
    trace_matvecs: int = 30,
    density_probes: int = 2,
    density_steps: int = 40,
    blocks: bool = True,
    seed: int = 0,
    progress: bool = False,
    max_basis_bytes: Optional[int] = None,
) -> ReportSection:
    """Run every Hessian analysis on ``model`` over ``tokens``; save the data, then ``report.html`` and PNGs
    rendered from it, to ``out_dir``; return the report section.

    ``max_basis_bytes``: keep at most this much of each Lanczos basis in memory and spill the rest to a
    memory-mapped file in ``out_dir/lanczos-spill`` (removed afterwards); default: all in memory."""
    from normlens.report.build import publish_results
    from normlens.report.manifest import SectionRef, collect_provenance

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    n_layers = getattr(getattr(model, "cfg", None), "n_layers", None)
    stages = tqdm(total=5, desc="hessian", unit="stage", leave=False, disable=not progress)

    def stage(label: str, value):
        stages.set_postfix_str(label)
        stages.update(1)
        return value

    with preserved_state(model), stages:
        op = HessianOperator(model, tokens, params=params, method=method)
        spill = {"max_basis_bytes": max_basis_bytes, "spill_dir": out_dir / "lanczos-spill"} if max_basis_bytes else {}
        eigen = stage("eigenpairs", compute_eigenpairs(op, k, which=which, seed=seed, **spill))
        trace = stage("trace", estimate_trace(op, trace_matvecs, seed=seed))
        density = stage("density", estimate_density(op, n_probes=density_probes, n_steps=density_steps, **spill,
                                                    seed=seed))
        block = stage("blocks", (
            compute_block_spectra(model, tokens, blocks=transformer_blocks(n_layers), seed=seed, name=name)
            if blocks and n_layers is not None else None
        ))
        weights = stage("weight spectra", compute_weight_spectra(model))
    spill_folder = out_dir / "lanczos-spill"  # the spill files are unlinked at once; the folder goes too
    if spill_folder.is_dir() and not any(spill_folder.iterdir()):
        spill_folder.rmdir()
    eigen.save(out_dir / "eigen.npz")
    trace.save(out_dir / "trace.npz")
    density.save(out_dir / "density.npz")
    weights.save(out_dir / "weight_spectra.npz")
    if block is not None:
        block.save(out_dir / "blocks.npz")
    else:
        (out_dir / "blocks.npz").unlink(missing_ok=True)  # not this run's: it would be drawn
    seconds = time.perf_counter() - start
    summary = {
        "model": name, "n_params": op.shape[0], "params": params, "method": op.method, "k": k, "which": which,
        "tokens": list(tokens.shape), "loss": op.loss(),
        "eigenvalues": eigen.eigenvalues.tolist(), "residuals": eigen.residuals.tolist(),
        "converged": bool(eigen.all_converged), "lanczos_steps": eigen.n_steps,
        "trace": trace.estimate, "trace_std_error": trace.std_error,
        "re": density.re, "Kh": density.kh, "seconds": seconds,
    }
    write_json(out_dir / "summary.json", summary)
    config = {"model": name, "k": k, "which": which, "params": params, "method": method,
              "trace_matvecs": trace_matvecs, "density_probes": density_probes, "density_steps": density_steps,
              "blocks": blocks, "tokens": list(tokens.shape)}
    provenance = collect_provenance(device=str(tokens.device), seeds={"seed": seed},
                                    wall_seconds={"total": seconds}, config=config)
    _, sections = publish_results(out_dir, kind="hessian", title=f"normlens hessian: {name}",
                                  sections=[SectionRef("hessian_model")], provenance=provenance, pngs=True)
    return sections[0]


DEFAULT_N_CTX = 64  # tokens per sequence when --n-ctx is 0 (curvature costs grow with the batch)
MIN_TRACE_MATVECS = 4  # Hutch++ with m products: 2·⌊m/3⌋ for the sketch, the rest (>= 2) for the error
HESSIAN_OUTPUT_BYTES = 32 << 20  # npz files, PNGs and the report, before the eigenvectors


def check_eigen_budget(model: nn.Module, params: Optional[str], k: int, which: str, out: Path,
                       max_basis_bytes: Optional[int] = None) -> None:
    """Refuse --k before any product when it exceeds the parameters, the memory of the Lanczos basis
    (planned as :func:`compute_eigenpairs` will allocate it) or the disk space of the saved eigenvectors."""
    from normlens.cli.common import check_free_space, require_memory
    from normlens.parameters import select_parameters

    selected = select_parameters(model, params)
    n = sum(math.prod(info.shape) for info in selected)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    k_total = 2 * k if which == "both" else k
    if k_total >= n:
        raise ValueError(f"--k {k} asks for {k_total} eigenpairs of a Hessian over {n} parameters; "
                         f"use --k <= {(n - 1) // 2 if which == 'both' else n - 1}")
    plan = plan_eigenpairs(n, k, which=which, dtype=dtype, device=device, max_basis_bytes=max_basis_bytes,
                           spill_dir=out / "lanczos-spill")
    require_memory(plan.memory_bytes, f"--k {k} ({plan.describe()})", "lower --k, select fewer parameters with --params, or bound it with --basis-memory-mb",
                   device=device)
    check_free_space(out, HESSIAN_OUTPUT_BYTES + 8 * n * k_total + plan.spill_bytes)


def register(app) -> None:
    """Add the `hessian` command to the normlens typer app."""
    import typer

    @app.command("hessian")
    def hessian(
        spec: str = typer.Argument(..., help="Checkpoint folder written by `normlens train`, or a Hugging Face model name."),
        out: Path = typer.Option(Path("hessian-out"), "--out", "-o", help="Output folder for data and plots."),
        k: int = typer.Option(5, help="Eigenpairs per end."),
        which: str = typer.Option("largest", help=f"Spectrum end: {', '.join(WHICH)}."),
        params: Optional[str] = typer.Option(None, help="Parameter subset: all, norms, weights, attn, mlp, or a name regex."),
        n_seq: int = typer.Option(8, help="Held-out sequences in the batch."),
        n_ctx: int = typer.Option(0, help=f"Tokens per sequence (0: the model's context, at most {DEFAULT_N_CTX})."),
        method: str = typer.Option("auto", help=f"HVP method: {', '.join(METHODS)}."),
        trace_matvecs: int = typer.Option(30, help=f"Products for the Hutch++ trace (>= {MIN_TRACE_MATVECS})."),
        density_probes: int = typer.Option(2, help="SLQ probes."),
        density_steps: int = typer.Option(40, help="Lanczos steps per SLQ probe."),
        blocks: bool = typer.Option(True, help="Per-block top eigenvalues."),
        seed: int = typer.Option(0, help="Seed of every random vector and the data windows."),
        basis_memory_mb: int = typer.Option(0, "--basis-memory-mb", help="Keep at most this many MB of each "
                                            "Lanczos basis in memory, the rest memory-mapped under --out (0: all in memory)."),
    ) -> None:
        """Hessian spectra (top-k, trace, density, per-block, weight ESDs) of a model."""
        from normlens.cli.common import check_output_folder, run_or_exit

        def job() -> ReportSection:
            if which not in WHICH:
                raise ValueError(f"--which must be one of {', '.join(WHICH)}, got {which!r}")
            if method not in METHODS:
                raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
            if k < 1 or n_seq < 1 or n_ctx == 1 or n_ctx < 0:
                raise ValueError(f"--k and --n-seq must be >= 1 and --n-ctx >= 2 (or 0), got {k}, {n_seq}, {n_ctx}")
            if basis_memory_mb < 0:
                raise ValueError(f"--basis-memory-mb must be >= 0 (0: the whole basis in memory), got {basis_memory_mb}")
            basis_bytes = basis_memory_mb * (1 << 20) or None
            if trace_matvecs < MIN_TRACE_MATVECS:
                raise ValueError(
                    f"--trace-matvecs must be at least {MIN_TRACE_MATVECS}, got {trace_matvecs}: Hutch++ spends "
                    "2·⌊m/3⌋ products on its sketch and needs 2 more for an error estimate")
            if density_probes < 1 or density_steps < 2:
                raise ValueError(f"--density-probes must be >= 1 and --density-steps >= 2, "
                                 f"got {density_probes}, {density_steps}")
            check_output_folder(out, HESSIAN_OUTPUT_BYTES)
            from normlens.data import corpus_for_model, eval_windows
            from normlens.models.loading import load_model

            model = load_model(spec)
            model_ctx = int(getattr(getattr(model, "cfg", None), "n_ctx", n_ctx or DEFAULT_N_CTX))
            ctx = n_ctx or min(DEFAULT_N_CTX, model_ctx)
            if not 2 <= ctx <= model_ctx:
                raise ValueError(f"--n-ctx {ctx} must lie in 2..{model_ctx} for this model")
            check_eigen_budget(model, params, k, which, out, basis_bytes)
            tokens = eval_windows(corpus_for_model(model, seed=seed), n_seq=n_seq, n_ctx=ctx, seed=seed)
            return run_hessian(model, tokens, out, name=spec, k=k, which=which, params=params,
                               method=method, trace_matvecs=trace_matvecs,
                               density_probes=density_probes, density_steps=density_steps,
                               blocks=blocks, seed=seed, progress=True, max_basis_bytes=basis_bytes)

        section = run_or_exit(job)
        typer.echo(section.summary)
        typer.echo(f"wrote the data and report.html to {out}")
