"""`fu-fast train`: a model of the zoo with the paper's settings (fu_fast.train)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fu_fast.atomic import check_writable_dir

from .console import comma_list, err, user_errors
from .data_command import fetch_if_asked


@user_errors
def train(
    model: str = typer.Option(..., help="mlp, alexnet, resnet56, resnet18, inception_v3, inception_v3_layer"),
    out_dir: Path = typer.Option(..., "--out", help="run directory (created; an unfinished run there resumes)"),
    width: float = typer.Option(1.0, help="width factor: units and filters of every layer are multiplied by it"),
    data: Optional[str] = typer.Option(None, help="synthetic, cifar10, imagenet or digits [default: the model's]"),
    data_dir: Optional[Path] = typer.Option(None, help="where cifar-10-batches-py or the ImageFolder tree lies"),
    download: bool = typer.Option(False, "--download", help="cifar10: fetch it into --data-dir first if it is not "
                                                            "there (as `fu-fast data cifar10 DIR`)"),
    input_dim: Optional[int] = typer.Option(None, help="synthetic data and MLP input dimension (10 or 10000)"),
    image_size: Optional[int] = typer.Option(None, help="image side [default: 32 CIFAR, 224 ResNet18, 299 Inception]"),
    random_labels: bool = typer.Option(False, help="train on fixed random labels (no augmentation)"),
    data_seed: int = typer.Option(0, help="seed of the data set (synthetic teacher, random labels)"),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment",
                                           help="data augmentation [default: the model's]"),
    init: Optional[str] = typer.Option(None,
                                       help="glorot|he|lecun _normal|_uniform, gaussian:STD, truncated_normal:STD"),
    dropout: Optional[float] = typer.Option(None, help="dropout probability where the model has dropout"),
    optimizer: Optional[str] = typer.Option(None, help="sgd_momentum, sgd, adam or rmsprop"),
    lr: Optional[float] = typer.Option(None, help="learning rate (before the factor k)"),
    momentum: float = typer.Option(0.9, help="momentum of sgd_momentum and rmsprop"),
    weight_decay: Optional[float] = typer.Option(None, help="L2 weight decay"),
    schedule: Optional[str] = typer.Option(None, help="constant, exp:G, exp:G/E, step:E1,E2[*G] (per epoch)"),
    batch_size: Optional[int] = typer.Option(None, help="global batch size (before the factor k)"),
    k: float = typer.Option(1.0, help="scales batch size and learning rate together"),
    epochs: Optional[int] = typer.Option(None, help="number of epochs (the most, with early stopping)"),
    patience: Optional[int] = typer.Option(None, help="early stopping: epochs without a better validation accuracy"),
    seed: int = typer.Option(0, help="seed of the initial weights, shuffling, dropout and augmentation"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N [default: cuda if usable]"),
    amp: bool = typer.Option(False, help="bfloat16 autocast (GPU)"),
    channels_last: bool = typer.Option(False, help="channels_last memory format (GPU convolutions)"),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model"),
    workers: int = typer.Option(0, help="data-loading worker processes"),
    save_every: Optional[int] = typer.Option(None, help="also keep the weights of every N-th epoch as "
                                                        "OUT/epoch-N.pt (analyse one with --checkpoint)"),
    save_epochs: Optional[str] = typer.Option(None, help="also keep the weights of these epochs as OUT/epoch-N.pt, "
                                                         "e.g. 10,20,30"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="one line per epoch instead of progress bars"),
) -> None:
    """Train a model of the zoo with the paper's settings (each one overridable).

    Multi-GPU or multi-node: run it under torchrun, e.g.
    `torchrun --nproc_per_node 8 -m fu_fast.cli train ...`.
    """
    from fu_fast import data as data_lib, models
    from fu_fast.train import TrainConfig, train as run_training

    check_writable_dir(out_dir)
    options = {key: value for key, value in (("init", init), ("dropout", dropout), ("input_dim", input_dim),
                                             ("input_size", image_size)) if value is not None}
    # Digits: an MLP reads its 64-vectors, a conv net its 1x8x8 images (fu_fast.data.model_inputs).
    data_name = data or models.entry(model).training["data"]
    options = data_lib.fit_model_options(data_name, model, options)
    fetch_if_asked(download, data_name, data_dir)
    # checked further by TrainConfig.resolve
    kept_epochs = comma_list(save_epochs, int, "--save-epochs must be epochs separated by commas, e.g. 10,20,30; got ")
    config = TrainConfig(model=model, width=width, model_options=options, data=data,
                         data_dir=str(data_dir) if data_dir else None, input_dim=input_dim,
                         random_labels=random_labels, data_seed=data_seed, augment=augment, optimizer=optimizer,
                         lr=lr, momentum=momentum, weight_decay=weight_decay, schedule=schedule,
                         batch_size=batch_size, k=k, epochs=epochs, patience=patience, seed=seed, device=device,
                         amp=amp, channels_last=channels_last, compile=compile, workers=workers,
                         save_every=save_every, save_epochs=kept_epochs)
    record = run_training(config, out_dir, quiet=quiet)
    last = record["epochs"][-1] if record["epochs"] else {}
    accuracies = ", ".join(f"{k.removesuffix('_accuracy')} {v:.4f}" for k, v in last.items() if k.endswith("_accuracy"))
    err.print(f"{out_dir}: {len(record['epochs'])} epochs, best epoch {record['best_epoch']}"
              f"{', stopped early' if record['stopped_early'] else ''}; last: {accuracies}", highlight=False)
