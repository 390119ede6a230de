"""`normlens train` and `normlens remove-ln`."""
from __future__ import annotations

from pathlib import Path

import typer

from normlens.cli.common import check_free_space, check_output_folder, run_or_exit, zoo_parameter_count


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
    app.command("remove-ln")(remove_ln_command)


def train_command(
    norm: str = typer.Option("ln", help="ln, rms, dyt, none or lnfree"),
    placement: str = typer.Option("pre", help="pre, post, mix (Mix-LN) or scaled (LayerNorm Scaling)"),
    act_fn: str = typer.Option("gelu", "--act", help="gelu or relu"),
    n_layers: int = typer.Option(2, "--layers"),
    d_model: int = typer.Option(64, "--d-model"),
    n_heads: int = typer.Option(4, "--heads"),
    n_ctx: int = typer.Option(64, "--n-ctx", help="context length"),
    dyt_alpha0: float = typer.Option(0.5, "--dyt-alpha0", help="DyT's initial alpha"),
    steps: int = typer.Option(300),
    batch_size: int = typer.Option(16, "--batch-size"),
    lr: float = typer.Option(3e-3),
    seed: int = typer.Option(0),
    data: str = typer.Option("embedded", help="'embedded', a text file path, or hf:DATASET_NAME"),
    out: Path = typer.Option(Path("runs/model"), help="folder for the checkpoint and history"),
) -> None:
    """Train a zoo model; resumable: run it again with the same --out to continue."""

    def job() -> None:
        from normlens.data import load_corpus
        from normlens.models import ZooConfig, build_model
        from normlens.train import TrainConfig, train

        config = ZooConfig(norm=norm, placement=placement, act_fn=act_fn, n_layers=n_layers,
                           d_model=d_model, n_heads=n_heads, n_ctx=n_ctx, dyt_alpha0=dyt_alpha0,
                           seed=seed)
        train_config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed)
        # float32 weights and two Adam moments, written beside the previous state: 6 copies
        check_output_folder(out, (16 << 20) + 24 * zoo_parameter_count(config))
        splits = load_corpus(data, seed=seed)
        result = train(build_model(config), splits, train_config, name=norm, checkpoint_dir=out)
        status = f"diverged at step {result.diverged_step}" if result.diverged else "finished"
        typer.echo(f"{norm}/{placement}: {status}; final validation loss {result.final_val_loss:.4f}; "
                   f"checkpoint in {out / 'model'}")

    run_or_exit(job)


def remove_ln_command(
    checkpoint: Path = typer.Argument(..., help="checkpoint folder of a trained 'ln' model"),
    out: Path = typer.Option(Path("runs/ln-removed"), help="folder for the LN-free checkpoint"),
    data: str = typer.Option("embedded", help="'embedded', a text file path, or hf:DATASET_NAME"),
    seed: int = typer.Option(0),
) -> None:
    """Remove every LayerNorm of a trained 'ln' model by staged fine-tuning."""

    def job() -> None:
        from normlens.data import load_corpus
        from normlens.io import write_json
        from normlens.models.checkpoint import load_checkpoint, save_checkpoint
        from normlens.models.ln_removal import LNRemovalConfig, remove_layernorm

        check_output_folder(out, 16 << 20)
        model = load_checkpoint(checkpoint)
        check_free_space(out, (16 << 20) + 8 * sum(p.numel() for p in model.parameters()))
        removed, result = remove_layernorm(model, load_corpus(data, seed=seed), LNRemovalConfig(seed=seed))
        save_checkpoint(removed, out)
        write_json(out / "removal_result.json", result.to_dict())
        typer.echo(f"validation loss {result.val_loss_before:.4f} -> {result.val_loss_after:.4f}; "
                   f"LN-free checkpoint in {out}")

    run_or_exit(job)
