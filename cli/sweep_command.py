"""`fu-fast sweep` and `fu-fast report`: width series trained and analysed (fu_fast.sweep), and their report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fu_fast.atomic import check_writable_dir
from fu_fast.errors import FuFastError

from .console import ProgressBar, err, out, user_errors


@user_errors
def sweep(
    config_file: Optional[Path] = typer.Argument(None, metavar="[CONFIG.toml]", help="a sweep configuration file"),
    preset: Optional[str] = typer.Option(None, help="a preset of the paper's experiments (see --list-presets)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="sweep directory (an interrupted sweep resumes)"),
    shard: Optional[str] = typer.Option(None, help="I/N: run only members I, I+N, I+2N, ... (job arrays)"),
    data_dir: Optional[Path] = typer.Option(None, help="where the data set lies (cifar10, imagenet presets)"),
    trials: Optional[int] = typer.Option(None, help="independently trained networks per width [default: the sweep's]"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N [default: cuda if usable]"),
    report: bool = typer.Option(True, "--report/--no-report", help="write the report once every member is done"),
    list_presets: bool = typer.Option(False, "--list-presets", help="list the presets and exit"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress output"),
) -> None:
    """Train and analyse every member of a width series (models x widths x trials x variants)."""
    from fu_fast.sweep import PRESETS, Shard, load_config, run_sweep

    if list_presets:
        out.print(preset_list(PRESETS), highlight=False, markup=False, soft_wrap=True)
        return
    if out_dir is None:
        raise FuFastError("say where the sweep goes: --out SWEEP_DIR")
    check_writable_dir(out_dir)
    config = load_config(config_file, preset, trials)
    members = config.members()
    with ProgressBar(quiet, len(members), "sweep") as advance:
        finished = {"count": 0}

        def on_member(member, event):
            if event != "start":   # done, done before, or another shard's
                finished["count"] += 1
            if advance is not None:
                advance(finished["count"], len(members), member.dir if event == "start" else "")

        record = run_sweep(config, out_dir, shard=Shard.parse(shard), data_dir=str(data_dir) if data_dir else None,
                           device=device, quiet=True, on_member=on_member)
    pending = sum(m["status"] != "done" for m in record["members"])
    if pending:
        err.print(f"{out_dir}: {len(members) - pending}/{len(members)} members done; run the other shards "
                  f"(or this command again) to finish", highlight=False)
    elif report:
        _write_report(out_dir, quiet)


LIST_WIDTH = 100   # --list-presets fits this many columns


def preset_list(presets: dict) -> str:
    """Per preset: its name and the paper's figures, then indented its description, the data it needs
    and its cost, each wrapped to LIST_WIDTH columns."""
    import textwrap

    indent = "    "
    blocks = []
    for name, preset in presets.items():
        figures = ", ".join(preset.get("figures") or []) or "no figure identified (see the README)"
        lines = textwrap.wrap(f"{name}: {figures}", LIST_WIDTH, subsequent_indent=indent, break_on_hyphens=False)
        for text in (preset.get("description", ""), f"data: {preset.get('data', '?')}",
                     f"cost: {preset.get('cost', '?')}"):
            lines += textwrap.wrap(text, LIST_WIDTH, initial_indent=indent, subsequent_indent=indent + "  ",
                                   break_on_hyphens=False)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


@user_errors
def report_command(
    sweep_dir: Path = typer.Argument(..., help="a sweep directory of fu-fast sweep"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="do not print the summary"),
) -> None:
    """Gain table (markdown) and the paper's figures, into SWEEP_DIR/report/."""
    _write_report(sweep_dir, quiet)


def _write_report(sweep_dir: Path, quiet: bool) -> None:
    from fu_fast.report import write_report

    folder = write_report(sweep_dir)
    if not quiet:
        out.print((folder / "summary.md").read_text(), markup=False, highlight=False, soft_wrap=True)
        err.print(f"report in {folder}/", highlight=False)
