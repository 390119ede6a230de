"""`normlens probe SPEC`: run every probe on a checkpoint or Hugging Face model; write data and a report."""
from __future__ import annotations

from pathlib import Path

import typer

PROBE_OUTPUT_BYTES = 32 << 20  # tables, arrays and a report with embedded figures: a few MB


def probe_model(model, tokens, out: Path, seed: int = 0, name: str = "model") -> Path:
    """Run the probe suite on ``model``; write its data (Parquet/NPZ/JSON), ``manifest.json`` and
    ``report.html`` (rendered from the saved data) under ``out``; return the report's path."""
    import time

    from normlens.probes.suite import run_probe_suite
    from normlens.report.build import publish_results
    from normlens.report.manifest import SectionRef, collect_provenance
    from normlens.report.sections.probes import save_probes

    start = time.perf_counter()
    result = run_probe_suite(model, tokens, seed=seed, progress=True)
    seconds = time.perf_counter() - start
    save_probes(out, {name: result}, [{"name": name, "label": name, "dir": ".", "status": "ok"}],
                seconds=seconds, tokens_shape=tuple(tokens.shape))
    device = next((str(p.device) for p in model.parameters()), "cpu")
    provenance = collect_provenance(device=device, seeds={"seed": seed}, wall_seconds={"total": seconds},
                                    config={"model": name, "tokens": list(tokens.shape)})
    report, _ = publish_results(out, kind="probe", title=f"normlens probes: {name}",
                                sections=[SectionRef("probes")], provenance=provenance)
    return report


def register(app: typer.Typer) -> None:
    @app.command("probe")
    def probe(
        spec: str = typer.Argument(..., help="checkpoint folder written by `normlens train`, or a HF model name"),
        out: Path = typer.Option(Path("probes-out"), "--out", help="folder for the data and report.html"),
        n_seq: int = typer.Option(16, "--n-seq", min=1, help="held-out sequences to probe"),
        n_ctx: int = typer.Option(0, "--n-ctx", min=0, help="tokens per sequence (0: the model's context)"),
        seed: int = typer.Option(0, "--seed", help="seed for data windows and sampling"),
    ) -> None:
        """Probe a model: activation statistics, attention entropy, layer effectiveness, linear probes."""
        from normlens.cli.common import check_output_folder, run_or_exit

        def job() -> Path:
            from normlens.data import corpus_for_model, eval_windows
            from normlens.models.loading import load_model

            check_output_folder(out, PROBE_OUTPUT_BYTES)
            model = load_model(spec)
            ctx = n_ctx or int(model.cfg.n_ctx)
            if ctx > model.cfg.n_ctx or ctx < 2:
                raise ValueError(f"--n-ctx {ctx} must lie in 2..{model.cfg.n_ctx} for this model")
            tokens = eval_windows(corpus_for_model(model), n_seq=n_seq, n_ctx=ctx, seed=seed)
            return probe_model(model.eval(), tokens, out, seed, name=spec)

        report = run_or_exit(job)
        typer.echo(f"wrote probe data to {out} and the report to {report}")
