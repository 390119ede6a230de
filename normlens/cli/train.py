"""`normlens train` and `normlens remove-ln`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from normlens.cli.common import check_free_space, check_output_folder, run_or_exit


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
    dyt_alpha0: Optional[float] = typer.Option(None, "--dyt-alpha0", help="DyT's initial alpha in every slot (default: per slot kind, see ZooConfig)"),
    steps: int = typer.Option(300),
    batch_size: int = typer.Option(16, "--batch-size"),
    lr: float = typer.Option(3e-3),
    seed: int = typer.Option(0, help="model initialization and batch order"),
    eval_seqs: int = typer.Option(128, "--eval-seqs", help="windows in the fixed evaluation set"),
    eval_seed: int = typer.Option(0, "--eval-seed", help="seed of the evaluation set, independent of --seed"),
    split_seed: int = typer.Option(0, "--split-seed", help="seed of the train/validation split"),
    data: str = typer.Option("embedded", help="'embedded', a text file path, or hf:DATASET_NAME"),
    probes: bool = typer.Option(False, "--probes/--no-probes",
                                help="record attention entropy, residual variance and gradient norms"),
    probe_every: int = typer.Option(50, "--probe-every", help="steps between probe records"),
    keep: str = typer.Option("", "--keep-checkpoints",
                             help="comma-separated steps whose model is kept (0 = initialization)"),
    out: Path = typer.Option(Path("runs/model"), help="folder for the checkpoint and history"),
) -> None:
    """Train a zoo model; resumable: run it again with the same --out to continue."""

    def job() -> None:
        from normlens.data import load_corpus
        from normlens.models import ZooConfig, build_model
        from normlens.models.checks import count_config_parameters
        from normlens.train import TrainConfig, train
        from normlens.train_probes import default_training_probes

        config = ZooConfig(norm=norm, placement=placement, act_fn=act_fn, n_layers=n_layers,
                           d_model=d_model, n_heads=n_heads, n_ctx=n_ctx, dyt_alpha0=dyt_alpha0,
                           seed=seed)
        train_config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                   eval_seqs=eval_seqs, eval_seed=eval_seed)
        try:
            keep_steps = [int(v) for v in keep.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--keep-checkpoints {keep!r} is not a comma-separated list of steps, "
                             "e.g. 0,100,300") from None
        # float32 weights and two Adam moments, written beside the previous state: 6 copies
        check_output_folder(out, (16 << 20) + 24 * count_config_parameters(config))
        splits = load_corpus(data, seed=split_seed)
        result = train(build_model(config), splits, train_config, name=norm, checkpoint_dir=out,
                       probes=default_training_probes() if probes else (), every=probe_every,
                       keep_checkpoints=keep_steps)
        status = f"diverged at step {result.diverged_step}" if result.diverged else "finished"
        typer.echo(f"{norm}/{placement}: {status}; final validation loss {result.final_val_loss:.4f}; "
                   f"checkpoint in {out / 'model'}")

    run_or_exit(job)


def remove_ln_command(
    checkpoint: Path = typer.Argument(..., help="checkpoint folder of a trained 'ln' model, or a GPT-2 (HF folder or name)"),
    out: Path = typer.Option(Path("runs/ln-removed"), help="folder for the LN-free checkpoint (GPT-2s: eps=1e12 HF format)"),
    data: str = typer.Option("embedded", help="'embedded', a text file path, or hf:DATASET_NAME"),
    seed: int = typer.Option(0),
) -> None:
    """Remove every LayerNorm of a trained 'ln' model by staged fine-tuning."""

    def job() -> None:
        from normlens.data import corpus_for_model
        from normlens.io import write_json
        from normlens.models.checkpoint import save_checkpoint
        from normlens.models.export import export_lnfree
        from normlens.models.ln_removal import LNRemovalConfig, is_zoo_model, remove_layernorm
        from normlens.models.loading import load_model

        check_output_folder(out, 16 << 20)
        model = load_model(str(checkpoint))
        check_free_space(out, (16 << 20) + 8 * sum(p.numel() for p in model.parameters()))
        removed, result = remove_layernorm(model, corpus_for_model(model, data, seed=seed), LNRemovalConfig(seed=seed))
        if is_zoo_model(removed):
            save_checkpoint(removed, out)
        else:
            export_lnfree(removed, out)
        write_json(out / "removal_result.json", result.to_dict())
        typer.echo(f"validation loss {result.val_loss_before:.4f} -> {result.val_loss_after:.4f} (LayerNorm kept, "
                   f"same steps: {result.val_loss_control:.4f}; gap {result.gap_to_control:+.4f}); "
                   f"LN-free checkpoint in {out}")

    run_or_exit(job)
