"""fu_fast.report: the numbers of summary.md / report.json against the analysis documents, gains,
the un-normalised fallback, the figures, bad input, and a hand-made case with a known g."""

import json
import shutil
import statistics

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import fu_fast
from fu_fast.cli.app import app
from fu_fast.report import FIGURES, summarize, write_report
from fu_fast.report.paper import DEFAULT_FIGURES
from fu_fast.report.tables import markdown

from conftest import one_error_line

WIDTHS = [0.25, 0.5, 1.0, 2.0, 4.0]
TRIALS = [0, 1]
SERIES = {"mlp/init=default": {"init": "default"}, "mlp/init=gaussian:0.5": {"init": "gaussian:0.5"}}


def _model(width, variant, seed, data):
    """fc -> ReLU (layer '1') -> fc -> ReLU (layer '3') -> out, 32 * width units per hidden layer; the
    readout is fitted to the data by ridge regression (a random-features network: accurate, and
    cheap to 'train')."""
    torch.manual_seed(seed)
    hidden = int(32 * width)
    model = torch.nn.Sequential(torch.nn.Linear(5, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                                torch.nn.ReLU(), torch.nn.Linear(hidden, 3)).double()
    if variant["init"] != "default":
        torch.nn.init.normal_(model[0].weight, std=float(variant["init"].split(":")[1]))
    inputs, labels = data
    with torch.no_grad():
        features = torch.cat([model[:4](inputs), torch.ones(len(inputs), 1, dtype=inputs.dtype)], 1)
        gram = features.T @ features + 1e-2 * torch.eye(hidden + 1, dtype=inputs.dtype)
        readout = torch.linalg.solve(gram, features.T @ torch.nn.functional.one_hot(labels, 3).double())
        model[4].weight.copy_(readout[:-1].T)
        model[4].bias.copy_(readout[-1])
    return model


def _data():
    generator = torch.Generator().manual_seed(7)
    inputs = torch.randn(300, 5, generator=generator, dtype=torch.float64)
    teacher = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    return inputs, (inputs @ teacher).argmax(1)


def _build_sweep(root, series: dict, *, widths_of=lambda series: WIDTHS):
    """A sweep directory as fu_fast.sweep writes it, from real analyses of small random MLPs;
    a series is normalised by its 4x member when it has one. One extra member is pending."""
    data = _data()
    entries = []
    for s_index, (series_id, variant) in enumerate(series.items()):
        results = {}
        for width in widths_of(series_id):
            for trial in TRIALS:
                model = _model(width, variant, 100 * s_index + 10 * trial + int(4 * width), data)
                results[width, trial] = fu_fast.analyze(
                    model, data, layers=["1", "3"], seed=trial, trial=trial,
                    model_info={"name": "mlp", "width": width, "options": dict(variant)})
        reference = results.get((4.0, 0))
        for (width, trial), result in results.items():
            member_dir = f"{series_id}/w{width:g}/t{trial}"
            folder = root / member_dir
            folder.mkdir(parents=True)
            if reference is not None:
                result.normalize(reference)
            result.save(folder / "analysis.json")
            (folder / "correlations.json").write_text(json.dumps(
                {"bins": 50, "layers": {name: layer.abs_r_histogram for name, layer in result.layers.items()}}))
            (folder / "run.json").write_text(json.dumps(
                {"schema": "fu-fast/run/1", "model": {"name": "mlp", "width": width, "options": variant,
                                                      "parameters": result.model["parameters"]},
                 "epochs": [{"epoch": 1, "loss": 1.0, "train_accuracy": 0.5, "test_accuracy": 0.5}],
                 "best_epoch": 1}))
            entries.append({"id": member_dir, "dir": member_dir, "model": "mlp", "width": width, "trial": trial,
                            "series": series_id, "variant": variant, "status": "done"})
    first = next(iter(series))
    entries.append({"id": f"{first}/w8/t0", "dir": f"{first}/w8/t0", "model": "mlp", "width": 8.0, "trial": 0,
                    "series": first, "variant": series[first], "status": "pending"})
    (root / "sweep.json").write_text(json.dumps({"schema": "fu-fast/sweep/1", "name": "tiny", "config": {},
                                                 "members": entries}))
    return root


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = _build_sweep(tmp_path_factory.mktemp("sweep"), SERIES)
    write_report(root)
    return root


# ---------------------------------------------------------------------------------- reading back

def _sections(markdown: str) -> dict[str, list[list[list[str]]]]:
    """heading -> its tables, each a list of rows of cells (header and separator dropped)."""
    sections, tables, table = {}, None, None
    for line in markdown.splitlines():
        if line.startswith("## "):
            tables = sections.setdefault(line[3:], [])
            table = None
        elif line.startswith("|") and tables is not None:
            if table is None:
                table = []
                tables.append(table)
            table.append([c.strip() for c in line.strip("|").split("|")])
        else:
            table = None
    return {h: [t[2:] for t in ts] for h, ts in sections.items()}


def _mean_sd(cell: str) -> tuple[float, float]:
    mean, sd = cell.split("±")
    return float(mean), float(sd)


def _expected(root, series_id, normalized=True):
    """Straight from the analysis.json files: per width, the network and per-layer values per trial."""
    sweep = json.loads((root / "sweep.json").read_text())
    out = {}
    for entry in sweep["members"]:
        if entry["series"] != series_id or entry["status"] != "done":
            continue
        doc = json.loads((root / entry["dir"] / "analysis.json").read_text())
        per_layer = {}
        for layer in doc["layers"]:
            p_ref = layer["reference_ablation_units"] if normalized else 1
            r_ref = layer["reference_units"] if normalized else 1
            prunable = layer["prunability"]["prunable_units"]
            redundant = layer["redundancy"]["redundant_units"]
            per_layer[layer["name"]] = {
                "prunability": prunable / p_ref, "redundancy": redundant / r_ref,
                "non_prunable": (layer["ablation_units"] - prunable) / p_ref,
                "non_redundant": (layer["units"] - redundant) / r_ref}
        values = {q: statistics.fmean(v[q] for v in per_layer.values()) for q in next(iter(per_layer.values()))}
        if normalized:
            assert values["prunability"] == pytest.approx(doc["summary"]["prunability"], abs=1e-12)
            assert values["redundancy"] == pytest.approx(doc["summary"]["redundancy"], abs=1e-12)
        w = out.setdefault(entry["width"], {"accuracy": [], "parameters": doc["model"]["parameters"],
                                            "layers": {}, **{q: [] for q in values}})
        w["accuracy"].append(doc["model"]["accuracy"])
        for q, v in values.items():
            w[q].append(v)
        for name, lv in per_layer.items():
            for q, v in lv.items():
                w["layers"].setdefault(name, {}).setdefault(q, []).append(v)
    return dict(sorted(out.items()))


def _gain(widths, means):
    """fu_fast.gain, None where it is undefined (a non-positive mean)."""
    try:
        return fu_fast.gain(widths, means)
    except ValueError:
        return None


def _stats(values):
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


QUANTITIES = ["prunability", "redundancy", "non_prunable", "non_redundant"]
# The figures of every width sweep: FIGURES less the epochs figure (a sweep with epochs_after only), and the
# paper's width-series layout (a sweep not made from a preset).
WIDTH_FIGURES = [name for name in FIGURES if name != "epochs"] + [spec.name for spec in DEFAULT_FIGURES]
HALF_ULP = 0.5e-4 + 1e-12   # numbers are printed with 4 decimals


def _check_series_table(markdown_tables, expected):
    network, layers = markdown_tables
    assert [float(row[0]) for row in network[:-1]] == list(expected)
    for row, (width, e) in zip(network, expected.items()):
        assert int(row[1]) == len(TRIALS) and int(row[2]) == e["parameters"]
        for cell, key in zip(row[3:], ["accuracy"] + QUANTITIES):
            mean, sd = _mean_sd(cell)
            e_mean, e_sd = _stats(e[key])
            assert abs(mean - e_mean) <= HALF_ULP and abs(sd - e_sd) <= HALF_ULP, (width, key)
    assert network[-1][0] == "g"
    gains = [_gain(list(expected), [_stats(e[key])[0] for e in expected.values()])
             for key in ["accuracy"] + QUANTITIES]
    for cell, g in zip(network[-1][3:], gains):
        assert cell == "n/a" if g is None else abs(float(cell) - g) <= HALF_ULP
    for row in layers:
        if row[1] == "g":
            continue
        e = expected[float(row[1])]["layers"][row[0]]
        for cell, key in zip(row[2:], QUANTITIES):
            mean, sd = _mean_sd(cell)
            assert abs(mean - _stats(e[key])[0]) <= HALF_ULP and abs(sd - _stats(e[key])[1]) <= HALF_ULP


# ----------------------------------------------------------------------------------------- tests

def test_summary_numbers_are_the_trial_statistics_of_the_analyses(sweep):
    markdown = (sweep / "report" / "summary.md").read_text()
    assert "# Frivolous units: tiny" in markdown
    assert "20 done, 1 pending" in markdown and "mlp/init=default/w8/t0" in markdown
    sections = _sections(markdown)
    for series_id, variant in SERIES.items():
        label = f"mlp init={variant['init']}"
        assert label in sections
        assert "| width | trials | parameters | accuracy | prunability | redundancy | non-prunable | non-redundant |" \
            in markdown
        _check_series_table(sections[label], _expected(sweep, series_id))


def test_report_json_is_summarize_and_gains_are_fu_fast_gain(sweep):
    report = json.loads((sweep / "report" / "report.json").read_text())
    assert report == json.loads(json.dumps(summarize(sweep)))
    assert report["members"] == {"done": 20, "pending": 1, "missing": ["mlp/init=default/w8/t0"]}
    for s in report["series"]:
        assert s["normalized"] is True and s["widths"] == WIDTHS
        expected = _expected(sweep, s["series"])
        for q in QUANTITIES:
            means = [_stats(e[q])[0] for e in expected.values()]
            assert [r[q]["mean"] for r in s["rows"]] == pytest.approx(means, abs=1e-12)
            assert s["gains"][q] == pytest.approx(_gain(WIDTHS, means), rel=1e-12)
            assert list(s["layers"]) == ["1", "3"]
            for name, layer in s["layers"].items():
                layer_means = [_stats(e["layers"][name][q])[0] for e in expected.values()]
                assert layer["gains"][q] == pytest.approx(_gain(WIDTHS, layer_means), rel=1e-12)
        params = [e["parameters"] for e in expected.values()]
        assert s["gains"]["parameters"] == pytest.approx(fu_fast.gain(WIDTHS, params), rel=1e-12)


def test_gain_ranges_bound_every_curve(sweep):
    report = json.loads((sweep / "report" / "report.json").read_text())
    ranges = report["gain_range"]
    for q in QUANTITIES + ["parameters", "accuracy"]:
        gains = [s["gains"][q] for s in report["series"] if s["gains"][q] is not None]
        assert ranges["network"][q]["min"] == min(gains) and ranges["network"][q]["max"] == max(gains)
    for q in QUANTITIES:
        gains = [layer["gains"][q] for s in report["series"] for layer in s["layers"].values()
                 if layer["gains"][q] is not None]
        assert all(ranges["layers"][q]["min"] <= g <= ranges["layers"][q]["max"] for g in gains)
        assert {ranges["layers"][q]["min"], ranges["layers"][q]["max"]} <= set(gains)
    gain_table = _sections((sweep / "report" / "summary.md").read_text())["Gain ranges"][0]
    row = next(r for r in gain_table if r[0] == "prunability")
    assert float(row[1]) == pytest.approx(ranges["network"]["prunability"]["min"], abs=HALF_ULP)
    assert float(row[2]) == pytest.approx(ranges["network"]["prunability"]["max"], abs=HALF_ULP)


def test_every_figure_is_a_png_and_a_pdf(sweep):
    from matplotlib.image import imread

    assert not (sweep / "report" / "epochs.png").exists()   # no epochs_after: no epochs figure
    summary = (sweep / "report" / "summary.md").read_text()
    assert "[table1.md](table1.md)" in summary and (sweep / "report" / "table1.md").read_text().startswith("# Table 1")
    for name in WIDTH_FIGURES:
        png, pdf = sweep / "report" / f"{name}.png", sweep / "report" / f"{name}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        image = imread(png)
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0, name
        assert pdf.read_bytes()[:4] == b"%PDF", name
        assert f"![{name}]({name}.png)" in (sweep / "report" / "summary.md").read_text()
    assert not [p.name for p in (sweep / "report").iterdir() if p.name.startswith(".")]   # no temporary files


def test_no_correlations_no_violins(sweep, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(sweep, root)   # with the report: its violins are stale once correlations.json are gone
    for path in root.rglob("correlations.json"):
        path.unlink()
    folder = write_report(root)
    assert not (folder / "correlation_violins.png").exists() and not (folder / "correlation_violins.pdf").exists()
    assert (folder / "prunability.png").exists()
    assert "correlation_violins" not in (folder / "summary.md").read_text()


def test_series_without_a_4x_member_falls_back_to_unit_counts(tmp_path):
    series = {"mlp/init=default": {"init": "default"}, "mlp/init=gaussian:0.5": {"init": "gaussian:0.5"}}
    root = _build_sweep(tmp_path, series,
                        widths_of=lambda s: WIDTHS if s == "mlp/init=default" else [0.25, 0.5, 1.0])
    report = summarize(root)
    normalised, counts = report["series"]
    assert normalised["normalized"] is True and counts["normalized"] is False
    expected = _expected(root, "mlp/init=gaussian:0.5", normalized=False)
    for q in QUANTITIES:
        means = [_stats(e[q])[0] for e in expected.values()]
        assert [r[q]["mean"] for r in counts["rows"]] == pytest.approx(means, abs=1e-12)
        assert counts["gains"][q] == pytest.approx(_gain([0.25, 0.5, 1.0], means), rel=1e-12)

    folder = write_report(root)
    markdown = (folder / "summary.md").read_text()
    section = markdown[markdown.index("## mlp init=gaussian:0.5"):markdown.index("## Gain ranges")]
    assert "Not normalised" in section
    assert "| prunable units | redundant units | non-prunable units | non-redundant units |" in section
    assert "| prunability |" not in section
    _check_series_table(_sections(markdown)["mlp init=gaussian:0.5"], expected)
    default = markdown[markdown.index("## mlp init=default"):markdown.index("## mlp init=gaussian:0.5")]
    assert "| prunability | redundancy |" in default and "Not normalised" not in default
    for name in WIDTH_FIGURES:
        assert (folder / f"{name}.png").stat().st_size > 0


def _document(width: float, trial: int, layers=("a", "b")) -> dict:
    """A hand-made analysis document: prunable and redundant units exactly 8 * width^1.5 per layer,
    32 * width units per layer, normalised by the 4x layer (128 units)."""
    units = int(32 * width)
    frivolous = 8 * width ** 1.5
    layer_docs = [{
        "name": name, "kind": "linear", "units": units, "ablation_units": units,
        "reference_units": 128, "reference_ablation_units": 128,
        "prunability": {"curves": [[1.0, 0.9, 0.0]], "prunable_fraction": frivolous / units,
                        "prunable_units": frivolous, "normalized": frivolous / 128},
        "redundancy": {"samples": 100, "components": units - int(frivolous), "redundant_units": int(frivolous),
                       "explained_variance_ratio": [1.0], "normalized": int(frivolous) / 128},
        "correlation": {"mean_abs_r": 0.1, "abs_r_quantiles": None},
    } for name in layers]
    return {"schema": "fu-fast/analysis/1",
            "model": {"name": "mlp", "width": width, "parameters": 100 * units, "accuracy": 0.9, "options": {}},
            "data": {"name": "hand", "examples": 100, "split": "test", "options": {}}, "trial": trial,
            "settings": {"tolerance": 0.2, "pca_tolerance": 0.05, "repeats": 1, "levels": [0.0, 0.5, 1.0],
                         "sample_cap": 50000, "unit": "position", "seed": 0, "precision": "float64",
                         "device": "cpu"},
            "layers": layer_docs, "summary": {"prunability": frivolous / 128, "redundancy": int(frivolous) / 128},
            "timing": {"seconds": 0.0, "passes_over_data": 1}, "build": {"version": "0", "backend": "cpu"}}


def test_known_gain_of_a_hand_made_series(tmp_path):
    widths = [0.25, 1.0, 4.0]   # 8 * width^1.5 is a whole number of redundant units: 1, 8, 64
    members = []
    for width in widths:
        for trial in TRIALS:
            folder = tmp_path / f"w{width:g}" / f"t{trial}"
            folder.mkdir(parents=True)
            document = _document(width, trial)
            if trial == 1:   # no accuracy in the analysis: it comes from the training record's best epoch
                document["model"]["accuracy"] = None
                (folder / "run.json").write_text(json.dumps({
                    "schema": "fu-fast/run/1", "best_epoch": 2,
                    "epochs": [{"epoch": 1, "test_accuracy": 0.5}, {"epoch": 2, "test_accuracy": 0.9}]}))
            (folder / "analysis.json").write_text(json.dumps(document))
            members.append({"id": f"w{width:g}/t{trial}", "dir": f"w{width:g}/t{trial}", "model": "mlp",
                            "width": width, "trial": trial, "series": "mlp", "variant": {}, "status": "done"})
    (tmp_path / "sweep.json").write_text(json.dumps({"schema": "fu-fast/sweep/1", "name": "hand", "config": {},
                                                     "members": members}))
    series, = summarize(tmp_path)["series"]
    assert series["label"] == "mlp"
    for gains in [series["gains"]] + [layer["gains"] for layer in series["layers"].values()]:
        assert abs(gains["prunability"] - 2 ** 1.5) < 1e-9
        assert abs(gains["redundancy"] - 2 ** 1.5) < 1e-9
    assert abs(series["gains"]["parameters"] - 2.0) < 1e-9
    assert all(r["prunability"]["sd"] == 0.0 and r["accuracy"] == {"mean": 0.9, "sd": 0.0} for r in series["rows"])
    # The complements: 32 w - 8 w^1.5 units, divided by 128.
    non = [(32 * w - 8 * w ** 1.5) / 128 for w in widths]
    assert series["gains"]["non_prunable"] == pytest.approx(fu_fast.gain(widths, non), rel=1e-12)
    assert [r["non_redundant"]["mean"] for r in series["rows"]] == pytest.approx(non, rel=1e-12)


def test_undefined_gain_is_null_and_n_a(tmp_path):
    folder = tmp_path / "w1" / "t0"
    folder.mkdir(parents=True)
    (folder / "analysis.json").write_text(json.dumps(_document(1.0, 0)))
    (tmp_path / "sweep.json").write_text(json.dumps({"schema": "fu-fast/sweep/1", "name": "one", "config": {},
                                                     "members": [{"id": "a", "dir": "w1/t0", "model": "mlp",
                                                                  "width": 1.0, "trial": 0, "series": "mlp",
                                                                  "variant": {}, "status": "done"}]}))
    series, = summarize(tmp_path)["series"]
    assert all(g is None for g in series["gains"].values())   # one width: g is undefined
    network = _sections(markdown(summarize(tmp_path)))["mlp"][0]   # the text of summary.md, without figures
    assert network[-1][0] == "g" and set(network[-1][2:]) == {"n/a"}


@pytest.mark.parametrize("case", ["missing", "no_record", "not_json", "schema", "nothing_done"])
def test_bad_input_is_one_line_fu_fast_error(tmp_path, case):
    root = tmp_path / "sweep"
    if case != "missing":
        root.mkdir()
    record = {"schema": "fu-fast/sweep/1", "name": "x", "config": {},
              "members": [{"id": "a", "dir": "a", "model": "mlp", "width": 1.0, "trial": 0, "series": "mlp",
                           "variant": {}, "status": "pending"}]}
    if case == "not_json":
        (root / "sweep.json").write_text("{not json")
    elif case == "schema":
        (root / "sweep.json").write_text(json.dumps({**record, "schema": "fu-fast/run/1"}))
    elif case == "nothing_done":
        (root / "sweep.json").write_text(json.dumps(record))
    for call in (summarize, write_report):
        with pytest.raises(fu_fast.FuFastError) as error:
            call(root)
        assert "\n" not in str(error.value) and str(error.value)
    assert not (root / "report").exists()


def _with_config(sweep, tmp_path, config: dict):
    """A copy of the sweep whose sweep.json records ``config`` as its configuration."""
    root = tmp_path / "copy"
    shutil.copytree(sweep, root)
    record = json.loads((root / "sweep.json").read_text())
    (root / "sweep.json").write_text(json.dumps({**record, "config": config}))
    return root


def test_a_models_own_reference_width_is_read_back_from_sweep_json(sweep, tmp_path):
    """A record without [model.NAME] tables (every record before them) has the sweep's reference width
    for every series; a model's own names its series' reference member."""
    assert {s["reference_width"] for s in summarize(sweep)["series"]} == {4.0}
    root = _with_config(sweep, tmp_path, {"reference_width": 4, "model": {"mlp": {"reference_width": 2}}})
    summary = summarize(root)
    assert {s["reference_width"] for s in summary["series"]} == {2.0}
    assert "normalised by the same layer of the series' 2x member" in markdown(summary)


@pytest.mark.parametrize("config, fragment", [
    ({"reference_width": 0}, "config.reference_width is '0', not a positive number"),
    ({"model": 5}, "config.model is '5', not a table of model tables"),
    ({"model": {"mlp": [2]}}, "config.model is \"{'mlp': [2]}\", not a table of model tables"),
    ({"model": {"mlp": {"reference_width": "x"}}}, "config.model.mlp.reference_width is 'x', not a positive number"),
    ({"model": {"mlp": {"reference_width": None}}}, "config.model.mlp.reference_width is 'None', not a positive"),
])
def test_a_damaged_reference_width_in_sweep_json_is_one_error_line(sweep, tmp_path, config, fragment):
    root = _with_config(sweep, tmp_path, config)
    one_error_line(CliRunner().invoke(app, ["report", str(root)]), f"{root / 'sweep.json'}: {fragment}")


def test_violin_statistics_follow_the_histogram():
    from fu_fast.report.figures import _violin_stats

    mass = np.zeros(50)
    mass[[10, 20, 30]] = [0.25, 0.5, 0.25]   # bins [0.2, 0.22), [0.4, 0.42), [0.6, 0.62)
    s = _violin_stats(mass)
    assert s["min"] == pytest.approx(0.2) and s["max"] == pytest.approx(0.62)
    assert s["mean"] == pytest.approx(0.41) and s["median"] == pytest.approx(0.41)   # the middle of its bin
    assert max(s["vals"]) == pytest.approx(0.5 * 50 * 3 / 9)   # mass / bin width, smoothed over 5 bins
    assert s["coords"][0] == s["min"] and s["coords"][-1] == s["max"]
