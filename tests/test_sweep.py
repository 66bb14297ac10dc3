"""Sweeps: configurations and presets, members, resumption, shards, normalisation."""

import json

import pytest

from fu_fast import FuFastError
from fu_fast.analysis import AnalysisResult
from fu_fast.sweep import PRESETS, Shard, load_config, run_sweep

TINY = """
name = "tiny"
models = ["mlp"]
widths = [0.25, 1, 4]
trials = 2

[train]
epochs = 2

[vary]
init = ["gaussian:0.01", "gaussian:0.1"]

[analyze]
repeats = 2
limit = 200
"""


def write(tmp_path, text, name="sweep.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_preset_expands_into_its_members():
    counts = {name: len(load_config(preset=name).members()) for name in PRESETS}
    assert counts["mlp-synthetic"] == 2 * 2 * 5 * 3          # input dims x inits x widths x trials
    assert counts["mlp-synthetic-10d"] == 3 * 5 * 3
    assert counts["alexnet-cifar-init"] == 6 * 5 * 3
    assert counts["alexnet-cifar-regularizers"] == 5 * 5 * 3
    assert counts["cifar-random-labels"] == 2 * 2 * 5 * 3      # two models
    assert load_config(preset="resnet18-imagenet", trials=1).analyze == {"split": "val"}
    members = load_config(preset="mlp-synthetic").members()
    assert len({m.dir for m in members}) == len(members)
    config = load_config(preset="mlp-synthetic")
    big = next(m for m in members if m.variant["input_dim"] == 10000)
    resolved = config.train_config(big, None, None).resolve()
    assert (resolved.input_dim, resolved.lr, resolved.model_options["input_dim"]) == (10000, 0.01, 10000)


def test_toml_variants_and_vary_cross(tmp_path):
    config = load_config(write(tmp_path, TINY + '\n[[variants]]\ndropout = 0.0\n[[variants]]\ndropout = 0.5\n'))
    series = sorted({m.series for m in config.members()})
    assert series == ["mlp/dropout=0.0,init=gaussian:0.01", "mlp/dropout=0.0,init=gaussian:0.1",
                      "mlp/dropout=0.5,init=gaussian:0.01", "mlp/dropout=0.5,init=gaussian:0.1"]
    member = config.members()[-1]
    resolved = config.train_config(member, "/data", "cpu").resolve()
    assert resolved.model_options == {"init": "gaussian:0.1", "dropout": 0.5, "input_dim": 10}
    assert (resolved.epochs, resolved.seed, resolved.data_dir) == (2, member.trial, "/data")


# Two models, each with its own widths and settings: [train] < [model.NAME] < [vary] / [[variants]].
PER_MODEL = """
models = ["mlp", "alexnet"]
widths = [0.25, 1, 4]
trials = 2

[train]
lr = 0.02
epochs = 5
weight_decay = 0.001

[model.alexnet]
widths = [0.0625, 0.125]
reference_width = 0.125
epochs = 3
batch_size = 64

[[variants]]

[[variants]]
epochs = 2
"""


def test_each_model_has_its_own_widths_reference_width_and_settings(tmp_path):
    config = load_config(write(tmp_path, PER_MODEL))
    members = config.members()
    widths = {model: sorted({m.width for m in members if m.model == model}) for model in config.models}
    assert widths == {"mlp": [0.25, 1.0, 4.0], "alexnet": [0.0625, 0.125]}
    assert len(members) == 3 * 2 * 2 + 2 * 2 * 2       # (widths x series x trials) per model
    assert members[0].dir == "mlp/default/w0.25/t0" and members[-1].dir == "alexnet/epochs=2/w0.125/t1"
    assert (config.widths_of("mlp"), config.widths_of("alexnet")) == ([0.25, 1.0, 4.0], [0.0625, 0.125])
    assert (config.reference_width_of("mlp"), config.reference_width_of("alexnet")) == (4.0, 0.125)
    settings = {}
    for member in members:
        c = config.train_config(member, None, None).resolve()
        settings[member.series] = (c.epochs, c.lr, c.weight_decay, c.batch_size)
    # epochs: [train]'s 5 for the MLP, alexnet's own 3, and the variant's 2 over both; lr and weight
    # decay from [train] for both; batch size: alexnet's own, the MLP's default.
    assert settings == {"mlp/default": (5, 0.02, 0.001, 32), "mlp/epochs=2": (2, 0.02, 0.001, 32),
                        "alexnet/default": (3, 0.02, 0.001, 64), "alexnet/epochs=2": (2, 0.02, 0.001, 64)}
    assert config.converged_epochs("alexnet", {}) == 3 and config.converged_epochs("mlp", {}) == 5
    assert config.source["model"]["alexnet"]["widths"] == [0.0625, 0.125]   # sweep.json records it as given


def test_a_model_table_leaves_the_other_models_as_they_were(tmp_path):
    """A sweep without [model.NAME] tables, and a model without one, get the sweep's widths and settings."""
    plain = load_config(write(tmp_path, TINY))
    assert plain.model_tables == {} and plain.widths_of("mlp") == plain.widths == [0.25, 1.0, 4.0]
    assert plain.reference_width_of("mlp") == 4.0 and plain.train_of("mlp") == plain.train
    config = load_config(write(tmp_path, PER_MODEL))
    assert config.train_of("mlp") == config.train == {"lr": 0.02, "epochs": 5, "weight_decay": 0.001}
    assert config.train_of("alexnet") == {"lr": 0.02, "epochs": 3, "weight_decay": 0.001, "batch_size": 64}


@pytest.mark.parametrize("text, message", [
    ('models = ["mlp"]\nfoo = 1\n', "unknown sweep setting"),
    ('models = ["vgg"]\n', "unknown model 'vgg'"),
    ('models = ["mlp"]\nwidths = [0]\n', "positive numbers"),
    ('models = ["mlp"]\ntrials = 0\n', "trials"),
    ('models = ["mlp"]\n[train]\nlearning_rate = 1\n', "unknown training setting 'learning_rate'"),
    ('models = ["mlp"]\n[vary]\ninit = "he_normal"\n', "non-empty list"),
    ('models = ["mlp"]\n[analyze]\nfoo = 1\n', "unknown analysis setting"),
    ('models = ["mlp"\n', "not valid TOML"),
])
def test_bad_configurations_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(FuFastError, match=message) as e:
        load_config(write(tmp_path, text))
    assert "\n" not in str(e.value)


def test_config_sources_and_shards_are_checked(tmp_path):
    with pytest.raises(FuFastError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(FuFastError, match="either"):
        load_config(write(tmp_path, TINY), preset="mlp-synthetic")
    with pytest.raises(FuFastError, match="unknown preset"):
        load_config(preset="nope")
    for text in ("2/2", "a/b", "1"):
        with pytest.raises(FuFastError, match="shard"):
            Shard.parse(text)
    shard = Shard.parse("1/3")
    assert [i for i in range(7) if i in shard] == [1, 4]


def test_sweep_runs_resumes_and_normalises(tmp_path):
    config = load_config(write(tmp_path, TINY))
    out = tmp_path / "sweep"
    record = run_sweep(config, out, quiet=True)
    assert json.loads((out / "sweep.json").read_text()) == record
    assert record["schema"] == "fu-fast/sweep/1" and len(record["members"]) == 12
    assert all(m["status"] == "done" for m in record["members"])
    for member in config.members():
        result = AnalysisResult.load(out / member.dir / "analysis.json")
        layer = result.layers["relu1"]
        assert result.trial == member.trial and result.data["examples"] == 200
        assert layer.reference_units == 512 and layer.units == 128 * member.width
        assert result.summary["redundancy"] == pytest.approx(layer.redundant_units / 512)
        histogram = json.loads((out / member.dir / "correlations.json").read_text())
        pairs = sum(histogram["layers"]["relu1"])   # pairs of live units (a dead unit has no |r|)
        assert histogram["bins"] == 50 and 0 < pairs <= layer.units * (layer.units - 1) // 2
    # Run again: nothing is redone.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("analysis.json")}
    events = []
    run_sweep(config, out, quiet=True, on_member=lambda m, e: events.append(e))
    assert set(events) == {"done before"}
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("analysis.json")}
    # Another configuration is refused where it would change a member that is there, or drop a
    # done one (tests/test_errors_sweep.py: a corrected one reuses the members it leaves alone).
    record = (out / "sweep.json").read_text()
    for change, message in [(("epochs = 2", "epochs = 3"), "holds a run with epochs=2, not 3"),
                            (("repeats = 2", "repeats = 3"), "different sweep: .* analysed with repeats=2, not 3"),
                            (("trials = 2", "trials = 1"), "different sweep .* not in this configuration")]:
        with pytest.raises(FuFastError, match=message):
            run_sweep(load_config(write(tmp_path, TINY.replace(*change))), out, quiet=True)
    assert (out / "sweep.json").read_text() == record


def test_shards_cover_the_sweep_and_normalise_once_the_4x_member_is_done(tmp_path):
    config = load_config(write(tmp_path, TINY.replace("trials = 2", "trials = 1")))
    out = tmp_path / "sweep"
    first = run_sweep(config, out, shard=Shard(0, 2), quiet=True)
    statuses = [m["status"] for m in first["members"]]
    assert statuses == ["done", "pending"] * 3
    # Widths 0.25 and 4 of the first series are done, so they are normalised already.
    done = [m for m in first["members"] if m["status"] == "done"]
    normalised = {m["id"]: AnalysisResult.load(out / m["dir"] / "analysis.json").summary["redundancy"] is not None
                  for m in done}
    assert normalised == {"mlp/init=gaussian:0.01/w0.25/t0": True, "mlp/init=gaussian:0.01/w4/t0": True,
                          "mlp/init=gaussian:0.1/w1/t0": False}
    second = run_sweep(config, out, shard=Shard(1, 2), quiet=True)
    assert all(m["status"] == "done" for m in second["members"])
    for m in second["members"]:
        assert AnalysisResult.load(out / m["dir"] / "analysis.json").summary["redundancy"] is not None


def test_missing_data_stops_the_sweep_before_any_training(tmp_path):
    with pytest.raises(FuFastError, match="cifar-10-batches-py"):
        run_sweep(load_config(preset="alexnet-cifar-init"), tmp_path / "s", data_dir=str(tmp_path / "none"))
    assert not (tmp_path / "s" / "alexnet").exists()
