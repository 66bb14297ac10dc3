"""fu_fast.report.beyond: the report's sections of the optional analyses (targeted ablation orders, noise
robustness, class selectivity, similar units and components for 80%, mappability from
SWEEP_DIR/mapping/mapping.json), on hand-made sweeps: the tables' numbers against means, sds and gains
computed here from the files, report.json's "beyond", the figures, a sweep without these keys (no sections,
no error, stale figures removed), and damaged entries (one FuFastError line naming the file)."""

import json
import math
import shutil
import statistics

import pytest

import fu_fast
from fu_fast.report import figures as report_figures, paper, summarize, write_report

from test_report import HALF_ULP, _document, _mean_sd

WIDTHS = [0.25, 1.0, 4.0]
TRIALS = [0, 1]
SERIES = {"mlp/init=a": {"init": "a"}, "mlp/init=b": {"init": "b"}}
LABELS = {"mlp/init=a": "mlp init=a", "mlp/init=b": "mlp init=b"}
LAYERS = ("a", "b")
NOISE_LEVELS = [0.0, 0.5, 1.0, 2.0]
QUANTILE_KEYS = ["0.05", "0.25", "0.5", "0.75", "0.95"]
FIGURE_NAMES = ["targeted_ablation", "noise_robustness", "selectivity", "mappability"]
HEADINGS = {"orders": "Targeted versus random ablation", "noise": "Noise robustness",
            "selectivity": "Class selectivity", "similarity": "Similar units and components for 80%",
            "mapping": "Mappability between neighbouring widths"}


# ------------------------------------------------------------------------------------ fake sweeps

def _extras(doc: dict, width: float, trial: int, s: int) -> None:
    """Made-up optional entries for each layer of ``doc``: values that differ between widths, trials, layers
    and series, so that means, sds and gains are all non-trivial."""
    for li, layer in enumerate(doc["layers"]):
        units = layer["units"]
        layer["orders"] = {
            "activation": {"curve": [1.0, 0.7, 0.1],
                           "prunable_fraction": min(0.95, 0.1 * width ** 0.5 * (1 + 0.1 * trial) * (1 + 0.2 * li)
                                                    * (1 + 0.1 * s))},
            "activation_reverse": {"curve": [1.0, 0.2, 0.0],
                                   "prunable_fraction": 0.02 * width ** 0.2 * (1 + 0.3 * trial) + 0.01 * li}}
        curves = [[1.0, 0.95 - 0.01 * li - 0.01 * r, 0.8 - 0.05 * trial / (width + 1), 0.3 * width / (width + 1)]
                  for r in range(2)]
        layer["noise"] = {"levels": NOISE_LEVELS, "curves": curves,
                          "tolerance_level": 0.5 * width ** 0.3 * (1 + 0.1 * trial + 0.05 * li + 0.1 * s)}
        mean = 0.3 + 0.05 * li + 0.02 * trial + 0.01 * math.log2(width) + 0.03 * s
        defined = not (width == 0.25 and trial == 1 and li == 1)   # one member's layer b has no selectivity
        layer["selectivity"] = {"labels": "true", "units": units if defined else 0, "mean": mean if defined else None,
                                "quantiles": {k: mean + d for k, d in zip(QUANTILE_KEYS, (-0.2, -0.1, 0, 0.1, 0.2))}
                                if defined else None}
        layer["redundancy"]["components_80"] = max(1, int(0.3 * units)) + trial + li
        layer["correlation"]["similar_units"] = int(0.1 * units * width ** 0.5) + trial + s


def _mapping_layer(name: str, li: int, wide: float, trial: int, s: int) -> dict:
    components = 20 + int(4 * wide) + li
    unspanned = 1 + int(2 * wide) + trial + s
    side = {"lambda": 1e-6, "live_units": 10, "mean_r2": 0.9 - 0.05 * trial - 0.01 * li - 0.02 * math.log2(wide),
            "r2_quantiles": None, "variance_share": 0.9,
            "directions": {"components": components, "spanned": components - unspanned, "r2": []}, "r2": []}
    return {"a": name, "b": name, "kind": "linear", "units": {"a": 8, "b": 32}, "samples": 100,
            "cka": 0.8 + 0.02 * trial - 0.01 * li + 0.01 * s, "b_from_a": side, "a_from_b": side}


def _mapping(series_ids) -> dict:
    pairs = []
    for s, series in enumerate(series_ids):
        for trial in TRIALS:
            for thin, wide in zip(WIDTHS, WIDTHS[1:]):
                pairs.append({"relation": "width", "series": series,
                              "models": {"a": {"label": "A", "width": thin, "trial": trial},
                                         "b": {"label": "B", "width": wide, "trial": trial}},
                              "layers": [_mapping_layer(n, li, wide, trial, s) for li, n in enumerate(LAYERS)]})
        # a seed pair: not a width pair, not in the report (its numbers would change the means)
        pairs.append({"relation": "seed", "series": series,
                      "models": {"a": {"width": 1.0, "trial": 0}, "b": {"width": 1.0, "trial": 1}},
                      "layers": [_mapping_layer(n, 0, 100.0, 5, 5) for n in LAYERS]})
    return {"schema": "fu-fast/mapping/1", "pairs": pairs, "skipped": []}


def _build(root, *, extras=True, mapping=True):
    members = []
    for s, (series, variant) in enumerate(SERIES.items()):
        for width in WIDTHS:
            for trial in TRIALS:
                member_dir = f"{series}/w{width:g}/t{trial}"
                folder = root / member_dir
                folder.mkdir(parents=True)
                doc = _document(width, trial, layers=LAYERS)
                if extras:
                    _extras(doc, width, trial, s)
                (folder / "analysis.json").write_text(json.dumps(doc))
                members.append({"id": member_dir, "dir": member_dir, "model": "mlp", "width": width, "trial": trial,
                                "series": series, "variant": variant, "status": "done"})
    (root / "sweep.json").write_text(json.dumps({"schema": "fu-fast/sweep/1", "name": "beyond", "config": {},
                                                 "members": members}))
    if mapping:
        (root / "mapping").mkdir()
        (root / "mapping" / "mapping.json").write_text(json.dumps(_mapping(SERIES)))
    return root


def _beyond_figures_only(monkeypatch) -> None:
    """The report without its other figures (tests/test_report.py and test_report_paper.py draw those):
    the tests here stay a few seconds."""
    monkeypatch.setattr(report_figures, "FIGURES", {})
    monkeypatch.setattr(paper, "figures_for", lambda name: ())


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = _build(tmp_path_factory.mktemp("beyond") / "sweep")
    with pytest.MonkeyPatch.context() as monkeypatch:
        _beyond_figures_only(monkeypatch)
        write_report(root)
    return root


# -------------------------------------------------------------------------- expected, from the files

def _documents(root, series):
    """(width, trial, analysis document) of the series' members, read straight from the files."""
    record = json.loads((root / "sweep.json").read_text())
    return [(m["width"], m["trial"], json.loads((root / m["dir"] / "analysis.json").read_text()))
            for m in record["members"] if m["series"] == series]


def _stats(values):
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _gain(widths, means):
    try:
        return fu_fast.gain(widths, means)
    except ValueError:
        return None


def _per_width(root, series, value):
    """width -> the values of ``value(document)`` over the trials (None left out)."""
    out = {}
    for width, _, doc in sorted(_documents(root, series), key=lambda x: (x[0], x[1])):
        v = value(doc)
        if v is not None:
            out.setdefault(width, []).append(v)
    return out


def _expected_orders(root, series, order, key):
    def value(doc):
        fractions = [(layer["prunability"]["prunable_fraction"] if order == "random"
                      else layer["orders"][order]["prunable_fraction"], layer) for layer in doc["layers"]]
        if key == "fraction":
            return statistics.fmean(f for f, _ in fractions)
        return statistics.fmean(f * layer["ablation_units"] / layer["reference_ablation_units"]
                                for f, layer in fractions)
    return _per_width(root, series, value)


def _expected_noise(root, series):
    return _per_width(root, series, lambda doc: statistics.fmean(layer["noise"]["tolerance_level"]
                                                                 for layer in doc["layers"]))


def _expected_selectivity(root, series, name, key="mean"):
    def value(doc):
        chosen = next(layer["selectivity"] for layer in doc["layers"] if layer["name"] == name)
        if chosen["mean"] is None:
            return None
        return chosen["mean"] if key == "mean" else chosen["quantiles"][key]
    return _per_width(root, series, value)


def _expected_similarity(root, series, key):
    group = "correlation" if key == "similar_units" else "redundancy"
    return _per_width(root, series, lambda doc: statistics.fmean(layer[group][key] / layer["reference_units"]
                                                                 for layer in doc["layers"]))


def _expected_mapping(root, series, name, key):
    """(thin, wide) -> the values over the width pairs' trials."""
    document = json.loads((root / "mapping" / "mapping.json").read_text())
    out = {}
    for pair in document["pairs"]:
        if pair["relation"] != "width" or pair["series"] != series:
            continue
        layer = next(m for m in pair["layers"] if m["a"] == name)
        d = layer["b_from_a"]["directions"]
        value = {"spanned_share": d["spanned"] / d["components"], "unspanned": d["components"] - d["spanned"],
                 "mean_r2": layer["b_from_a"]["mean_r2"], "cka": layer["cka"]}[key]
        out.setdefault((pair["models"]["a"]["width"], pair["models"]["b"]["width"]), []).append(value)
    return dict(sorted(out.items()))


def _sections(markdown: str) -> dict[str, dict[str | None, list[list[list[str]]]]]:
    """"## " heading -> "### " subheading (None before the first) -> its tables (rows of cells, the header
    and separator dropped)."""
    sections, tables, table = {}, None, None
    for line in markdown.splitlines():
        if line.startswith("## "):
            current = sections.setdefault(line[3:], {})
            tables = current.setdefault(None, [])
            table = None
        elif line.startswith("### ") and tables is not None:
            tables = current.setdefault(line[4:], [])
            table = None
        elif line.startswith("|") and tables is not None:
            if table is None:
                table = []
                tables.append(table)
            table.append([c.strip() for c in line.strip("|").split("|")])
        else:
            table = None
    return {h: {k: [t[2:] for t in ts] for k, ts in subs.items()} for h, subs in sections.items()}


def _close(cell: str, values: list[float]) -> None:
    mean, sd = _mean_sd(cell)
    e_mean, e_sd = _stats(values)
    assert abs(mean - e_mean) <= HALF_ULP and abs(sd - e_sd) <= HALF_ULP, (cell, values)


def _close_gain(cell: str, expected: dict) -> None:
    g = _gain(list(expected), [statistics.fmean(v) for v in expected.values()])
    assert (cell == "n/a") if g is None else abs(float(cell) - g) <= HALF_ULP, (cell, g)


# ----------------------------------------------------------------------------------------- tests

def test_targeted_ablation_table(sweep):
    tables = _sections((sweep / "report" / "summary.md").read_text())[HEADINGS["orders"]]
    for series, label in LABELS.items():
        table, = tables[label]
        assert [r[0] for r in table] == ["random"] * 4 + ["activation"] * 4 + ["activation_reverse"] * 4
        for order in ("random", "activation", "activation_reverse"):
            rows = [r for r in table if r[0] == order]
            fraction, units = (_expected_orders(sweep, series, order, k) for k in ("fraction", "prunability"))
            for row, width in zip(rows, WIDTHS):
                assert float(row[1]) == width and int(row[2]) == len(TRIALS)
                _close(row[3], fraction[width])
                _close(row[4], units[width])
            assert rows[-1][1] == "g"
            _close_gain(rows[-1][3], fraction)
            _close_gain(rows[-1][4], units)


def test_noise_table(sweep):
    tables = _sections((sweep / "report" / "summary.md").read_text())[HEADINGS["noise"]]
    for series, label in LABELS.items():
        table, = tables[label]
        expected = _expected_noise(sweep, series)
        assert [r[0] for r in table] == [f"{w:g}" for w in WIDTHS] + ["g"]
        for row, width in zip(table, WIDTHS):
            assert int(row[1]) == len(TRIALS)
            _close(row[2], expected[width])
        _close_gain(table[-1][2], expected)


def test_selectivity_and_similarity_tables(sweep):
    sections = _sections((sweep / "report" / "summary.md").read_text())
    for series, label in LABELS.items():
        table, = sections[HEADINGS["selectivity"]][label]
        for name in LAYERS:
            rows = [r for r in table if r[0] == name]
            expected = _expected_selectivity(sweep, series, name)
            assert [r[1] for r in rows] == [f"{w:g}" for w in WIDTHS] + ["g"]
            for row, width in zip(rows, WIDTHS):
                assert int(row[2]) == len(expected[width])   # layer b at 0.25: one trial has no selectivity
                _close(row[3], expected[width])
                for cell, key in zip(row[4:], QUANTILE_KEYS):
                    quantile = statistics.fmean(_expected_selectivity(sweep, series, name, key)[width])
                    assert abs(float(cell) - quantile) <= HALF_ULP
            _close_gain(rows[-1][3], expected)
        assert [r[2] for r in table if r[0] == "b"][0] == "1"

        table, = sections[HEADINGS["similarity"]][label]
        for column, key in ((2, "similar_units"), (3, "components_80")):
            expected = _expected_similarity(sweep, series, key)
            for row, width in zip(table, WIDTHS):
                _close(row[column], expected[width])
            _close_gain(table[-1][column], expected)


def test_mapping_table(sweep):
    summary = (sweep / "report" / "summary.md").read_text()
    assert "`mapping/mapping.json`" in summary and "--out SWEEP_DIR/mapping" in summary
    tables = _sections(summary)[HEADINGS["mapping"]]
    for series, label in LABELS.items():
        table, = tables[label]
        for name in LAYERS:
            rows = [r for r in table if r[0] == name]
            assert [r[1] for r in rows] == ["0.25 → 1", "1 → 4", "g"]
            for column, key in ((3, "spanned_share"), (4, "unspanned"), (5, "mean_r2"), (6, "cka")):
                expected = _expected_mapping(sweep, series, name, key)
                for row, values in zip(rows, expected.values()):
                    assert int(row[2]) == len(TRIALS)   # the seed pair is left out
                    _close(row[column], values)
                if key == "unspanned":   # g against the wide width
                    _close_gain(rows[-1][column], {wide: v for (_, wide), v in expected.items()})
                else:
                    assert rows[-1][column] == ""


def test_report_json_beyond(sweep):
    report = json.loads((sweep / "report" / "report.json").read_text())
    assert report == json.loads(json.dumps(summarize(sweep)))
    beyond = report["beyond"]
    assert list(beyond) == ["orders", "noise", "selectivity", "similarity", "mapping"]
    for section in ("orders", "noise", "selectivity", "similarity"):
        assert [s["series"] for s in beyond[section]] == list(SERIES)
    main = {s["series"]: s for s in report["series"]}
    for s in beyond["orders"]:
        assert list(s["orders"]) == ["random", "activation", "activation_reverse"] and s["normalized"]
        for order, entry in s["orders"].items():
            for key in ("fraction", "prunability"):
                expected = _expected_orders(sweep, s["series"], order, key)
                means = [statistics.fmean(v) for v in expected.values()]
                assert [r[key]["mean"] for r in entry["rows"]] == pytest.approx(means, rel=1e-12)
                assert entry["gains"][key] == pytest.approx(fu_fast.gain(WIDTHS, means), rel=1e-12)
        # random ablation in normalised units is the main table's prunability
        assert [r["prunability"]["mean"] for r in s["orders"]["random"]["rows"]] == \
            pytest.approx([r["prunability"]["mean"] for r in main[s["series"]]["rows"]], rel=1e-12)
    for s in beyond["noise"]:
        assert s["tolerance"] == 0.2 and s["curves"]["levels"] == NOISE_LEVELS
        docs = _documents(sweep, s["series"])
        for row in s["curves"]["rows"]:   # mean over trials of the mean over layers of the mean over repeats
            at = [doc for width, _, doc in docs if width == row["width"]]
            expected = [statistics.fmean(statistics.fmean(statistics.fmean(c[i] for c in layer["noise"]["curves"])
                                                          for layer in doc["layers"]) for doc in at)
                        for i in range(len(NOISE_LEVELS))]
            assert row["agreement"] == pytest.approx(expected, rel=1e-12)
        expected = _expected_noise(sweep, s["series"])
        assert [r["tolerance_level"]["sd"] for r in s["rows"]] == \
            pytest.approx([_stats(v)[1] for v in expected.values()], rel=1e-12)
    for s in beyond["mapping"]["series"]:
        assert s["label"] == LABELS[s["series"]]
        expected = _expected_mapping(sweep, s["series"], "a", "unspanned")
        assert s["layers"]["a"]["gains"]["unspanned"] == pytest.approx(
            fu_fast.gain([wide for _, wide in expected], [statistics.fmean(v) for v in expected.values()]), rel=1e-12)


def test_figures_are_pngs_and_pdfs(sweep):
    from matplotlib.image import imread

    summary = (sweep / "report" / "summary.md").read_text()
    for name in FIGURE_NAMES:
        png, pdf = sweep / "report" / f"{name}.png", sweep / "report" / f"{name}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        image = imread(png)
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0, name
        assert pdf.read_bytes()[:4] == b"%PDF", name
        assert f"![{name}]({name}.png) ([pdf]({name}.pdf))" in summary
    assert not [p.name for p in (sweep / "report").iterdir() if p.name.startswith(".")]


def test_sweep_without_the_keys_has_no_such_sections(sweep, tmp_path, monkeypatch):
    _beyond_figures_only(monkeypatch)
    root = tmp_path / "plain"
    shutil.copytree(sweep, root)   # with the report: its beyond figures are stale once the keys are gone
    shutil.rmtree(root / "mapping")
    for path in root.rglob("analysis.json"):
        doc = json.loads(path.read_text())
        for layer in doc["layers"]:
            for key in ("orders", "noise", "selectivity"):
                del layer[key]
            del layer["redundancy"]["components_80"], layer["correlation"]["similar_units"]
        path.write_text(json.dumps(doc))
    assert summarize(root)["beyond"] == {}
    folder = write_report(root)
    summary = (folder / "summary.md").read_text()
    assert not set(HEADINGS.values()) & set(_sections(summary))
    assert "## Gain ranges" in summary
    assert json.loads((folder / "report.json").read_text())["beyond"] == {}
    for name in FIGURE_NAMES:
        assert not (folder / f"{name}.png").exists() and not (folder / f"{name}.pdf").exists()
        assert name not in summary


def test_series_without_reference_units_is_in_unit_counts(tmp_path):
    from fu_fast.report.beyond import beyond_markdown

    root = _build(tmp_path / "sweep", mapping=False)
    for path in (root / "mlp/init=b").rglob("analysis.json"):   # as if the series had no 4x member
        doc = json.loads(path.read_text())
        for layer in doc["layers"]:
            layer["reference_units"] = layer["reference_ablation_units"] = None
        path.write_text(json.dumps(doc))
    beyond = summarize(root)["beyond"]
    assert "mapping" not in beyond
    normalised, counts = beyond["orders"]
    assert normalised["normalized"] and not counts["normalized"]
    units = _per_width(root, "mlp/init=b", lambda doc: statistics.fmean(
        layer["orders"]["activation"]["prunable_fraction"] * layer["ablation_units"] for layer in doc["layers"]))
    assert [r["prunability"]["mean"] for r in counts["orders"]["activation"]["rows"]] == \
        pytest.approx([statistics.fmean(v) for v in units.values()], rel=1e-12)
    similar = _per_width(root, "mlp/init=b", lambda doc: statistics.fmean(
        layer["correlation"]["similar_units"] for layer in doc["layers"]))
    assert [r["similar_units"]["mean"] for r in beyond["similarity"][1]["rows"]] == \
        pytest.approx([statistics.fmean(v) for v in similar.values()], rel=1e-12)
    text = "\n".join(beyond_markdown(beyond, {}))
    assert "### mlp init=b [units]" in text and "### mlp init=a [units]" not in text
    assert "| order | width | trials | prunable fraction | prunable units |" in text
    assert "![" not in text   # no figures given, none linked


def _damage(root, case):
    analysis = root / "mlp/init=b/w1/t1/analysis.json"
    doc = json.loads(analysis.read_text())
    layer = doc["layers"][1]
    if case == "orders_curve":
        layer["orders"]["activation"]["curve"] = "1, 0.5, 0"
    elif case == "orders_fraction":
        layer["orders"]["activation_reverse"]["prunable_fraction"] = 1.5
    elif case == "noise_curves":
        layer["noise"]["curves"] = [[1.0, 0.5]]
    elif case == "noise_tolerance":
        layer["noise"]["tolerance_level"] = "high"
    elif case == "selectivity":
        del layer["selectivity"]["quantiles"]["0.5"]
    elif case == "similar_units":
        layer["correlation"]["similar_units"] = -3
    analysis.write_text(json.dumps(doc))
    mapping = root / "mapping" / "mapping.json"
    document = json.loads(mapping.read_text())
    if case == "mapping_json":
        mapping.write_text("{not json")
        return mapping
    if case == "mapping_schema":
        document["schema"] = "fu-fast/analysis/1"
    elif case == "mapping_spanned":
        document["pairs"][1]["layers"][0]["b_from_a"]["directions"]["spanned"] = 1000
    elif case == "mapping_width":
        document["pairs"][0]["models"]["b"]["width"] = None
    else:
        return analysis
    mapping.write_text(json.dumps(document))
    return mapping


@pytest.mark.parametrize("case", ["orders_curve", "orders_fraction", "noise_curves", "noise_tolerance", "selectivity",
                                  "similar_units", "mapping_json", "mapping_schema", "mapping_spanned",
                                  "mapping_width"])
def test_damaged_entries_are_one_line_naming_the_file(tmp_path, case):
    root = _build(tmp_path / "sweep")
    damaged = _damage(root, case)
    for call in (summarize, write_report):
        with pytest.raises(fu_fast.FuFastError) as error:
            call(root)
        message = str(error.value)
        assert "\n" not in message and str(damaged) in message, message
    assert not (root / "report").exists()   # checked before anything is written
