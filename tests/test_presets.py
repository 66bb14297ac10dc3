"""The presets of the paper's experiments: every one loads with the paper's settings (PAPER.md),
its members, their directories and its metadata, without training anything; `--list-presets`;
epoch checkpoints (`fu-fast train --save-every/--save-epochs`); and a sweep analysed at epochs past
convergence (epochs_after) from one training run per (width, trial), end to end."""

import json
import math
import shutil

import pytest
import torch
from typer.testing import CliRunner

from fu_fast import FuFastError, analyze
from fu_fast import data as data_lib
from fu_fast.analysis import AnalysisResult
from fu_fast.cli.app import app
from fu_fast.report import summarize
from fu_fast.report.epochs import epoch_figure
from fu_fast.report.tables import load_sweep
from fu_fast.sweep import PRESETS, Shard, load_config, run_sweep
from fu_fast.sweep.config import PRESET_METADATA
from fu_fast.train import load_model
from fu_fast.train import loop as train_loop

from conftest import one_error_line

runner = CliRunner()
PAPER_WIDTHS = [0.25, 0.5, 1.0, 2.0, 4.0]
INITS = {"glorot_normal", "glorot_uniform", "he_normal", "he_uniform", "lecun_normal", "lecun_uniform"}
K_FACTORS = [0.25, 0.5, 1.0, 2.0, 4.0]

# PAPER.md, "Training": the settings of each model at k = 1 (optimizer, lr, schedule, batch, epochs,
# weight decay, augmentation, early stopping). AlexNet's ceiling of 100 epochs and patience 10 are
# fu-fast's numbers for the paper's "early stopping on a 5,000-image validation split".
PAPER = {
    "mlp": ("sgd_momentum", 0.05, "constant", 32, 50, 0.0, False, None),
    "alexnet": ("sgd_momentum", 0.01, "exp:0.95", 128, 100, 0.0, False, 10),
    "resnet56": ("sgd_momentum", 0.1, "step:91,136", 128, 182, 2e-4, True, None),
    "resnet18": ("sgd_momentum", 0.1, "step:30,60,80", 256, 90, 1e-4, True, None),
    "inception_v3": ("rmsprop", 0.045, "exp:0.94/2", 256, 90, 4e-5, True, None),
    "inception_v3_layer": ("rmsprop", 0.045, "exp:0.94/2", 256, 90, 4e-5, True, None),
}


def resolved(name, trials=None):
    """(config, [(member, its resolved TrainConfig)]) of a preset."""
    config = load_config(preset=name, trials=trials)
    return config, [(m, config.train_config(m, None, None).resolve()) for m in config.members()]


def settings(c):
    return (c.optimizer, c.lr, c.schedule, c.batch_size, c.epochs, c.weight_decay, c.augment, c.patience)


def paper(model, k=1.0, **overrides):
    """The paper's settings of ``model`` with the factor k applied to batch and lr, and overrides."""
    optimizer, lr, schedule, batch, epochs, wd, augment, patience = PAPER[model]
    values = dict(optimizer=optimizer, lr=lr * k, schedule=schedule, batch=max(1, round(batch * k)), epochs=epochs,
                  wd=wd, augment=augment, patience=patience)
    values.update(overrides)
    return tuple(values[key] for key in ("optimizer", "lr", "schedule", "batch", "epochs", "wd", "augment",
                                         "patience"))


def approx(values):
    return tuple(pytest.approx(v) if isinstance(v, float) else v for v in values)


# ------------------------------------------------------------------------------------- the presets

EXPECTED_MEMBERS = {   # series x widths x trials (x epochs analysed)
    "mlp-synthetic": 4 * 5 * 3, "mlp-synthetic-10d": 3 * 5 * 3, "mlp-synthetic-optimizers": 3 * 5 * 3,
    "alexnet-cifar-unregularized": 6 * 5 * 3, "alexnet-cifar-init": 6 * 5 * 3,
    "alexnet-cifar-regularizers": 5 * 5 * 3, "cifar-random-labels": 2 * 2 * 5 * 3, "cifar-k": 2 * 5 * 5 * 3,
    "resnet18-imagenet": 5 * 3, "resnet18-imagenet-k": 5 * 5 * 3, "resnet18-imagenet-epochs": 5 * 3 * 4,
    "inception-v3": 3 * 3, "inception-v3-layer": 5 * 3,
}


def test_every_preset_loads_with_its_members_and_metadata():
    assert set(EXPECTED_MEMBERS) <= set(PRESETS)
    for name, preset in PRESETS.items():
        config = load_config(preset=name)
        members = config.members()
        if name in EXPECTED_MEMBERS:
            assert len(members) == EXPECTED_MEMBERS[name], name
        assert len({m.dir for m in members}) == len(members), name
        assert config.trials == 3 and config.name == name
        for key in PRESET_METADATA:
            assert key in preset, (name, key)
            assert key not in config.source      # metadata is no setting of the sweep
        assert isinstance(preset["figures"], list)
        if name in EXPECTED_MEMBERS:   # the paper's experiments name its figures as printed
            assert all(f.startswith("Fig. ") for f in preset["figures"]), name
        assert preset["data"].strip() and preset["cost"].strip() and preset["description"].strip()


@pytest.mark.parametrize("name", ["mlp-synthetic-10d", "alexnet-cifar-init", "alexnet-cifar-regularizers",
                                  "cifar-random-labels", "resnet18-imagenet", "inception-v3", "inception-v3-layer"])
def test_each_member_trains_with_the_papers_settings(name):
    config, members = resolved(name)
    for member, c in members:
        expected = paper(c.model, weight_decay=None)
        variant = member.variant
        if "weight_decay" in variant or "augment" in variant:
            expected = paper(c.model, wd=variant.get("weight_decay", PAPER[c.model][5]),
                             augment=variant.get("augment", PAPER[c.model][6]))
        if c.random_labels:
            expected = paper(c.model, augment=False)
        elif not ("weight_decay" in variant or "augment" in variant):
            expected = paper(c.model)
        assert settings(c) == approx(expected), member.dir
        assert c.k == 1.0 and c.seed == member.trial and c.width == member.width
    widths = sorted({m.width for m, _ in members})
    assert widths == ([0.25, 0.5, 1.0] if name == "inception-v3" else PAPER_WIDTHS)


def test_the_mlp_presets_follow_the_paper_and_record_their_learning_rates():
    _, members = resolved("mlp-synthetic")
    lrs = {(c.input_dim, c.model_options["init"]): c.lr for _, c in members}
    assert lrs == {(10, "gaussian:0.01"): 0.05, (10, "gaussian:0.1"): 0.05,
                   (10000, "gaussian:0.01"): 0.01, (10000, "gaussian:0.1"): 0.01}
    _, members = resolved("mlp-synthetic-10d")
    assert {c.model_options["init"] for _, c in members} == {"gaussian:0.01", "gaussian:0.1", "gaussian:1.0"}
    assert {c.input_dim for _, c in members} == {10}


def test_the_optimizer_preset_trains_momentum_sgd_plain_sgd_and_adam():
    """Fig. E9: the 10,000-dimensional MLPs, batch 32, 50 epochs, init std 0.01, one series per optimiser."""
    config, members = resolved("mlp-synthetic-optimizers")
    by_optimizer = {}
    for member, c in members:
        assert (c.input_dim, c.model_options["input_dim"], c.model_options["init"]) == (10000, 10000, "gaussian:0.01")
        assert (c.batch_size, c.epochs, c.schedule, c.weight_decay, c.k) == (32, 50, "constant", 0.0, 1.0)
        by_optimizer.setdefault(c.optimizer, set()).add(c.lr)
    assert set(by_optimizer) == {"sgd_momentum", "sgd", "adam"}
    assert by_optimizer["sgd_momentum"] == {0.01}     # the mlp-synthetic preset's rate at 10,000 dimensions
    assert all(len(rates) == 1 for rates in by_optimizer.values())
    assert len({m.series for m, _ in members}) == 3


@pytest.mark.parametrize("name, models", [("resnet18-imagenet-k", {"resnet18"}),
                                          ("cifar-k", {"alexnet", "resnet56"})])
def test_the_k_presets_scale_batch_size_and_learning_rate_together(name, models):
    """Figs. E10-E11: k from 1/4 to 4 multiplies the batch size and the learning rate, nothing else."""
    _, members = resolved(name)
    seen = set()
    for member, c in members:
        k = member.variant["k"]
        assert c.k == k and settings(c) == approx(paper(c.model, k)), member.dir
        seen.add((c.model, k))
    assert seen == {(model, k) for model in models for k in K_FACTORS}
    batches = sorted({c.batch_size for _, c in members if c.model == next(iter(models))})
    assert batches == ([64, 128, 256, 512, 1024] if name == "resnet18-imagenet-k" else [32, 64, 128, 256, 512])


def test_the_unregularised_alexnets_are_the_networks_of_the_init_preset():
    """Figs. 1c and 2 show the AlexNets of Figs. 4c and E6: one set of runs serves both presets."""
    _, unregularised = resolved("alexnet-cifar-unregularized")
    _, init = resolved("alexnet-cifar-init")
    assert [m.dir for m, _ in unregularised] == [m.dir for m, _ in init]
    for (member, a), (_, b) in zip(unregularised, init):
        assert a.to_dict() == b.to_dict(), member.dir
        assert (a.augment, a.weight_decay, a.model_options.get("dropout", 0.0)) == (False, 0.0, 0.0)
    assert {c.model_options["init"] for _, c in init} == INITS
    assert PRESETS["alexnet-cifar-init"]["figures"] == ["Fig. 4c", "Fig. E6"]
    assert "Fig. 3" not in PRESETS["alexnet-cifar-init"]["description"]


def test_the_inception_presets_analyse_the_papers_layers():
    layer = load_config(preset="inception-v3-layer")
    assert layer.analysis_settings()["layers"] == ["Mixed_5d", "Mixed_6e", "Mixed_7c"]
    assert layer.analysis_settings()["split"] == "val" and layer.reference_width == 4.0
    full = load_config(preset="inception-v3")
    assert full.widths == [0.25, 0.5, 1.0] and full.reference_width == 1.0
    assert full.analysis_settings()["layers"] is None     # the model's own: the 11 Mixed modules
    assert PRESETS["inception-v3"]["figures"] == ["Fig. 1a", "Fig. 3a-b", "Fig. E4"]


def test_the_epochs_preset_analyses_one_run_per_width_and_trial_at_four_epochs():
    """Fig. E12: ResNet18 trained 20 epochs past its 90, analysed 0, 5, 10 and 20 epochs past them."""
    config, members = resolved("resnet18-imagenet-epochs")
    assert {m.epochs_after for m, _ in members} == {0, 5, 10, 20}
    runs = {}
    for member, c in members:
        assert member.epoch == 90 + member.epochs_after
        assert member.dir == f"{member.run_dir}/epoch{member.epoch}"
        assert member.run_dir == f"resnet18/default/w{member.width:g}/t{member.trial}"
        assert member.series == f"resnet18/epochs_after={member.epochs_after}"
        assert (c.epochs, c.save_epochs) == (110, [90, 95, 100, 110])
        assert settings(c) == approx(paper("resnet18", epochs=110))
        runs.setdefault(member.run_dir, []).append(member.epochs_after)
    assert len(runs) == 15 and all(sorted(v) == [0, 5, 10, 20] for v in runs.values())
    record = members[1][0].record("pending")
    assert (record["epoch"], record["epochs_after"], record["run"]) == (95, 5, "resnet18/default/w0.25/t0")


def test_a_preset_without_its_metadata_is_refused(monkeypatch):
    broken = {k: v for k, v in PRESETS["mlp-synthetic-10d"].items() if k != "cost"}
    monkeypatch.setitem(PRESETS, "broken", broken)
    with pytest.raises(FuFastError, match="preset broken: its cost must be a non-empty string, got None"):
        load_config(preset="broken")
    monkeypatch.setitem(PRESETS, "broken", {**broken, "cost": "1 minute", "figures": "Fig. 4"})
    with pytest.raises(FuFastError, match="its figures must be a list of strings"):
        load_config(preset="broken")


def test_a_presets_model_tables_are_checked_as_a_files_are(monkeypatch):
    """A preset is the same dict as a TOML file reads: its [model.NAME] tables get the same checks."""
    digits = PRESETS["mlp-digits"]
    bad = {**digits, "model": {**digits["model"], "alexnet": {**digits["model"]["alexnet"], "reference_width": 1.0}}}
    monkeypatch.setitem(PRESETS, "bad-digits", bad)
    with pytest.raises(FuFastError, match=r"^preset bad-digits: \[model.alexnet\] reference_width 1 is not one of "
                                          r"the widths of \[model.alexnet\]"):
        load_config(preset="bad-digits")
    monkeypatch.setitem(PRESETS, "bad-digits", {**digits, "model": {"resnet56": {"epochs": 1}}})
    with pytest.raises(FuFastError, match="\\[model.resnet56\\]: 'resnet56' is not one of the sweep's models"):
        load_config(preset="bad-digits")


def test_list_presets_names_every_preset_its_figures_data_and_cost_in_100_columns():
    result = runner.invoke(app, ["sweep", "--list-presets"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert all(len(line) <= 100 for line in text.splitlines())
    blocks = {block.splitlines()[0].split(":")[0]: block for block in text.strip().split("\n\n")}
    assert list(blocks) == list(PRESETS)
    for name, preset in PRESETS.items():
        joined = " ".join(blocks[name].split())   # wrapped lines joined
        for figure in preset["figures"]:
            assert figure in joined.split("\n")[0] or figure in joined, (name, figure)
        assert f"data: {' '.join(preset['data'].split())}" in joined
        assert f"cost: {' '.join(preset['cost'].split())}" in joined


# ----------------------------------------------------------------------------- epoch checkpoints

def test_train_keeps_epoch_checkpoints_that_analyze_reads(tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--model", "mlp", "--width", "0.25", "--epochs", "2", "--save-every", "1",
                                 "--out", str(run), "-q"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "epoch-1.pt", "epoch-2.pt", "model.pt",
                                                     "run.json"]
    assert json.loads((run / "run.json").read_text())["settings"]["save_every"] == 1
    first, first_info = load_model(run / "epoch-1.pt")
    second, second_info = load_model(run / "epoch-2.pt")
    final, final_info = load_model(run)
    assert (first_info["epoch"], second_info["epoch"], final_info["epoch"]) == (1, 2, 2)
    assert not torch.equal(first.fc1.weight, second.fc1.weight)
    assert all(torch.equal(a, b) for a, b in zip(second.state_dict().values(), final.state_dict().values()))
    out = tmp_path / "epoch1.json"
    result = runner.invoke(app, ["analyze", "--checkpoint", str(run / "epoch-1.pt"), "--limit", "100",
                                 "--repeats", "1", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert document["model"]["width"] == 0.25 and document["data"]["name"] == "synthetic"
    assert document["data"]["examples"] == 100 and document["layers"][0]["units"] == 32
    # The same weights analysed in Python give the same numbers: the file analysed is epoch 1's.
    dataset = data_lib.for_analysis(first.fu_fast_config, trained=json.loads((run / "run.json").read_text())[
        "settings"], split="test", limit=100)
    direct = analyze(first, dataset, repeats=1)
    assert document["layers"][0]["prunability"]["curves"] == direct.to_dict()["layers"][0]["prunability"]["curves"]


def test_train_keeps_the_named_epochs_and_checks_them(tmp_path):
    run = tmp_path / "run"
    base = ["train", "--model", "mlp", "--width", "0.25", "--epochs", "3", "-q"]
    result = runner.invoke(app, base + ["--save-epochs", "3,1", "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in run.glob("epoch-*.pt")) == ["epoch-1.pt", "epoch-3.pt"]
    assert json.loads((run / "run.json").read_text())["settings"]["save_epochs"] == [1, 3]
    # Resuming (here: finding it finished) with other epochs kept is refused: some would be missing.
    one_error_line(runner.invoke(app, base + ["--save-epochs", "2", "--out", str(run)]), "save_epochs=[1, 3]")
    for option, value, fragment in (("--save-epochs", "4", "save epoch 4 lies past the last epoch (3)"),
                                    ("--save-epochs", "1,x", "--save-epochs must be epochs separated by commas"),
                                    ("--save-epochs", "0", "a save epoch must be a positive integer, got 0"),
                                    ("--save-every", "0", "save_every")):
        one_error_line(runner.invoke(app, base + [option, value, "--out", str(tmp_path / "new")]), fragment)
        assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------- a sweep at epochs past convergence

EPOCHS_TOML = """
name = "epochs"
models = ["mlp"]
widths = [0.25, 4]
trials = 1
epochs_after = [0, 1]

[train]
epochs = 2

[analyze]
repeats = 1
limit = 100
levels = 3
"""


@pytest.fixture(scope="module")
def epochs_sweep(tmp_path_factory):
    """EPOCHS_TOML with 2 trials, run as shard 0 of 2 and then shard 1, counting the epochs trained:
    (config, sweep directory, epochs trained after shard 0, after shard 1, shard 0's record, the record)."""
    folder = tmp_path_factory.mktemp("epochs")
    path = folder / "epochs.toml"
    path.write_text(EPOCHS_TOML.replace("trials = 1", "trials = 2"))
    config = load_config(path)
    trained = []
    real = train_loop._train_epoch

    def counting(*args, **kwargs):
        trained.append(args[6])   # the epoch number
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_loop, "_train_epoch", counting)
        first = run_sweep(config, folder / "sweep", shard=Shard(0, 2), quiet=True)
        after_first = list(trained)
        record = run_sweep(config, folder / "sweep", shard=Shard(1, 2), quiet=True)
    return config, folder / "sweep", after_first, trained, first, record


def test_a_sweep_analyses_each_run_at_its_epochs_past_convergence(epochs_sweep, tmp_path, monkeypatch):
    config, sweep_dir, after_first, trained, first, record = epochs_sweep
    # Shard 0 of 2 takes runs 0 and 2 (w0.25 t0, w4 t0), each with both of its members.
    assert [(m["id"], m["status"]) for m in first["members"]] == [
        ("mlp/default/w0.25/t0/epoch2", "done"), ("mlp/default/w0.25/t0/epoch3", "done"),
        ("mlp/default/w0.25/t1/epoch2", "pending"), ("mlp/default/w0.25/t1/epoch3", "pending"),
        ("mlp/default/w4/t0/epoch2", "done"), ("mlp/default/w4/t0/epoch3", "done"),
        ("mlp/default/w4/t1/epoch2", "pending"), ("mlp/default/w4/t1/epoch3", "pending")]
    assert after_first == [1, 2, 3] * 2     # one run of 2 + 1 epochs per (width, trial), not one per member
    assert trained == [1, 2, 3] * 4
    assert all(m["status"] == "done" for m in record["members"])
    for entry in record["members"]:
        member = next(m for m in config.members() if m.dir == entry["id"])
        assert (entry["epoch"], entry["epochs_after"], entry["run"]) == (member.epoch, member.epochs_after,
                                                                          member.run_dir)
        assert entry["epoch"] == 2 + entry["epochs_after"]
        assert entry["series"] == f"mlp/epochs_after={entry['epochs_after']}"
        run_dir = sweep_dir / entry["run"]
        settings = json.loads((run_dir / "run.json").read_text())["settings"]
        assert (settings["epochs"], settings["save_epochs"]) == (3, [2, 3])
        # The member's analysis is that of the run's weights of its epoch.
        model, info = load_model(run_dir / f"epoch-{entry['epoch']}.pt")
        assert info["epoch"] == entry["epoch"]
        dataset = data_lib.for_analysis(model.fu_fast_config, trained=settings, split="test", limit=100)
        direct = analyze(model, dataset, repeats=1, levels=3, trial=entry["trial"])
        saved = AnalysisResult.load(sweep_dir / entry["dir"] / "analysis.json")
        assert saved.layers["relu1"].curves == direct.layers["relu1"].curves
        assert saved.layers["relu1"].redundant_units == direct.layers["relu1"].redundant_units
        # Normalised by the 4x member of the same epoch (its layer has 512 units).
        assert saved.layers["relu1"].reference_units == 512
    epoch2, _ = load_model(sweep_dir / "mlp/default/w4/t0/epoch-2.pt")
    epoch3, _ = load_model(sweep_dir / "mlp/default/w4/t0/epoch-3.pt")
    last, _ = load_model(sweep_dir / "mlp/default/w4/t0")
    assert not torch.equal(epoch2.fc1.weight, epoch3.fc1.weight) and torch.equal(epoch3.fc1.weight, last.fc1.weight)

    # Resuming a copy: a member whose analysis is gone is analysed again from the kept weights, untrained.
    out = tmp_path / "sweep"
    shutil.copytree(sweep_dir, out)
    untrained = []
    monkeypatch.setattr(train_loop, "_train_epoch", lambda *a, **k: untrained.append(1))
    (out / "mlp/default/w4/t0/epoch2/analysis.json").unlink()
    events = []
    run_sweep(config, out, quiet=True, on_member=lambda m, e: events.append((m.dir, e)))
    assert [d for d, e in events if e == "done"] == ["mlp/default/w4/t0/epoch2"] and not untrained
    # Its weights gone too: the run is finished, so the member says how to train it again.
    (out / "mlp/default/w4/t0/epoch2/analysis.json").unlink()
    (out / "mlp/default/w4/t0/epoch-2.pt").unlink()
    with pytest.raises(FuFastError, match="has finished without epoch-2.pt, the weights of epoch 2: delete"):
        run_sweep(config, out, quiet=True)
    # Other epochs_after would train the runs otherwise: refused before anything runs, naming what differs.
    path = tmp_path / "other.toml"
    path.write_text(EPOCHS_TOML.replace("trials = 1", "trials = 2").replace("[0, 1]", "[0, 2]"))
    with pytest.raises(FuFastError, match="holds a run with epochs=3, not 4"):
        run_sweep(load_config(path), out, quiet=True)
    assert not untrained


def test_the_epoch_figure_plots_each_width_against_epochs_past_convergence(epochs_sweep, tmp_path):
    _, sweep_dir, *_ = epochs_sweep
    sweep = load_sweep(sweep_dir)
    fig = epoch_figure(sweep, summarize(sweep_dir))
    assert fig is not None
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["mlp: Prunability", "mlp: Redundancy"]
    for ax, quantity in zip(axes, ("prunability", "redundancy")):
        assert "÷ units of the 4x (reference) layer" in ax.get_ylabel()
        lines = {container.get_label(): container.lines[0] for container in ax.containers}
        assert list(lines) == ["width 0.25", "width 4"]
        for width in (0.25, 4.0):
            # x: epochs past convergence; y: the trial means of the members' normalised values.
            expected = []
            for after in (0, 1):
                values = [m.analysis.summary[quantity] for m in sweep.members
                          if m.width == width and m.id.endswith(f"/epoch{2 + after}")]
                assert len(values) == 2
                expected.append(sum(values) / 2)
            line = lines[f"width {width:g}"]
            assert list(line.get_xdata()) == [0, 1]
            assert list(line.get_ydata()) == pytest.approx(expected)
    # Members without epochs_after (a sweep without it) have no such figure.
    plain = tmp_path / "plain"
    shutil.copytree(sweep_dir, plain)
    record = json.loads((plain / "sweep.json").read_text())
    for entry in record["members"]:
        entry["epochs_after"] = None
    (plain / "sweep.json").write_text(json.dumps(record))
    assert epoch_figure(load_sweep(plain), summarize(plain)) is None


# --------------------------------------------------------------------------------- checks on load

@pytest.mark.parametrize("text, fragment", [
    ('epochs_after = [0, 0]\n', "epochs_after must be a non-empty list of distinct integers >= 0"),
    ('epochs_after = []\n', "epochs_after must be a non-empty list"),
    ('epochs_after = [-1]\n', "epochs_after must be a non-empty list"),
    ('epochs_after = [1.5]\n', "epochs_after must be a non-empty list"),
    ('epochs_after = 5\n', "epochs_after must be a non-empty list"),
    ('reference_width = 3\n', "reference_width 3 is not one of the widths"),
    ('reference_width = 0\n', "reference_width must be a positive number, got 0"),
    ('[analyze]\nlayers = ["relu9"]\n', "[analyze] layers: mlp has no module 'relu9'; its analysis layers are relu1"),
    ('[analyze]\nlayers = ["relu1@1"]\n', "[analyze] layers: 'relu1@1': after '@' comes the number of one of the 1"),
    ('[analyze]\nlayers = ["relu1", "relu1"]\n', "[analyze] layers must be a non-empty list of distinct layer names"),
    ('[analyze]\nlayers = []\n', "[analyze] layers must be a non-empty list of distinct layer names"),
    ('[analyze]\nlayers = "relu1"\n', "[analyze] layers must be a non-empty list of distinct layer names"),
])
def test_the_new_keys_are_checked_on_load(tmp_path, text, fragment):
    path = tmp_path / "sweep.toml"
    path.write_text('models = ["mlp"]\nwidths = [0.25, 1, 4]\n' + text)
    with pytest.raises(FuFastError) as e:
        load_config(path)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_early_stopping_and_epochs_after_are_refused_together(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text('models = ["alexnet"]\nepochs_after = [0, 5]\n')
    with pytest.raises(FuFastError, match=r"alexnet trains with early stopping \(patience 10\)"):
        load_config(path)


def test_analysis_layers_of_a_module_that_runs_twice_name_a_call(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text('models = ["resnet56"]\nwidths = [0.25]\n[analyze]\nlayers = ["layer1.0.relu"]\n')
    with pytest.raises(FuFastError, match="runs 2 times per forward pass; name one call, as in 'layer1.0.relu@0'"):
        load_config(path)
    path.write_text('models = ["resnet56"]\nwidths = [0.25]\n[analyze]\nlayers = ["layer1.0.relu@1", "layer3.8"]\n')
    assert load_config(path).analysis_settings()["layers"] == ["layer1.0.relu@1", "layer3.8"]


def test_the_analysis_layers_are_analysed_and_recorded(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text('models = ["mlp"]\nwidths = [0.25]\n[train]\nepochs = 1\n'
                    '[analyze]\nlayers = ["fc1"]\nlimit = 50\nrepeats = 1\nlevels = 3\n')
    record = run_sweep(load_config(path), tmp_path / "sweep", quiet=True)
    assert record["members"][0]["analysis"]["layers"] == ["fc1"]
    result = AnalysisResult.load(tmp_path / "sweep" / record["members"][0]["dir"] / "analysis.json")
    assert list(result.layers) == ["fc1"]
    # The same directory analysed at the model's own layers is another sweep.
    path.write_text(path.read_text().replace('layers = ["fc1"]\n', ""))
    with pytest.raises(FuFastError, match=r"analysed with layers=\['fc1'\], not None"):
        run_sweep(load_config(path), tmp_path / "sweep", quiet=True)


def test_reference_width_normalises_a_series_without_a_4x_member(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text('models = ["mlp"]\nwidths = [0.25, 1]\nreference_width = 1\n[train]\nepochs = 1\n'
                    '[analyze]\nlimit = 50\nrepeats = 1\nlevels = 3\n')
    record = run_sweep(load_config(path), tmp_path / "sweep", quiet=True)
    for entry in record["members"]:
        result = AnalysisResult.load(tmp_path / "sweep" / entry["dir"] / "analysis.json")
        assert result.layers["relu1"].reference_units == 128
        assert math.isclose(result.summary["redundancy"], result.layers["relu1"].redundant_units / 128)
