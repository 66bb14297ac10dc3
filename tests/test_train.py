"""Training: settings, schedules, run directories, resumption, early stopping, DDP, checkpoints."""

import json
import os
import subprocess
import sys

import pytest
import torch

import fu_fast

from fu_fast import FuFastError, models
from fu_fast.train import TrainConfig, load_model, train
from fu_fast.train.optim import build_optimizer, build_scheduler, parse_schedule

from conftest import write_cifar10


def quick_mlp(**overrides):
    return TrainConfig(**{"model": "mlp", "width": 0.25, "epochs": 2, **overrides})


# --- settings ------------------------------------------------------------------------------

def test_defaults_follow_the_paper_and_k_scales_batch_and_lr():
    c = TrainConfig("resnet56").resolve()
    assert (c.optimizer, c.lr, c.schedule, c.batch_size, c.epochs, c.weight_decay, c.augment) == \
        ("sgd_momentum", 0.1, "step:91,136", 128, 182, 2e-4, True)
    r = TrainConfig("resnet18", k=0.25).resolve()
    assert (r.batch_size, r.lr) == (64, pytest.approx(0.025))
    assert r.model_options["input_size"] == 224
    assert TrainConfig("inception_v3").resolve().optimizer == "rmsprop"
    assert TrainConfig("alexnet").resolve().patience == 10
    # Every model of the registry has training defaults, in the paper's order.
    assert fu_fast.models.names() == ["mlp", "alexnet", "resnet56", "resnet18", "inception_v3", "inception_v3_layer"]
    for name in fu_fast.models.names():
        assert TrainConfig(name).resolve().data == fu_fast.models.entry(name).training["data"]


@pytest.mark.parametrize("change, message", [
    (dict(model="vgg"), "unknown model"), (dict(optimizer="lbfgs"), "unknown optimizer"),
    (dict(lr=-1.0), "learning rate"), (dict(epochs=0), "epochs"), (dict(k=0), "k must"),
    (dict(schedule="cosine"), "bad schedule"), (dict(schedule="step:5,2"), "bad schedule"),
    (dict(width=0.0), "width"), (dict(random_labels=True, augment=True, model="alexnet"), "augmentation"),
])
def test_bad_settings_are_refused(change, message):
    with pytest.raises(FuFastError, match=message):
        TrainConfig(**{"model": "mlp", **change}).resolve()


def test_schedules_give_the_documented_learning_rates():
    def rates(text, epochs):
        opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], "sgd", 1.0, 0.0, 0.0)
        sched, seen = build_scheduler(opt, text), []
        for _ in range(epochs):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return seen

    assert rates("constant", 3) == [1.0, 1.0, 1.0]
    assert rates("exp:0.5", 3) == pytest.approx([1.0, 0.5, 0.25])
    assert rates("exp:0.5/2", 5) == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.25])
    assert rates("step:2,4", 5) == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01])
    assert rates("step:1*0.5", 3) == pytest.approx([1.0, 0.5, 0.5])
    assert parse_schedule("exp:0.94/2").every == 2


# --- a run directory -----------------------------------------------------------------------

def test_mlp_run_directory_records_everything(tmp_path):
    record = train(quick_mlp(epochs=3), tmp_path / "run", quiet=True)
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["checkpoint.pt", "model.pt", "run.json"]
    on_disk = json.loads((tmp_path / "run" / "run.json").read_text())
    assert on_disk == json.loads(json.dumps(record))
    assert on_disk["status"] == "finished" and len(on_disk["epochs"]) == 3
    assert on_disk["settings"]["lr"] == 0.05 and on_disk["settings"]["batch_size"] == 32
    assert on_disk["model"]["options"]["input_dim"] == 10 and on_disk["model"]["parameters"] == 10 * 32 + 32 + 33 * 2
    assert on_disk["data"]["train"]["examples"] == 1000 and on_disk["data"]["val"] is None
    epoch = on_disk["epochs"][-1]
    assert 0 <= epoch["train_accuracy"] <= 1 and 0 <= epoch["test_accuracy"] <= 1
    model, info = load_model(tmp_path / "run")
    assert model.fu_fast_config["width"] == 0.25 and info["epoch"] == 3
    # A finished run is returned as it is, without training again.
    assert train(quick_mlp(epochs=3), tmp_path / "run", quiet=True)["epochs"] == record["epochs"]


def test_mlp_learns_the_teacher(tmp_path):
    """The paper's MLP setting (init std 0.01, momentum SGD) fits the synthetic teacher data."""
    record = train(TrainConfig("mlp", width=1.0, epochs=15), tmp_path / "run", quiet=True)
    assert record["epochs"][-1]["test_accuracy"] > 0.9


def test_resumed_run_ends_with_the_same_weights(tmp_path):
    """Dropout and augmentation included: every epoch reseeds, so an interrupted run resumed
    from its checkpoint equals an uninterrupted one bit for bit (CPU)."""
    write_cifar10(tmp_path / "cifar", per_batch=12)
    config = TrainConfig("alexnet", width=0.125, data_dir=str(tmp_path / "cifar"), epochs=4, batch_size=16,
                         augment=True, model_options={"dropout": 0.3}, patience=None)
    whole = train(config, tmp_path / "whole", quiet=True)

    class Interrupt(Exception):
        pass

    def stop_after_two(metrics):
        if metrics["epoch"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(config, tmp_path / "resumed", quiet=True, on_epoch=stop_after_two)
    assert not (tmp_path / "resumed" / "model.pt").exists()
    with pytest.raises(FuFastError, match="unfinished"):
        load_model(tmp_path / "resumed")
    resumed = train(config, tmp_path / "resumed", quiet=True)
    assert [e["loss"] for e in resumed["epochs"]] == [e["loss"] for e in whole["epochs"]]
    a, _ = load_model(tmp_path / "whole")
    b, _ = load_model(tmp_path / "resumed")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    # A different seed gives different weights: the comparison above can fail.
    other = train(TrainConfig(**{**config.__dict__, "seed": 1}), tmp_path / "other", quiet=True)
    assert other["epochs"][0]["loss"] != whole["epochs"][0]["loss"]


def test_epoch_checkpoints_of_an_interrupted_run_equal_an_uninterrupted_ones(tmp_path):
    """epoch-N.pt is written before checkpoint.pt, so a run stopped at any point and resumed keeps
    every epoch asked for, with the weights an uninterrupted run has at that epoch."""
    config = quick_mlp(epochs=3, save_every=2, save_epochs=[1])
    train(config, tmp_path / "whole", quiet=True)
    assert sorted(p.name for p in (tmp_path / "whole").glob("epoch-*.pt")) == ["epoch-1.pt", "epoch-2.pt"]

    class Interrupt(Exception):
        pass

    def stop_after_one(metrics):
        if metrics["epoch"] == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(config, tmp_path / "resumed", quiet=True, on_epoch=stop_after_one)
    assert sorted(p.name for p in (tmp_path / "resumed").glob("epoch-*.pt")) == ["epoch-1.pt"]
    train(config, tmp_path / "resumed", quiet=True)
    for epoch in (1, 2):
        a, info = load_model(tmp_path / "whole" / f"epoch-{epoch}.pt")
        b, _ = load_model(tmp_path / "resumed" / f"epoch-{epoch}.pt")
        assert info["epoch"] == epoch and info["schema"] == "fu-fast/model/1"
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    first, _ = load_model(tmp_path / "whole" / "epoch-1.pt")
    second, _ = load_model(tmp_path / "whole" / "epoch-2.pt")
    assert not torch.equal(first.fc1.weight, second.fc1.weight)
    # The kept epochs are part of the run's settings: another choice is another run.
    with pytest.raises(FuFastError, match="save_every=2, not 1"):
        train(quick_mlp(epochs=3, save_every=1, save_epochs=[1]), tmp_path / "whole", quiet=True)


@pytest.mark.parametrize("change, message", [
    (dict(save_epochs=[4]), "save epoch 4 lies past the last epoch"), (dict(save_epochs=[0]), "a save epoch"),
    (dict(save_epochs="1,2"), "save epochs must be a list"), (dict(save_every=0), "save_every"),
    (dict(save_epochs=[1.5]), "a save epoch"),
])
def test_bad_epoch_checkpoint_settings_are_refused(change, message):
    with pytest.raises(FuFastError, match=message):
        quick_mlp(epochs=3, **change).resolve()
    assert quick_mlp(epochs=3, save_epochs=[3, 1, 3]).resolve().save_epochs == [1, 3]
    assert quick_mlp(epochs=3, save_epochs=[]).resolve().save_epochs is None


def test_resuming_with_other_settings_is_refused(tmp_path):
    train(quick_mlp(epochs=1), tmp_path / "run", quiet=True)
    with pytest.raises(FuFastError, match="lr=0.05, not 0.1"):
        train(quick_mlp(epochs=1, lr=0.1), tmp_path / "run", quiet=True)


def test_early_stopping_on_the_validation_split(tmp_path):
    """With a learning rate too small to change any label, validation accuracy never improves
    after epoch 1, so patience 2 stops after epoch 3 and model.pt holds epoch 1's weights."""
    write_cifar10(tmp_path / "cifar", per_batch=10)
    config = TrainConfig("alexnet", width=0.125, data_dir=str(tmp_path / "cifar"), epochs=10, lr=1e-12,
                         patience=2, batch_size=25)
    record = train(config, tmp_path / "run", quiet=True)
    assert record["stopped_early"] and len(record["epochs"]) == 3 and record["best_epoch"] == 1
    assert record["data"]["val"]["examples"] == 5 and record["data"]["train"]["examples"] == 45
    assert load_model(tmp_path / "run")[1]["epoch"] == 1
    with pytest.raises(FuFastError, match="validation split"):
        train(quick_mlp(patience=2), tmp_path / "mlp", quiet=True)


# --- distributed ---------------------------------------------------------------------------

def test_two_process_gloo_run_equals_one_process(tmp_path):
    """torchrun with 2 CPU processes (gloo) on global batches of 32 gives the weights of one
    process on the same global batches: DDP averages the two halves' gradients."""
    args = ["train", "--model", "mlp", "--width", "0.5", "--epochs", "2", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # cwd: `python -m` puts the working directory first on sys.path, and the repository root
    # holds the unbuilt source tree (no compiled fu_fast._C).
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    "-m", "fu_fast.cli", *args, "--out", str(tmp_path / "ddp")], check=True, env=env,
                   capture_output=True, timeout=300, cwd=tmp_path)
    single = train(TrainConfig("mlp", width=0.5, epochs=2), tmp_path / "single", quiet=True)
    ddp_record = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert ddp_record["world_size"] == 2 and ddp_record["status"] == "finished"
    assert ddp_record["epochs"][-1]["test_accuracy"] == pytest.approx(single["epochs"][-1]["test_accuracy"], abs=2e-3)
    a, _ = load_model(tmp_path / "ddp")
    b, _ = load_model(tmp_path / "single")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6, msg=name)
    # The weights moved away from their initial values by far more than that tolerance.
    torch.manual_seed(0)
    initial = models.build("mlp", 0.5).state_dict()
    assert (a.state_dict()["out.weight"] - initial["out.weight"]).abs().max() > 1e-2


# --- checkpoints that do not fit ----------------------------------------------------------

def test_checkpoints_that_do_not_match_are_clear_errors(tmp_path):
    train(quick_mlp(epochs=1), tmp_path / "run", quiet=True)
    with pytest.raises(FuFastError, match="width 0.25, not 4"):
        load_model(tmp_path / "run", width=4)
    with pytest.raises(FuFastError, match="holds model 'mlp', not 'alexnet'"):
        load_model(tmp_path / "run", model="alexnet")
    bare = tmp_path / "bare.pt"
    torch.save(models.build("mlp", 1.0).state_dict(), bare)
    with pytest.raises(FuFastError, match="bare weights"):
        load_model(bare)
    with pytest.raises(FuFastError, match="does not match mlp at width 2"):
        load_model(bare, model="mlp", width=2.0)
    assert load_model(bare, model="mlp", width=1.0)[0].fu_fast_config["width"] == 1.0
    broken = tmp_path / "broken.pt"
    broken.write_bytes((tmp_path / "run" / "model.pt").read_bytes()[:100])
    with pytest.raises(FuFastError, match="cannot read checkpoint"):
        load_model(broken)
    with pytest.raises(FuFastError, match="does not exist"):
        load_model(tmp_path / "nothing.pt")
    with pytest.raises(FuFastError, match="not a fu-fast run directory"):
        load_model(tmp_path)
