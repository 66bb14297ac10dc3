"""Bad sweep input: configurations (every key with bad types and values, bad structures, paths
that would leave --out, settings a member ignores, binary and unreadable files) and damaged
member files met on a rerun. Each is one FuFastError line, and nothing is trained or written
before it; a damaged analysis is redone; a corrected configuration reuses every member whose
own settings did not change.
"""

import json
import os
import re
import shutil

import pytest
from typer.testing import CliRunner

from fu_fast import FuFastError
from fu_fast.analysis import AnalysisResult
from fu_fast.cli.app import app
from fu_fast.report import summarize, write_report
from fu_fast.sweep import SweepWarning, load_config, run_sweep
from fu_fast.sweep.config import folder_name

from conftest import one_error_line, write_cifar10

runner = CliRunner()

SMALL = """
name = "small"
models = ["mlp"]
widths = [0.25, 4]

[train]
epochs = 1

[vary]
init = ["gaussian:0.1"]

[analyze]
repeats = 1
limit = 100
levels = 3
"""
MLP = 'models = ["mlp"]\n'
ALEXNET = 'models = ["alexnet"]\n'
BOTH = 'models = ["mlp", "alexnet"]\n'

# [model.NAME] tables: one model's own widths, reference_width and training settings.
BAD_MODEL_TABLES = [
    ("model not a table", MLP + 'model = "alexnet"\n', "model must hold one table per model ([model.NAME]), got"),
    ("model entry not a table", MLP + "model = {mlp = 3}\n", "model must hold one table per model"),
    ("table of a model not swept", MLP + "[model.alexnet]\nepochs = 2\n",
     "[model.alexnet]: 'alexnet' is not one of the sweep's models (mlp)"),
    ("table of an unknown model", MLP + "[model.vgg]\nepochs = 2\n",
     "[model.vgg]: 'vgg' is not one of the sweep's models"),
    ("unknown model table key", MLP + "[model.mlp]\ntrials = 2\n",
     "unknown setting 'trials' in [model.mlp]; known: widths, reference_width and the training settings"),
    ("model widths not a list", MLP + "[model.mlp]\nwidths = 1\n",
     "[model.mlp] widths must be a non-empty list, got 1"),
    ("model widths empty", MLP + "[model.mlp]\nwidths = []\n", "[model.mlp] widths must be a non-empty list"),
    ("model width zero", MLP + "[model.mlp]\nwidths = [0]\n", "[model.mlp] widths must be positive numbers, got [0]"),
    ("model width text", MLP + '[model.mlp]\nwidths = ["1"]\n', "[model.mlp] widths must be positive numbers"),
    ("model width without units", MLP + "[model.mlp]\nwidths = [0.001]\n", "width 0.001 leaves a layer of 128 units"),
    ("model width repeated", MLP + "[model.mlp]\nwidths = [1, 1.0]\n", "member mlp/default/w1/t0 comes twice"),
    ("model reference width zero", MLP + "[model.mlp]\nreference_width = 0\n",
     "[model.mlp] reference_width must be a positive number, got 0"),
    ("model reference width boolean", MLP + "[model.mlp]\nreference_width = true\n",
     "[model.mlp] reference_width must be a positive number, got True"),
    ("model reference width not its width", MLP + "[model.mlp]\nwidths = [1, 2]\nreference_width = 4\n",
     "[model.mlp] reference_width 4 is not one of the widths of [model.mlp] ([1, 2])"),
    ("sweep reference width not a model's width",
     BOTH + "widths = [1, 4]\nreference_width = 4\n[model.alexnet]\nwidths = [0.25]\n",
     "reference_width 4 is not one of the widths of [model.alexnet] ([0.25])"),
    ("model reference width not a sweep width", BOTH + "widths = [1, 2]\n[model.mlp]\nreference_width = 4\n",
     "[model.mlp] reference_width 4 is not one of the widths ([1, 2])"),
    ("model text lr", MLP + '[model.mlp]\nlr = "fast"\n', "[model.mlp] lr must be a finite number, got 'fast'"),
    ("model zero batch", MLP + "[model.mlp]\nbatch_size = 0\n", "[model.mlp] batch_size must be at least 1, got 0"),
    ("model boolean epochs", MLP + "[model.mlp]\nepochs = true\n", "[model.mlp] epochs must be an integer, got True"),
    ("model unknown optimizer", MLP + '[model.mlp]\noptimizer = "lbfgs"\n', "unknown optimizer 'lbfgs'"),
    ("model option the model refuses", BOTH + "[model.mlp]\ninput_size = 8\n", "unknown option input_size for mlp"),
    # Settings that change nothing: the sweep's own, overridden, or ignored by the model's members
    ("model widths are the sweep's", MLP + "widths = [1, 2]\n[model.mlp]\nwidths = [1.0, 2]\n",
     "[model.mlp] widths changes nothing: it equals the sweep's ([1.0, 2]); leave it out"),
    ("model reference width is the sweep's", MLP + "widths = [1, 4]\n[model.mlp]\nreference_width = 4\n",
     "[model.mlp] reference_width changes nothing: it equals the sweep's (4)"),
    ("sweep widths every model overrides", MLP + "widths = [1]\n[model.mlp]\nwidths = [2]\n",
     "widths changes nothing: every model has its own ([model.NAME] widths); leave it out"),
    ("sweep reference width every model overrides",
     MLP + "widths = [1, 2]\nreference_width = 1\n[model.mlp]\nreference_width = 2\n",
     "reference_width changes nothing: every model has its own"),
    ("model setting is [train]'s", MLP + "[train]\nepochs = 3\n[model.mlp]\nepochs = 3\n",
     "[model.mlp] epochs changes nothing: [train] gives it the same value (3); leave it out"),
    ("train setting every model overrides", MLP + "[train]\nepochs = 3\n[model.mlp]\nepochs = 2\n",
     "[train] epochs changes nothing for any member ([model.mlp] sets its own): leave it out"),
    ("model setting every series overrides", MLP + "[model.mlp]\nepochs = 3\n[vary]\nepochs = [1, 2]\n",
     "[model.mlp] epochs changes nothing for any mlp member ([vary] sets its own): leave it out"),
    ("model setting every variant overrides", MLP + "[model.mlp]\nepochs = 3\n[[variants]]\nepochs = 1\n",
     "[model.mlp] epochs changes nothing for any mlp member ([[variants]] set their own)"),
    ("model setting its members ignore", BOTH + "[model.mlp]\nchannels_last = true\n",
     "[model.mlp] channels_last changes nothing for any mlp member (mlp has no conv layers): leave it out"),
    ("model data_dir of synthetic data", BOTH + '[model.mlp]\ndata_dir = "/data"\n',
     "[model.mlp] data_dir changes nothing for any mlp member (synthetic data is generated, not read)"),
]


def refused(call, *fragments) -> str:
    """``call()`` raises FuFastError: one line, holding every fragment."""
    with pytest.raises(FuFastError) as e:
        call()
    message = str(e.value)
    assert "\n" not in message and "Traceback" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def nothing_in(folder) -> bool:
    return not folder.exists() or not any(folder.iterdir())


BAD_CONFIGURATIONS = [
    # The file itself
    ("binary", b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "is not a text file (byte 0x89 at offset 0"),
    ("latin-1", MLP.encode() + b'name = "caf\xe9"\n', "is not a text file (byte 0xe9"),
    ("not toml", MLP + "[train\n", "is not valid TOML"),
    ("missing", None, "cannot read sweep configuration"),
    ("a directory", "DIRECTORY", "cannot read sweep configuration"),
    # Structure: tables are tables, lists lists, no unknown keys
    ("train not a table", MLP + "train = 5\n", "train must be a table ([train]), got 5"),
    ("vary not a table", MLP + 'vary = ["init"]\n', "vary must be a table ([vary])"),
    ("analyze not a table", MLP + "analyze = 1\n", "analyze must be a table ([analyze])"),
    ("variants not a list", MLP + "variants = 3\n", "variants must be a non-empty list of tables"),
    ("variants of numbers", MLP + "variants = [1, 2]\n", "variants must be a non-empty list of tables"),
    ("no variants", MLP + "variants = []\n", "variants must be a non-empty list of tables"),
    ("unknown top key", MLP + "epochs = 3\n", "unknown sweep setting(s) epochs"),
    ("unknown train key", MLP + "[train]\nlearning_rate = 0.1\n",
     "unknown training setting 'learning_rate' in [train]"),
    ("unknown vary key", MLP + "[vary]\nwidth = [1, 2]\n", "unknown training setting 'width' in [vary]"),
    ("unknown variants key", MLP + "[[variants]]\nfoo = 1\n", "unknown training setting 'foo' in [[variants]] 1"),
    ("unknown analyze key", MLP + "[analyze]\nlayer = 2\n", "unknown analysis setting 'layer' in [analyze]"),
    ("analyze layers not a list", MLP + "[analyze]\nlayers = 2\n",
     "[analyze] layers must be a non-empty list of distinct layer names, got 2"),
    ("unknown analysis layer", MLP + '[analyze]\nlayers = ["fc9"]\n', "[analyze] layers: mlp has no module 'fc9'"),
    ("save epochs in train", MLP + "[train]\nsave_every = 1\n", "unknown training setting 'save_every' in [train]"),
    ("epochs_after not a list", MLP + "epochs_after = 3\n", "epochs_after must be a non-empty list"),
    ("epochs_after with early stopping", ALEXNET + "epochs_after = [0]\n", "trains with early stopping"),
    ("reference width not a width", MLP + "widths = [1, 2]\nreference_width = 4\n",
     "reference_width 4 is not one of the widths"),
    ("train sub-table", MLP + '[train.optimizer]\nname = "sgd"\n', "[train] optimizer must be a string"),
    # Top-level values
    ("name not a string", MLP + "name = 5\n", "name must be a non-empty string, got 5"),
    ("empty name", MLP + 'name = " "\n', "name must be a non-empty string"),
    ("models not a list", 'models = "mlp"\n', "models must be a non-empty list, got 'mlp'"),
    ("no models", "models = []\n", "models must be a non-empty list"),
    ("model not a string", "models = [1]\n", "unknown model 1 in models"),
    ("unknown model", 'models = ["vgg"]\n', "unknown model 'vgg'"),
    ("zero width", MLP + "widths = [0]\n", "widths must be positive numbers, got [0]"),
    ("negative width", MLP + "widths = [-1]\n", "widths must be positive numbers"),
    ("infinite width", MLP + "widths = [inf]\n", "widths must be positive numbers, got [inf]"),
    ("nan width", MLP + "widths = [nan]\n", "widths must be positive numbers"),
    ("text width", MLP + 'widths = ["1"]\n', "widths must be positive numbers, got ['1']"),
    ("boolean width", MLP + "widths = [true]\n", "widths must be positive numbers"),
    ("width not a list", MLP + "widths = 1\n", "widths must be a non-empty list, got 1"),
    ("width without units", MLP + "widths = [0.001]\n", "width 0.001 leaves a layer of 128 units"),
    ("repeated width", MLP + "widths = [1, 1.0]\n", "member mlp/default/w1/t0 comes twice"),
    ("zero trials", MLP + "trials = 0\n", "trials must be a positive integer, got 0"),
    ("negative trials", MLP + "trials = -2\n", "trials must be a positive integer"),
    ("fractional trials", MLP + "trials = 1.5\n", "trials must be a positive integer, got 1.5"),
    ("text trials", MLP + 'trials = "2"\n', "trials must be a positive integer, got '2'"),
    # [train]: types, and the least value of every count and size, naming the key
    ("text lr", MLP + '[train]\nlr = "fast"\n', "[train] lr must be a finite number, got 'fast'"),
    ("zero lr", MLP + "[train]\nlr = 0\n", "[train] lr must be positive, got 0"),
    ("nan lr", MLP + "[train]\nlr = nan\n", "[train] lr must be a finite number, got nan"),
    ("zero batch", MLP + "[train]\nbatch_size = 0\n", "[train] batch_size must be at least 1, got 0"),
    ("negative batch", MLP + "[train]\nbatch_size = -32\n", "[train] batch_size must be at least 1, got -32"),
    ("fractional batch", MLP + "[train]\nbatch_size = 2.5\n", "[train] batch_size must be an integer, got 2.5"),
    ("boolean batch", MLP + "[train]\nbatch_size = true\n", "[train] batch_size must be an integer, got True"),
    ("zero epochs", MLP + "[train]\nepochs = 0\n", "[train] epochs must be at least 1, got 0"),
    ("zero patience", ALEXNET + "[train]\npatience = 0\n", "[train] patience must be at least 1, got 0"),
    ("negative workers", MLP + "[train]\nworkers = -1\n", "[train] workers must be at least 0, got -1"),
    ("zero k", MLP + "[train]\nk = 0\n", "[train] k must be positive, got 0"),
    ("zero input_dim", MLP + "[train]\ninput_dim = 0\n", "[train] input_dim must be at least 1, got 0"),
    ("negative data seed", MLP + "[train]\ndata_seed = -1\n", "[train] data_seed must be at least 0, got -1"),
    ("negative weight decay", MLP + "[train]\nweight_decay = -0.1\n", "[train] weight_decay must be at least 0"),
    ("one class", MLP + "[train]\nnum_classes = 1\n", "[train] num_classes must be at least 2, got 1"),
    ("text augment", ALEXNET + '[train]\naugment = "yes"\n', "[train] augment must be true or false, got 'yes'"),
    ("numeric init", MLP + "[train]\ninit = 5\n", "[train] init must be a string, got 5"),
    ("dropout of 1.5", MLP + "[train]\ndropout = 1.5\n", "dropout must be a probability in [0, 1), got 1.5"),
    ("momentum of 1.5", MLP + "[train]\nmomentum = 1.5\n", "momentum must be in [0, 1), got 1.5"),
    ("unknown optimizer", MLP + '[train]\noptimizer = "lbfgs"\n', "unknown optimizer 'lbfgs'"),
    ("bad schedule", MLP + '[train]\nschedule = "cosine"\n', "bad schedule 'cosine'"),
    ("unknown data", MLP + '[train]\ndata = "mnist"\n', "unknown data set 'mnist'"),
    ("image size for an mlp", MLP + "[train]\ninput_size = 32\n", "unknown option input_size for mlp"),
    ("patience without a validation split", MLP + "[train]\npatience = 3\n",
     "early stopping needs a validation split, and synthetic data has none"),
    ("random labels augmented", ALEXNET + "[train]\nrandom_labels = true\naugment = true\n",
     "random labels are trained without augmentation"),
    # [vary] and [[variants]]
    ("vary not a list", MLP + '[vary]\ninit = "he_normal"\n', "[vary] init must be a non-empty list, got 'he_normal'"),
    ("vary empty", MLP + "[vary]\ninit = []\n", "[vary] init must be a non-empty list"),
    ("vary numeric init", MLP + "[vary]\ninit = [1]\n", "[vary] init must be a string, got 1"),
    ("vary unknown init", MLP + '[vary]\ninit = ["gaussian:0.1", "bogus"]\n',
     "member mlp/init=bogus/w1/t0: unknown init"),
    ("vary repeated value", MLP + '[vary]\ninit = ["he_normal", "he_normal"]\n', "comes twice"),
    ("vary zero batch", MLP + "[vary]\nbatch_size = [32, 0]\n", "[vary] batch_size must be at least 1, got 0"),
    ("variants zero epochs", MLP + "[[variants]]\nepochs = 0\n", "[[variants]] 1 epochs must be at least 1, got 0"),
    ("variants text dropout", MLP + "[[variants]]\n[[variants]]\ndropout = \"half\"\n",
     "[[variants]] 2 dropout must be a finite number, got 'half'"),
    # Settings a member's model or data ignores: series that would differ in name only
    ("vary escaping data_dir", MLP + '[vary]\ndata_dir = ["x/../../../../escape_target"]\n',
     "[vary] data_dir changes nothing for member mlp/data_dir=x_"),
    ("vary augment of synthetic data", MLP + "[vary]\naugment = [false, true]\n",
     "[vary] augment changes nothing for member mlp/augment=false/w1/t0 (synthetic data is never augmented)"),
    ("variants augment of synthetic data", MLP + "[[variants]]\n[[variants]]\naugment = true\n",
     "[[variants]] augment changes nothing"),
    ("vary data seed of CIFAR-10", ALEXNET + "[vary]\ndata_seed = [0, 1]\n", "[vary] data_seed changes nothing"),
    ("vary input_dim of CIFAR-10", ALEXNET + "[vary]\ninput_dim = [10, 100]\n", "cifar10 data has no input_dim"),
    ("vary momentum of plain SGD", MLP + '[train]\noptimizer = "sgd"\n[vary]\nmomentum = [0.5, 0.9]\n',
     "optimizer sgd has no momentum"),
    ("vary channels_last of an mlp", MLP + "[vary]\nchannels_last = [false, true]\n", "mlp has no conv layers"),
    ("train data_dir of synthetic data", MLP + '[train]\ndata_dir = "/data"\n',
     "[train] data_dir changes nothing for any member (synthetic data is generated, not read)"),
    # [analyze], by fu_fast.analyze's own rules
    ("one level", MLP + "[analyze]\nlevels = 1\n", "[analyze] levels must be at least 2"),
    ("grid not from 0", MLP + "[analyze]\nlevels = [0.5, 1]\n", "[analyze] levels must increase strictly from 0"),
    ("grid of text", MLP + '[analyze]\nlevels = [0, "a"]\n',
     "[analyze] levels must be an integer or a list of numbers"),
    ("text levels", MLP + '[analyze]\nlevels = "21"\n', "[analyze] levels must be an integer or a list of numbers"),
    ("tolerance 1.5", MLP + "[analyze]\ntolerance = 1.5\n", "[analyze] tolerance must be a number in [0, 1), got 1.5"),
    ("negative tolerance", MLP + "[analyze]\ntolerance = -0.1\n", "[analyze] tolerance must be a number in [0, 1)"),
    ("text tolerance", MLP + '[analyze]\ntolerance = "x"\n', "[analyze] tolerance must be a finite number, got 'x'"),
    ("pca tolerance 1", MLP + "[analyze]\npca_tolerance = 1\n", "[analyze] pca_tolerance must be a number in [0, 1)"),
    ("zero repeats", MLP + "[analyze]\nrepeats = 0\n", "[analyze] repeats must be a positive integer"),
    ("fractional repeats", MLP + "[analyze]\nrepeats = 1.5\n", "[analyze] repeats must be an integer, got 1.5"),
    ("sample cap 1", MLP + "[analyze]\nsample_cap = 1\n", "[analyze] sample_cap must be an integer of at least 2"),
    ("unknown unit", MLP + '[analyze]\nunit = "pixel"\n', "[analyze] unit must be one of auto, position, channel"),
    ("numeric unit", MLP + "[analyze]\nunit = 1\n", "[analyze] unit must be a string, got 1"),
    ("no validation split", MLP + '[analyze]\nsplit = "val"\n',
     "split 'val': synthetic data has the splits train, test"),
    ("unknown split", MLP + '[analyze]\nsplit = "dev"\n', "split 'dev'"),
    ("zero limit", MLP + "[analyze]\nlimit = 0\n", "[analyze] limit must be at least 1, got 0"),
    ("fractional seed", MLP + "[analyze]\nseed = 1.5\n", "[analyze] seed must be an integer, got 1.5"),
    ("zero analysis batch", MLP + "[analyze]\nbatch_size = 0\n", "[analyze] batch_size must be at least 1, got 0"),
    ("unknown order", MLP + '[analyze]\norders = ["random", "size"]\n', "[analyze] unknown order 'size'"),
    ("orders as text", MLP + '[analyze]\norders = "activation"\n',
     "[analyze] orders must be a non-empty list of distinct order names"),
    ("noise from 1", MLP + "[analyze]\nnoise_levels = [1, 2]\n", "[analyze] noise_levels must start at 0"),
    ("noise of text", MLP + '[analyze]\nnoise_levels = [0, "a"]\n', "[analyze] noise_levels must be a list of numbers"),
] + BAD_MODEL_TABLES


@pytest.mark.parametrize("content, fragment", [case[1:] for case in BAD_CONFIGURATIONS],
                         ids=[case[0] for case in BAD_CONFIGURATIONS])
def test_a_bad_configuration_is_one_line_before_anything_runs(tmp_path, content, fragment):
    path = tmp_path / "sweep.toml"
    if content == "DIRECTORY":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    out = tmp_path / "out"
    refused(lambda: run_sweep(load_config(path), out, quiet=True), fragment)
    assert nothing_in(out)


@pytest.mark.parametrize("train, device, fragment", [
    ('device = "tpu"', None, "unknown device 'tpu'"),
    ("", "cuda:99", "device 'cuda:99' asked for"),
])
def test_a_device_that_is_not_here_is_refused_before_anything_runs(tmp_path, train, device, fragment):
    path = tmp_path / "sweep.toml"
    path.write_text(SMALL.replace("epochs = 1", f"epochs = 1\n{train}"))
    refused(lambda: run_sweep(load_config(path), tmp_path / "out", device=device, quiet=True), fragment)
    assert nothing_in(tmp_path / "out")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_configuration_is_one_line(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(SMALL)
    path.chmod(0)
    refused(lambda: load_config(path), f"cannot read sweep configuration {path}: Permission denied")


def test_trials_from_the_command_line_are_checked():
    refused(lambda: load_config(preset="mlp-synthetic-10d", trials=0), "trials must be a positive integer, got 0")


@pytest.mark.parametrize("content, fragment", [
    (MLP + "train = 5\n", "train must be a table"),
    (b"\x00\xff binary", "is not a text file"),
    (MLP + "[train]\nbatch_size = 0\n", "[train] batch_size must be at least 1, got 0"),
    (MLP + '[vary]\ndata_dir = ["x/../../../../escape_target"]\n', "[vary] data_dir changes nothing"),
    (MLP + "[analyze]\nlevels = 1\n", "[analyze] levels must be at least 2"),
])
def test_the_command_line_says_so_in_one_line_and_writes_nothing(tmp_path, content, fragment):
    path = tmp_path / "sweep.toml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = runner.invoke(app, ["sweep", str(path), "--out", str(tmp_path / "out"), "-q"])
    one_error_line(result, str(path), fragment)
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape_target").exists()


@pytest.mark.parametrize("content, fragment", [case[1:] for case in BAD_MODEL_TABLES],
                         ids=[case[0] for case in BAD_MODEL_TABLES])
def test_a_bad_model_table_is_one_error_line_on_the_command_line(tmp_path, content, fragment):
    path = tmp_path / "sweep.toml"
    path.write_text(content)
    result = runner.invoke(app, ["sweep", str(path), "--out", str(tmp_path / "out"), "-q"])
    one_error_line(result, f"{path}: ", fragment)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- the sweep directory

@pytest.mark.parametrize("label", [
    "data_dir=x/../../../../escape_target", "data_dir=/etc", "data_dir=..", "..", ".", ".hidden", "-rf",
    "a\\b", "init=caf\u00e9", "init=x\x00y", "data_dir=" + "a/" * 200, "data_dir=a_b", "data_dir=a/b",
])
def test_a_series_label_becomes_one_safe_stable_file_name(label):
    name = folder_name(label)
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.,:=+~-]*|~[0-9a-f]{12}", name), name
    assert ".." not in name and len(name) <= 96 and name == folder_name(label)
    others = {folder_name(other) for other in ("data_dir=a_b~", "data_dir=a_b", "init=cafe") if other != label}
    assert name not in others


def test_safe_labels_keep_their_names_and_distinct_labels_get_distinct_names():
    for label in ("default", "init=gaussian:0.01", "augment=true,dropout=0.5,weight_decay=0.0005"):
        assert folder_name(label) == label   # the directories of sweeps made before stay where they are
    labels = ["data_dir=a/b", "data_dir=a:b", "data_dir=a_b", "data_dir=a\\b", "data_dir=a//b", "data_dir=a/../b"]
    assert len({folder_name(label) for label in labels}) == len(labels)


def test_a_data_dir_with_dot_dots_keeps_the_member_inside_out(tmp_path, monkeypatch):
    """The bad-input report's case, with data that is there: the member directory was built from
    the series label, which holds the data path, and "x/../../../../data" took it out of --out."""
    write_cifar10(tmp_path / "data", per_batch=4)
    work = tmp_path / "a" / "b" / "c"
    (work / "x").mkdir(parents=True)
    monkeypatch.chdir(work)   # where x/../../../../data is tmp_path/data
    (work / "sweep.toml").write_text(ALEXNET + 'widths = [0.25]\n[train]\nepochs = 1\nbatch_size = 4\n'
                                     '[vary]\ndata_dir = ["x/../../../../data"]\n'
                                     '[analyze]\nrepeats = 1\nlimit = 4\nlevels = 3\n')
    before = sorted(tmp_path.rglob("*"))
    out = work / "out"
    record = run_sweep(load_config("sweep.toml"), "out", quiet=True)
    member, = record["members"]
    assert member["status"] == "done" and member["series"] == "alexnet/data_dir=x/../../../../data"
    assert (out / member["dir"] / "analysis.json").resolve().is_relative_to(out.resolve())
    assert [p for p in sorted(tmp_path.rglob("*")) if out not in p.parents and p != out] == before


def test_a_member_directory_reached_through_a_link_outside_is_refused(tmp_path):
    config = tmp_path / "sweep.toml"
    config.write_text(SMALL)
    outside, out = tmp_path / "outside", tmp_path / "out"
    outside.mkdir()
    out.mkdir()
    (out / "mlp").symlink_to(outside)
    refused(lambda: run_sweep(load_config(config), out, quiet=True), "lies outside the sweep directory")
    assert nothing_in(outside) and [p.name for p in out.iterdir()] == ["mlp"]


# ------------------------------------------------------------------------- reruns, damaged files

@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    """Two done members (widths 0.25 and 4) of SMALL; copy it before changing anything."""
    root = tmp_path_factory.mktemp("small")
    (root / "sweep.toml").write_text(SMALL)
    run_sweep(load_config(root / "sweep.toml"), root / "out", quiet=True)
    return root


@pytest.fixture
def sweep_copy(small_sweep, tmp_path):
    shutil.copytree(small_sweep, tmp_path / "copy")
    return tmp_path / "copy"


def member_files(out, width="4"):
    folder = out / "mlp" / "init=gaussian:0.1" / f"w{width}" / "t0"
    return {name: folder / name for name in ("analysis.json", "correlations.json", "run.json", "model.pt")}


def snapshot(out) -> dict:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.rglob("*")) if p.is_file()}


DAMAGED_JSON = {
    "empty": b"", "blank": b" \n", "garbage": b"{not json", "binary": b"\x89PNG\x00\xff\xfe",
    "a list": b"[]", "null": b"null", "another schema": b'{"schema": "fu-fast/run/1"}',
    "no layers": b'{"schema": "fu-fast/analysis/1", "model": {}, "data": {}, "settings": {}}',
}


@pytest.mark.parametrize("damage", list(DAMAGED_JSON) + ["truncated", "a NaN"])
def test_a_damaged_analysis_is_redone_with_one_warning(sweep_copy, damage):
    out = sweep_copy / "out"
    files = member_files(out)
    good = files["analysis.json"].read_text()
    if damage == "truncated":
        files["analysis.json"].write_text(good[:len(good) // 2])
    elif damage == "a NaN":   # JSON as Python writes it, but no result holds one
        files["analysis.json"].write_text(good.replace('"units": 512', '"units": NaN'))
    else:
        files["analysis.json"].write_bytes(DAMAGED_JSON[damage])
    model = files["model.pt"].read_bytes(), files["model.pt"].stat().st_mtime_ns
    events = []
    with pytest.warns(SweepWarning) as caught:
        record = run_sweep(load_config(sweep_copy / "sweep.toml"), out, quiet=True,
                           on_member=lambda m, e: events.append((m.width, e)))
    message, = [str(w.message) for w in caught]
    assert "\n" not in message and f"{files['analysis.json']} is not a fu-fast analysis document" in message
    assert message.endswith("it counts as not done, and its analysis is redone (the training is kept)")
    assert events == [(0.25, "done before"), (4.0, "start"), (4.0, "done")]
    assert all(m["status"] == "done" for m in record["members"])
    assert AnalysisResult.load(files["analysis.json"]).layers["relu1"].reference_units == 512   # normalised again
    assert (files["model.pt"].read_bytes(), files["model.pt"].stat().st_mtime_ns) == model    # training kept
    assert [s["series"] for s in summarize(out)["series"]] == ["mlp/init=gaussian:0.1"]


def test_the_command_line_shows_the_warning_as_one_line(sweep_copy):
    from typer.testing import CliRunner

    from fu_fast.cli.app import app

    files = member_files(sweep_copy / "out")
    files["analysis.json"].write_bytes(b"")
    result = CliRunner().invoke(app, ["sweep", str(sweep_copy / "sweep.toml"), "--out", str(sweep_copy / "out"),
                                      "--no-report", "-q"])
    assert result.exit_code == 0, result.output
    warning, = [line for line in result.stderr.splitlines() if line]
    assert warning.startswith("warning: sweep member ") and "is not a fu-fast analysis document" in warning


@pytest.mark.parametrize("damage", list(DAMAGED_JSON))
def test_the_report_names_a_damaged_member_file(sweep_copy, damage):
    out = sweep_copy / "out"
    for name in ("analysis.json", "correlations.json"):
        path = member_files(out)[name]
        good = path.read_bytes()
        path.write_bytes(DAMAGED_JSON[damage])
        message = refused(lambda: write_report(out), str(path))
        assert "malformed member entry" not in message
        path.write_bytes(good)
    assert not (out / "report").exists()
    # A damaged training record does not stop the report (its numbers come from the analysis): the
    # training table names it, and the summary says so.
    from fu_fast.report.table1 import table1_markdown
    from fu_fast.report.tables import load_sweep

    path = member_files(out)["run.json"]
    path.write_bytes(DAMAGED_JSON[damage])
    record, table = str(path.relative_to(out)), table1_markdown(load_sweep(out))
    if damage == "another schema":   # {"schema": "fu-fast/run/1"}: a run record without anything in it
        assert record not in table
    else:
        assert f"`{record}` is damaged: " in table
    if damage == "garbage":   # the whole report, once
        folder = write_report(out)
        assert (folder / "table1.md").read_text() == table
        assert "Damaged training records (run.json)" in (folder / "summary.md").read_text()


@pytest.mark.parametrize("damage", ["empty", "garbage", "a list", "another schema"])
def test_a_damaged_training_record_is_named_before_anything_runs(sweep_copy, damage):
    out = sweep_copy / "out"
    member_files(out)["run.json"].write_bytes(DAMAGED_JSON[damage])
    before = snapshot(out)
    refused(lambda: run_sweep(load_config(sweep_copy / "sweep.toml"), out, quiet=True),
            str(member_files(out)["run.json"]))
    assert snapshot(out) == before


@pytest.mark.parametrize("damage, fragment", [
    (lambda record: "", "is not a readable sweep record"),
    (lambda record: "[1]", "is not a fu-fast sweep record"),
    (lambda record: json.dumps({**record, "members": [{"id": 1}]}), "has a malformed member list"),
    (lambda record: json.dumps({**record, "members": record["members"] + [{"id": "x", "dir": "../../elsewhere"}]}),
     "lies outside the sweep directory"),
], ids=["empty", "a list", "an id not a string", "a dir outside"])
def test_a_damaged_sweep_record_is_named_before_anything_runs(sweep_copy, damage, fragment):
    out = sweep_copy / "out"
    (out / "sweep.json").write_text(damage(json.loads((out / "sweep.json").read_text())))
    before = snapshot(out)
    refused(lambda: run_sweep(load_config(sweep_copy / "sweep.toml"), out, quiet=True), fragment)
    assert snapshot(out) == before


def test_a_corrected_configuration_reuses_the_unchanged_members(sweep_copy):
    """A bad value is refused before anything runs; its correction (with another series and
    width added, and another name) reuses the members whose own settings did not change."""
    out = sweep_copy / "out"
    before = snapshot(out)
    bad = sweep_copy / "bad.toml"
    bad.write_text(SMALL.replace('["gaussian:0.1"]', '["gaussian:0.1", "bogus"]'))
    refused(lambda: run_sweep(load_config(bad), out, quiet=True), "unknown init 'bogus'")
    assert snapshot(out) == before
    fixed = sweep_copy / "fixed.toml"
    fixed.write_text(SMALL.replace('["gaussian:0.1"]', '["gaussian:0.1", "gaussian:0.01"]')
                     .replace("[0.25, 4]", "[0.25, 1, 4]").replace('"small"', '"small, fixed"'))
    events = {}
    record = run_sweep(load_config(fixed), out, quiet=True, on_member=lambda m, e: events.setdefault(m.dir, e))
    assert len(record["members"]) == 6 and all(m["status"] == "done" for m in record["members"])
    assert events["mlp/init=gaussian:0.1/w0.25/t0"] == events["mlp/init=gaussian:0.1/w4/t0"] == "done before"
    for name in ("model.pt", "run.json", "analysis.json"):
        for width in ("0.25", "4"):
            path = member_files(out, width)[name]
            assert (path.read_bytes(), path.stat().st_mtime_ns) == before[path]


def test_a_trained_member_is_analysed_with_corrected_analysis_settings(sweep_copy):
    """A member trained but not analysed (its analysis failed) keeps its training when the
    analysis settings change; a member analysed already does not change under a sweep's feet."""
    out = sweep_copy / "out"
    files = member_files(out)
    files["analysis.json"].unlink()
    model = files["model.pt"].read_bytes(), files["model.pt"].stat().st_mtime_ns
    changed = sweep_copy / "changed.toml"
    changed.write_text(SMALL.replace("repeats = 1", "repeats = 2"))
    before = snapshot(out)
    refused(lambda: run_sweep(load_config(changed), out, quiet=True),
            f"{out} holds a different sweep: member mlp/init=gaussian:0.1/w0.25/t0 was analysed with repeats=1, "
            f"not 2", "delete")
    assert snapshot(out) == before
    member_files(out, "0.25")["analysis.json"].unlink()
    run_sweep(load_config(changed), out, quiet=True)
    assert AnalysisResult.load(files["analysis.json"]).settings["repeats"] == 2
    assert (files["model.pt"].read_bytes(), files["model.pt"].stat().st_mtime_ns) == model


@pytest.mark.parametrize("change, fragment", [
    (("epochs = 1", "epochs = 2"), "sweep member mlp/init=gaussian:0.1/w0.25/t0: "),
    (("levels = 3", "levels = 5"), "was analysed with levels=[0.0, 0.5, 1.0], not [0.0, 0.25, 0.5, 0.75, 1.0]"),
    (("[0.25, 4]", "[0.25]"), "its done member mlp/init=gaussian:0.1/w4/t0 is not in this configuration"),
])
def test_a_configuration_that_would_change_or_drop_a_done_member_is_refused(sweep_copy, change, fragment):
    out = sweep_copy / "out"
    other = sweep_copy / "other.toml"
    other.write_text(SMALL.replace(*change))
    before = snapshot(out)
    refused(lambda: run_sweep(load_config(other), out, quiet=True), fragment)
    assert snapshot(out) == before


def test_a_sweep_recorded_before_members_carried_their_settings_is_reused(sweep_copy):
    out = sweep_copy / "out"
    record = json.loads((out / "sweep.json").read_text())
    for entry in record["members"]:
        del entry["analysis"]
    (out / "sweep.json").write_text(json.dumps(record))
    events = []
    run_sweep(load_config(sweep_copy / "sweep.toml"), out, quiet=True, on_member=lambda m, e: events.append(e))
    assert events == ["done before", "done before"]
    (out / "sweep.json").write_text(json.dumps(record))
    other = sweep_copy / "other.toml"
    other.write_text(SMALL.replace("repeats = 1", "repeats = 2"))
    refused(lambda: run_sweep(load_config(other), out, quiet=True), "was analysed with repeats=1, not 2")


def test_a_sweep_recorded_before_the_layers_setting_is_reused(sweep_copy):
    """Records written before [analyze] layers existed say nothing of it: they ran with the model's own."""
    out = sweep_copy / "out"
    record = json.loads((out / "sweep.json").read_text())
    for entry in record["members"]:
        del entry["analysis"]["layers"]
        del entry["run"], entry["epoch"], entry["epochs_after"]
    (out / "sweep.json").write_text(json.dumps(record))
    events = []
    run_sweep(load_config(sweep_copy / "sweep.toml"), out, quiet=True, on_member=lambda m, e: events.append(e))
    assert events == ["done before", "done before"]
    assert all(entry["analysis"]["layers"] is None for entry in json.loads((out / "sweep.json").read_text())["members"])
    other = sweep_copy / "other.toml"
    other.write_text(SMALL + 'layers = ["relu1"]\n')
    refused(lambda: run_sweep(load_config(other), out, quiet=True), "was analysed with layers=None, not ['relu1']")
