"""fu_fast.report's paper figures (panel specs per preset, one renderer) and Table 1 (table1.md), on
hand-made sweep directories named like the presets: which files are drawn, log axes, g_min / g_max
labels against fu_fast.gain of the fake numbers, complements as 1 - share, the plotted data itself,
and the training table's rows, pending members and damaged training records."""

import json
import statistics

import pytest
from typer.testing import CliRunner

import fu_fast
from fu_fast.report import write_report
from fu_fast.report import paper
from fu_fast.report.table1 import table1_markdown
from fu_fast.report.tables import load_sweep

from test_report import HALF_ULP, _document, _mean_sd

WIDTHS = [0.25, 1.0, 4.0]
TRIALS = [0, 1, 2]


# ------------------------------------------------------------------------------------ fake sweeps

def _layer_numbers(width, trial, series_index, layer_index, base_units, varied=True):
    """Made-up results of one layer: units, and prunable / redundant units that grow faster than the width
    and differ between trials, layers and series (so means, sds and gains are all non-trivial)."""
    units = int(base_units * width) if varied else base_units
    share = min(0.9, 0.05 * (1 + layer_index) * width ** 0.4 * (1 + 0.1 * trial + 0.05 * series_index))
    redundant = max(1, int(units * min(0.9, 0.04 * width ** 0.5 * (1 + 0.2 * trial) + 0.01 * layer_index)))
    return {"units": units, "ablation_units": units * (49 if base_units > 128 else 1), "prunable_share": share,
            "redundant": redundant}


def _analysis(width, trial, layers: dict, references: dict) -> dict:
    """test_report's hand-made document, its layers replaced by ``layers`` (name -> _layer_numbers) and
    normalised by ``references`` (name -> the 4x member's numbers)."""
    document = _document(width, trial, layers=tuple(layers))
    for doc in document["layers"]:
        v, ref = layers[doc["name"]], references[doc["name"]]
        doc.update(units=v["units"], ablation_units=v["ablation_units"], reference_units=ref["units"],
                   reference_ablation_units=ref["ablation_units"], kind="conv" if v["ablation_units"] > v["units"]
                   else "linear")
        prunable = v["prunable_share"] * v["ablation_units"]
        doc["prunability"].update(prunable_fraction=v["prunable_share"], prunable_units=prunable,
                                  normalized=prunable / ref["ablation_units"])
        doc["redundancy"].update(redundant_units=v["redundant"], components=v["units"] - v["redundant"],
                                 normalized=v["redundant"] / ref["units"])
    document["model"]["parameters"] = int(1000 * width ** 2) + 10
    return document


def _accuracies(width, trial, series_index):
    """(train, test) accuracy per epoch of a made-up training run of 6 epochs; epoch 5 is the best."""
    return [(0.5 + 0.08 * e + 0.01 * width + 0.003 * trial, 0.45 + 0.07 * e + 0.01 * width - 0.004 * trial
             - 0.01 * series_index) for e in range(1, 7)]


def _run(width, trial, series_index, settings, *, status="finished", epochs=6, stopped_early=False):
    history = [{"epoch": e, "lr": settings["lr"], "loss": 1.0 / e, "train_accuracy": train, "test_accuracy": test,
                "val_accuracy": test} for e, (train, test) in enumerate(_accuracies(width, trial, series_index), 1)]
    return {"schema": "fu-fast/run/1", "status": status, "settings": settings,
            "model": {"name": "m", "width": width, "options": {}, "parameters": int(1000 * width ** 2) + 10},
            "data": {}, "epochs": history[:epochs], "best_epoch": min(5, epochs), "stopped_early": stopped_early}


def _settings(**changes):
    return {"optimizer": "sgd_momentum", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0, "schedule": "constant",
            "batch_size": 32, "k": 1.0, "epochs": 6, "patience": None, "augment": None, "random_labels": False,
            "model_options": {"init": "gaussian:0.01", "input_dim": 10}, **changes}


def _write(root, name, members, **config):
    """sweep.json and the member folders: each member a dict of series, model, variant, width, trial, status,
    and its files (analysis: a document; run: a record, or bytes for a damaged one; histograms: |r| counts)."""
    entries = []
    for m in members:
        member_dir = f"{m['series']}/w{m['width']:g}/t{m['trial']}"
        folder = root / member_dir
        folder.mkdir(parents=True)
        if m.get("analysis") is not None:
            (folder / "analysis.json").write_text(json.dumps(m["analysis"]))
        if isinstance(m.get("run"), bytes):
            (folder / "run.json").write_bytes(m["run"])
        elif m.get("run") is not None:
            (folder / "run.json").write_text(json.dumps(m["run"]))
        if m.get("histograms") is not None:
            (folder / "correlations.json").write_text(json.dumps({"bins": 10, "layers": m["histograms"]}))
        entries.append({"id": member_dir, "dir": member_dir, "model": m["model"], "width": m["width"],
                        "trial": m["trial"], "series": m["series"], "variant": m["variant"], "status": m["status"]})
    (root / "sweep.json").write_text(json.dumps({"schema": "fu-fast/sweep/1", "name": name,
                                                 "config": {"name": name, **config}, "members": entries}))
    return root


def _series_members(series_index, series, model, variant, layers, settings, widths=WIDTHS, trials=TRIALS,
                    special=None, reference=4.0):
    """Members of one series; ``special`` maps (width, trial) to "pending", "training" or "damaged"."""
    special = special or {}

    def numbers(width, trial):
        return {name: _layer_numbers(width, trial, series_index, i, base, varied)
                for i, (name, (base, varied)) in enumerate(layers.items())}

    members = []
    for width in widths:
        for trial in trials:
            kind = special.get((width, trial), "done")
            member = {"series": series, "model": model, "variant": variant, "width": width, "trial": trial,
                      "status": "done" if kind in ("done", "damaged") else "pending", "numbers": numbers(width, trial)}
            if kind in ("done", "damaged"):
                member["analysis"] = _analysis(width, trial, member["numbers"], numbers(reference, trial))
            if kind == "done":
                member["run"] = _run(width, trial, series_index, settings)
            elif kind == "training":
                member["run"] = _run(width, trial, series_index, settings, status="running", epochs=3)
            elif kind == "damaged":
                member["run"] = b"{not json"
            members.append(member)
    return members


MLP_LAYERS = {"relu1": (128, True)}
MLP_SERIES = {"mlp/init=gaussian:0.01": {"init": "gaussian:0.01"}, "mlp/init=gaussian:0.1": {"init": "gaussian:0.1"}}
WD_SETTINGS = _settings(weight_decay=5e-4, patience=5, model_options={"init": "gaussian:0.1", "input_dim": 10})
INCEPTION_LAYER = {"Mixed_5d": (288, True), "Mixed_6a": (768, False), "Mixed_6e": (768, False),
                   "Mixed_7c": (2048, False)}
INCEPTION_WIDTHS = [0.25, 0.5, 1.0]
INCEPTION = {"Mixed_5b": (256, True), "Mixed_5d": (288, True), "Mixed_6e": (768, True), "Mixed_7c": (2048, True)}


def _mlp_members():
    first, second = MLP_SERIES
    return (_series_members(0, first, "mlp", MLP_SERIES[first], MLP_LAYERS, _settings(),
                            special={(4.0, 2): "pending"})
            + _series_members(1, second, "mlp", MLP_SERIES[second], MLP_LAYERS, WD_SETTINGS,
                              special={(1.0, 1): "training", (0.25, 2): "damaged"}))


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    members = _mlp_members()
    # One trial of the weight-decay series stopped early (and trained fewer epochs).
    stopped = next(m for m in members if m["series"].endswith("0.1") and m["width"] == 4.0 and m["trial"] == 0)
    stopped["run"] = _run(4.0, 0, 1, WD_SETTINGS, epochs=5, stopped_early=True)
    root = _write(tmp_path_factory.mktemp("mlp"), "mlp-synthetic-10d", members)
    write_report(root)
    return root, members


@pytest.fixture(scope="module")
def inception_layer(tmp_path_factory):
    members = _series_members(0, "inception_v3_layer/default", "inception_v3_layer", {}, INCEPTION_LAYER,
                              _settings(optimizer="rmsprop"), trials=[0, 1])
    root = _write(tmp_path_factory.mktemp("layer"), "inception-v3-layer", members)
    write_report(root)
    return root, members


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    # As the preset: widths 1/4 to 1, normalised by the 1x layers.
    members = _series_members(0, "inception_v3/default", "inception_v3", {}, INCEPTION, _settings(optimizer="rmsprop"),
                              widths=INCEPTION_WIDTHS, trials=[0, 1], reference=1.0)
    root = _write(tmp_path_factory.mktemp("inception"), "inception-v3", members, reference_width=1.0)
    write_report(root)
    return root, members


# ------------------------------------------------------------------------------- expected numbers

def _value(numbers, quantity, scale, reference=None, complement=False):
    """A layer's value straight from the made-up numbers (the definitions, not the report's code)."""
    if quantity == "prunability":
        total, frivolous, ref = numbers["ablation_units"], numbers["prunable_share"] * numbers["ablation_units"], \
            reference and reference["ablation_units"]
    else:
        total, frivolous, ref = numbers["units"], numbers["redundant"], reference and reference["units"]
    value = total - frivolous if complement else frivolous
    return value / {"share": total, "normalized": ref}[scale]


def _curve(members, series, quantity, scale="normalized", layer=None, complement=False, reference_width=4.0):
    """Per width the trial mean of the done members (mean over layers unless ``layer``), and its g."""
    done = [m for m in members if m["series"] == series and m["status"] == "done"]
    by_width = {}
    for m in sorted(done, key=lambda m: (m["width"], m["trial"])):
        reference = next(x["numbers"] for x in members if x["series"] == series and x["width"] == reference_width
                         and x["trial"] == m["trial"])
        names = [layer] if layer else list(m["numbers"])
        values = [_value(m["numbers"][n], quantity, scale, reference[n], complement) for n in names]
        by_width.setdefault(m["width"], []).append(statistics.fmean(values))
    means = [statistics.fmean(v) for v in by_width.values()]
    return list(by_width), means, fu_fast.gain(list(by_width), means)


def _g_label(gains):
    return f"g_min = {min(gains):.4f}, g_max = {max(gains):.4f}"


def _mean_lines(ax):
    """The plotted mean lines of an axes, by legend label (the slope-1 reference left out)."""
    return {line.get_label(): line for line in ax.lines if not line.get_label().startswith(("slope", "_"))}


def _figure_files(folder, name):
    png, pdf = folder / f"{name}.png", folder / f"{name}.pdf"
    return png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:4] == b"%PDF"


# ---------------------------------------------------------------------------------------- figures

def test_each_preset_draws_its_paper_figures_as_png_and_pdf(mlp, inception_layer, inception):
    expected = {mlp[0]: ["fig4d", "figE2-E3_complements"], inception_layer[0]: ["figE5"],
                inception[0]: ["fig1a_accuracy", "fig3ab", "figE2-E3_complements", "figE4_prunability",
                               "figE4_redundancy"]}
    every_paper_figure = set(paper.ALL_FIGURES)
    for root, names in expected.items():
        folder = root / "report"
        assert all(_figure_files(folder, name) for name in names), root
        drawn = {p.stem for p in folder.glob("*.png")} & every_paper_figure
        assert drawn == set(names), root   # no other preset's figure, no default layout
        summary = (folder / "summary.md").read_text()
        for name in names:
            spec = paper.ALL_FIGURES[name]
            assert f"**{spec.paper}: {spec.title}**" in summary and f"![{name}]({name}.png)" in summary
        assert "![prunability](prunability.png)" in summary   # the report's own figures stay


def test_fig4d_log_axes_gain_labels_and_plotted_means(mlp):
    root, members = mlp
    fig = paper.render(paper.FIG4D, load_sweep(root))
    axes = fig.get_axes()
    assert len(axes) == 2
    for ax, quantity in zip(axes, ["prunability", "redundancy"]):
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        assert ax.get_xlabel() == "width factor" and "units of the 4x layer" in ax.get_ylabel()
        curves = {series: _curve(members, series, quantity) for series in MLP_SERIES}
        assert _g_label([g for _, _, g in curves.values()]) in ax.get_title()
        lines = _mean_lines(ax)
        assert len(lines) == 2
        for series, (widths, means, g) in curves.items():
            label = f"mlp init={MLP_SERIES[series]['init']}, g = {g:.4f}"
            assert list(lines[label].get_xdata()) == widths
            assert list(lines[label].get_ydata()) == pytest.approx(means, rel=1e-12)
        assert any(line.get_label() == "slope 1 (g = 2)" for line in ax.lines)


def test_complements_are_one_minus_the_frivolous_share(mlp):
    root, members = mlp
    fig = paper.render(paper.FIG_E2_E3, load_sweep(root))
    for ax, quantity in zip(fig.get_axes(), ["prunability", "redundancy"]):
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        assert "1 - " in ax.get_ylabel()
        gains = []
        for series, variant in MLP_SERIES.items():
            widths, shares, _ = _curve(members, series, quantity, scale="share")
            complement = [1 - s for s in shares]
            g = fu_fast.gain(widths, complement)
            gains.append(g)
            line = _mean_lines(ax)[f"mlp init={variant['init']}, g = {g:.4f}"]
            assert list(line.get_ydata()) == pytest.approx(complement, rel=1e-12)
            # the same as the complement computed on the share scale by the test's own definition
            assert list(line.get_ydata()) == pytest.approx(_curve(members, series, quantity, "share",
                                                                  complement=True)[1], rel=1e-12)
        assert _g_label(gains) in ax.get_title()


def test_inception_layer_e5_three_layers_side_by_side(inception_layer):
    root, members = inception_layer
    fig = paper.render(paper.FIG_E5, load_sweep(root))
    axes = fig.get_axes()
    assert len(axes) == 6   # Mixed_6a is analysed too, but not one of the paper's three layers
    titles = [ax.get_title() for ax in axes]
    assert [t.split(":")[0] for t in titles] == ["Mixed_5d (varied)", "Mixed_6e (fixed)", "Mixed_7c (fixed)"] * 2
    positions = {ax.get_subplotspec().get_geometry()[2] for ax in axes}
    assert axes[0].get_subplotspec().get_geometry()[:2] == (2, 3) and positions == set(range(6))
    for ax, (quantity, layer) in zip(axes, [(q, n) for q in ("prunability", "redundancy")
                                            for n in ("Mixed_5d", "Mixed_6e", "Mixed_7c")]):
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        widths, means, g = _curve(members, "inception_v3_layer/default", quantity, layer=layer)
        assert quantity.capitalize() in ax.get_title() and _g_label([g]) in ax.get_title()
        line, = _mean_lines(ax).values()
        assert line.get_label() == f"inception_v3_layer, g = {g:.4f}"
        assert list(line.get_ydata()) == pytest.approx(means, rel=1e-12)


def test_inception_width_series_e4_every_layer_and_fig1a_accuracy(inception):
    root, members = inception
    sweep = load_sweep(root)
    for spec, quantity in zip(paper.FIG_E4, ["prunability", "redundancy"]):
        axes = paper.render(spec, sweep).get_axes()
        assert [ax.get_title().split(":")[0] for ax in axes] == [f"{n} (varied)" for n in INCEPTION]
        for ax, layer in zip(axes, INCEPTION):
            _, means, g = _curve(members, "inception_v3/default", quantity, layer=layer, reference_width=1.0)
            assert ax.get_yscale() == "log" and _g_label([g]) in ax.get_title()
            assert ax.get_ylabel() == f"{ADJECTIVES[quantity]} units ÷ units of the 1x layer"
            assert list(next(iter(_mean_lines(ax).values())).get_ydata()) == pytest.approx(means, rel=1e-12)
    ax, = paper.render(paper.FIG1A, sweep).get_axes()
    assert ax.get_xscale() == "log" and ax.get_yscale() == "linear" and "g_min" not in ax.get_title()
    lines = _mean_lines(ax)
    assert set(lines) == {"inception_v3, train accuracy", "inception_v3, test accuracy"}
    for which, index in (("train", 0), ("test", 1)):
        expected = [statistics.fmean(_accuracies(w, t, 0)[4][index] for t in (0, 1))   # epoch 5, the best
                    for w in INCEPTION_WIDTHS]
        assert list(lines[f"inception_v3, {which} accuracy"].get_ydata()) == pytest.approx(expected, rel=1e-12)
    assert lines["inception_v3, test accuracy"].get_linestyle() != lines["inception_v3, train accuracy"].get_linestyle()
    summary = (root / "report" / "summary.md").read_text()
    assert "Values normalised by the same layer of the series' 1x member" in summary and "4x" not in summary


def test_a_series_without_a_4x_member_is_drawn_in_unit_counts(tmp_path):
    members = [m for m in _series_members(0, "mlp/default", "mlp", {}, MLP_LAYERS, _settings())
               if m["width"] != 4.0]
    for m in members:   # no 4x member: the documents carry no reference units
        for doc in m["analysis"]["layers"]:
            doc["reference_units"] = doc["reference_ablation_units"] = None
    root = _write(tmp_path, "mlp-synthetic-10d", members)
    ax = paper.render(paper.FIG4D, load_sweep(root)).get_axes()[0]
    label, = _mean_lines(ax)
    assert label.startswith("mlp [units], g = ") and "not normalised" in ax.get_ylabel()
    units = [statistics.fmean(m["numbers"]["relu1"]["prunable_share"] * m["numbers"]["relu1"]["ablation_units"]
                              for m in members if m["width"] == w) for w in (0.25, 1.0)]
    assert list(_mean_lines(ax)[label].get_ydata()) == pytest.approx(units, rel=1e-12)


def test_a_toml_sweep_gets_the_default_layout_and_stale_figures_go(inception, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(inception[0], root)
    record = json.loads((root / "sweep.json").read_text())
    (root / "sweep.json").write_text(json.dumps({**record, "name": "my $x^$ sweep"}))   # no math mode in titles
    for former in paper.FORMER_NAMES:   # a figure an earlier version wrote under another name
        (root / "report" / f"{former}.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    folder = write_report(root)
    for name in ("paper_width_series", "paper_layers_prunability", "paper_layers_redundancy"):
        assert _figure_files(folder, name)
    for name in ("fig1a_accuracy", "fig3ab", "figE4_prunability", *paper.FORMER_NAMES):   # the old name's figures
        assert not (folder / f"{name}.png").exists() and not (folder / f"{name}.pdf").exists()
    axes = paper.render(paper.DEFAULT_FIGURES[0], load_sweep(root)).get_axes()
    assert [ax.get_title().split("\n")[0] for ax in axes] == ["Prunability", "Redundancy", "Non-prunable units",
                                                              "Non-redundant units"]
    assert all(ax.get_xscale() == ax.get_yscale() == "log" for ax in axes)


ADJECTIVES = {"prunability": "prunable", "redundancy": "redundant"}


def test_fig2_ablation_curves_and_violins_per_series(tmp_path):
    members = []
    for i, init in enumerate(["he_normal", "lecun_uniform"]):
        series = _series_members(i, f"alexnet/init={init}", "alexnet", {"init": init}, MLP_LAYERS, _settings(),
                                 trials=[0])
        for m in series:
            m["analysis"]["layers"][0]["prunability"]["curves"] = [[1.0, 0.5 + 0.1 * m["width"], 0.1]]
            if i == 0:   # correlations.json for one series only: its violins, and none for the other
                m["histograms"] = {"relu1": [0, 4, 8, 4, 0, 0, 0, 0, 0, 0]}
        members += series
    root = _write(tmp_path, "alexnet-cifar-unregularized", members)
    folder = write_report(root)
    assert _figure_files(folder, "fig2") and _figure_files(folder, "fig1c_accuracy")
    axes = paper.render(paper.FIG2, load_sweep(root)).get_axes()
    assert [ax.get_title() for ax in axes] == ["alexnet init=he_normal: ablation curves",
                                               "alexnet init=lecun_uniform: ablation curves",
                                               "alexnet init=he_normal: |r| between units"]
    curves = axes[1].lines
    assert [line.get_label() for line in curves[:3]] == ["width 0.25", "width 1", "width 4"]
    for line, width in zip(curves, WIDTHS):   # the mean over trials, repeats and layers: one curve here
        assert list(line.get_xdata()) == [0.0, 0.5, 1.0]
        assert list(line.get_ydata()) == pytest.approx([1.0, 0.5 + 0.1 * width, 0.1])
    assert axes[0].get_xscale() == "linear" and axes[0].get_xlim() == (0, 1)
    assert len(axes[2].collections) >= len(WIDTHS) and [t.get_text() for t in axes[2].get_xticklabels()] == \
        ["0.25", "1", "4"]


def test_every_preset_draws_the_figures_its_metadata_names():
    from fu_fast.sweep import PRESETS

    for name, preset in PRESETS.items():
        ids = paper.figure_ids(preset.get("figures"))
        for text in preset.get("figures") or []:   # "Fig. 4d", "Fig. 3a-b"; free text ("not in the paper") too
            assert not text.startswith("Fig") or paper.figure_ids(text), (name, text)
        drawn = paper.figures_for(name)
        for figure_id in ids:
            assert figure_id in paper.FIGURE_IDS, (name, figure_id)
            assert set(paper.FIGURE_IDS[figure_id]) <= set(drawn), (name, figure_id)
        if not ids:
            assert drawn == paper.DEFAULT_FIGURES, name


def test_figure_ids_and_preset_metadata(monkeypatch):
    assert paper.figure_ids("Fig. 1a/3a-b/E4") == ["1a", "3a", "3b", "E4"]
    assert paper.figure_ids(["Figs. E10-E11", "e12", "Figure 2", 7, "nonsense!"]) == ["E10", "E11", "E12", "2"]
    assert paper.figure_ids(None) == [] and paper.figure_ids({"1a": 1}) == []
    assert paper.figures_for("inception-v3-layer") == (paper.FIG_E5,)
    assert paper.figures_for("not a preset") == paper.DEFAULT_FIGURES
    from fu_fast import sweep as sweep_module

    presets = {**sweep_module.PRESETS, "alexnet-k": {"description": "x", "figures": ["E10", "E11", "3a", "3b"]},
               "odd": {"description": "x", "figures": "Table 9"}}
    monkeypatch.setattr(sweep_module, "PRESETS", presets)
    assert paper.figures_for("alexnet-k") == (paper.FIG_E10, paper.FIG_E11, paper.FIG3)
    assert paper.figures_for("odd") == paper.DEFAULT_FIGURES


def test_panel_specs_are_checked():
    with pytest.raises(ValueError):
        paper.Panel("loss")
    with pytest.raises(ValueError):
        paper.Panel("accuracy", complement=True)
    with pytest.raises(ValueError):
        paper.Panel("prunability", level="module")


# ---------------------------------------------------------------------------------------- table 1

def _table1(root):
    """table1.md and its sections: heading -> the table's rows as dicts (header -> cell), or the text."""
    text = (root / "report" / "table1.md").read_text()
    tables = {}
    for line_block in text.split("\n## ")[1:]:
        heading, _, rest = line_block.partition("\n")
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in rest.splitlines() if line.startswith("|")]
        tables[heading] = [dict(zip(rows[0], row)) for row in rows[2:]] if rows else rest
    return text, tables


def test_table1_rows_are_the_training_records(mlp):
    root, members = mlp
    text, tables = _table1(root)
    first, second = tables["mlp init=gaussian:0.01"], tables["mlp init=gaussian:0.1"]
    assert [r["width"] for r in first] == [f"{w:g}" for w in WIDTHS]
    assert "weight decay" not in first[0] and "early stopping" in first[0]   # optional columns where set only
    for rows, series_index, settings in ((first, 0, _settings()), (second, 1, WD_SETTINGS)):
        series = list(MLP_SERIES)[series_index]
        for row, width in zip(rows, WIDTHS):
            trained = [m for m in members if m["series"] == series and m["width"] == width
                       and m.get("run") is not None and not isinstance(m["run"], bytes)
                       and m["run"]["status"] == "finished"]
            assert row["model"] == "mlp" and row["parameters"] == str(int(1000 * width ** 2) + 10)
            assert row["optimizer"] == "sgd_momentum (momentum 0.9)" and row["lr"] == "0.05"
            assert row["batch size"] == "32" and row["schedule"] == "constant"
            for column, index in (("train accuracy", 0), ("test accuracy", 1)):
                values = [_accuracies(width, m["trial"], series_index)[m["run"]["best_epoch"] - 1][index]
                          for m in trained]
                mean, sd = _mean_sd(row[column])
                assert abs(mean - statistics.fmean(values)) <= HALF_ULP
                assert abs(sd - (statistics.stdev(values) if len(values) > 1 else 0.0)) <= HALF_ULP
    assert [r["trials"] for r in first] == ["3 of 3", "3 of 3", "2 of 3 (1 pending)"]
    assert [r["trials"] for r in second] == ["2 of 3 (1 skipped)", "2 of 3 (1 training)", "3 of 3"]
    assert [r["epochs trained"] for r in first] == ["6 of 6"] * 3
    assert second[2]["epochs trained"] == "5–6 of 6"
    assert [r["early stopping"] for r in first] == ["no"] * 3
    assert second[2]["early stopping"] == "patience 5: stopped early in 1 of 3"
    assert [r["weight decay"] for r in second] == ["0.0005"] * 3
    assert "augment" not in second[0] and "dropout" not in second[0]


def test_table1_lists_pending_training_and_damaged_members(mlp):
    root, _ = mlp
    text, tables = _table1(root)
    left_out = tables["Members not in the table"]
    assert "- `mlp/init=gaussian:0.01/w4/t2`: pending (not trained yet)" in left_out
    assert "- `mlp/init=gaussian:0.1/w1/t1`: training, 3 epoch(s) done of 6" in left_out
    damaged = next(line for line in left_out.splitlines() if "w0.25/t2" in line)
    assert damaged.startswith("- `mlp/init=gaussian:0.1/w0.25/t2`: skipped, its training record "
                              "`mlp/init=gaussian:0.1/w0.25/t2/run.json` is damaged: cannot read it")
    summary = (root / "report" / "summary.md").read_text()
    assert "[table1.md](table1.md)" in summary
    assert "Damaged training records (run.json), skipped in the training table: `mlp/init=gaussian:0.1/w0.25/t2`" \
        in summary
    # The damaged member's analysis is still reported: 16 done, the 18 members less the pending and training ones.
    assert "Members reported: 16 done, 2 pending" in summary


@pytest.mark.parametrize("record, fragment", [
    (b"", "cannot read it"),
    (b"[1, 2]", "it holds a list, not a run record"),
    (b'{"schema": "fu-fast/analysis/1"}', "not a fu-fast run record (schema 'fu-fast/analysis/1'"),
    (b'{"schema": "fu-fast/run/1", "settings": {"lr": "fast"}}', "settings.lr is 'fast', not a number"),
    (b'{"schema": "fu-fast/run/1", "epochs": [{"epoch": 1, "train_accuracy": NaN}]}', "NaN is not a number"),
    (b'{"schema": "fu-fast/run/1", "epochs": [{"epoch": 1, "test_accuracy": "high"}]}',
     "epochs[0].test_accuracy is 'high', not a finite number"),
    (b'{"schema": "fu-fast/run/1", "epochs": [{"epoch": 1}], "best_epoch": "1"}', "best_epoch is '1'"),
    (b'{"schema": "fu-fast/run/1", "settings": {"model_options": {"dropout": "x\\ny|z"}}}',
     "settings.model_options.dropout is 'x\\ny\\|z'"),
], ids=["empty", "a list", "another schema", "a string lr", "NaN", "a string accuracy", "a string epoch",
        "an odd option"])
def test_a_damaged_training_record_is_one_line_in_the_table(tmp_path, record, fragment):
    members = _series_members(0, "mlp/default", "mlp", {}, MLP_LAYERS, _settings(), widths=[1.0, 4.0], trials=[0])
    members[0]["run"] = record
    root = _write(tmp_path, "mlp-synthetic-10d", members)
    text = table1_markdown(load_sweep(root))   # the report around it: the mlp fixture (a damaged record too)
    line, = [line for line in text.splitlines() if "skipped" in line and line.startswith("- ")]
    assert "`mlp/default/w1/t0/run.json` is damaged: " in line and fragment in line, line
    row = next(line for line in text.splitlines() if line.startswith("| 1 |"))
    assert row.startswith("| 1 | 0 of 1 (1 skipped) | mlp | n/a |"), row


# ------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("change, fragment", [
    (lambda d: d["layers"][0].update(units="many"), "units is 'many', not a whole number"),
    (lambda d: d.update(layers=[]), "layers is '[]'"),
    (lambda d: d["model"].pop("parameters"), "model.parameters"),
    (lambda d: d["layers"][0]["prunability"].update(curves=[[1.0]]), "curves"),
    (lambda d: d["layers"][0]["prunability"].update(prunable_fraction=1.5), "prunable_fraction"),
], ids=["units a string", "no layers", "no parameters", "a short curve", "a fraction over 1"])
def test_an_unusable_analysis_is_one_error_line(tmp_path, change, fragment):
    members = _series_members(0, "mlp/default", "mlp", {}, MLP_LAYERS, _settings(), widths=[1.0, 4.0], trials=[0])
    change(members[0]["analysis"])
    root = _write(tmp_path, "x", members)
    with pytest.raises(fu_fast.FuFastError) as error:
        write_report(root)
    message = str(error.value)
    assert "\n" not in message and str(root / "mlp/default/w1/t0/analysis.json") in message and fragment in message
    assert not (root / "report").exists()


def test_the_report_folder_may_not_be_a_link(tmp_path):
    from fu_fast.cli.app import app

    members = _series_members(0, "mlp/default", "mlp", {}, MLP_LAYERS, _settings(), widths=[1.0, 4.0], trials=[0])
    root = _write(tmp_path / "sweep", "x", members)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "report").symlink_to(elsewhere)
    result = CliRunner().invoke(app, ["report", str(root), "-q"])
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert "is a link" in result.stderr and list(elsewhere.iterdir()) == []
