"""`normlens probe SPEC`: run every probe on a checkpoint or Hugging Face model; write data and figures."""
from __future__ import annotations

from pathlib import Path

import typer


def probe_model(model, tokens, out: Path, seed: int = 0) -> Path:
    """Run the probe suite on ``model`` and write its data (Parquet/NPZ/JSON) and figures under ``out``."""
    import matplotlib.pyplot as plt

    from normlens.plots.probes import plot_angular_heatmap, plot_entropy_heatmap, plot_s_curve
    from normlens.probes.suite import run_probe_suite

    result = run_probe_suite(model, tokens, seed=seed)
    result.save(out)
    for name, draw in (("entropy", lambda ax: plot_entropy_heatmap(result.entropy, ax=ax)),
                       ("s_curve", lambda ax: plot_s_curve(result.s_curve, ax=ax)),
                       ("angular", lambda ax: plot_angular_heatmap(result.effectiveness, ax=ax))):
        fig, ax = plt.subplots(figsize=(5, 4))
        draw(ax)
        fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
    return out


def register(app: typer.Typer) -> None:
    @app.command("probe")
    def probe(
        spec: str = typer.Argument(..., help="checkpoint folder written by `normlens train`, or a HF model name"),
        out: Path = typer.Option(Path("probes-out"), "--out", help="folder for the data and figures"),
        n_seq: int = typer.Option(16, "--n-seq", min=1, help="held-out sequences to probe"),
        n_ctx: int = typer.Option(0, "--n-ctx", min=0, help="tokens per sequence (0: the model's context)"),
        seed: int = typer.Option(0, "--seed", help="seed for data windows and sampling"),
    ) -> None:
        """Probe a model: activation statistics, attention entropy, layer effectiveness, linear probes."""
        try:
            from normlens.models.loading import load_model
        except ImportError:
            typer.echo("error: model loading is not available in this install (normlens.models.loading)", err=True)
            raise typer.Exit(2)
        try:
            model = load_model(spec)
        except (FileNotFoundError, ValueError, OSError) as err:
            typer.echo(f"error: cannot load {spec!r}: {err}; pass a checkpoint folder or a HF model name", err=True)
            raise typer.Exit(2)
        from normlens.data import eval_windows, load_embedded

        ctx = n_ctx or int(model.cfg.n_ctx)
        if ctx > model.cfg.n_ctx or ctx < 2:
            typer.echo(f"error: --n-ctx {ctx} must lie in 2..{model.cfg.n_ctx} for this model", err=True)
            raise typer.Exit(2)
        tokens = eval_windows(load_embedded(), n_seq=n_seq, n_ctx=ctx, seed=seed)
        probe_model(model.eval(), tokens, out, seed)
        typer.echo(f"wrote probe data and figures to {out}")
