"""The demo of the README's quick start: runs, writes one result document per width, and
refuses bad settings with one error line and exit code 2."""

import json

from fu_fast import demo


def test_demo_writes_one_result_per_width(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path), "--examples", "64", "--networks", "1"]) == 0
    out = capsys.readouterr().out
    assert "g (prunable)" in out
    for width in demo.WIDTHS:
        document = json.loads((tmp_path / f"width-{width}.json").read_text())
        (layer,) = document["layers"]
        assert layer["name"] == "1" and layer["units"] == width
        assert document["model"]["options"]["hidden"] == width


def test_demo_refuses_bad_settings(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path), "--networks", "0"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and err.startswith("error:")
    assert not any(tmp_path.iterdir())
