"""The `fu-fast` command line (Typer). Installed as the package fu_fast.cli.

One module per command (info, data, train, analyze, sweep and report, bench, compress, visualize, map),
registered here; what they share (consoles, the one-line error convention, the progress bar)
is in console.py. Heavy modules (torch, the data and report packages) are imported inside the
commands that use them.
"""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from . import (analyze_command, bench_command, compress_command, data_command, info_command, map_command,
               sweep_command, train_command, visualize_command)
from .console import err

try:   # typer vendors click from 0.16 on; before, it depends on click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover - older typer
    from click.exceptions import ClickException
    NoArgsIsHelpError = ()


class OneLineErrors(TyperGroup):
    """Typer's group, with a bad option value or a missing option reported like every other
    mistake: one `error:` line on stderr and exit code 2 (instead of a usage box)."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as e:     # `fu-fast` alone prints the help
            e.show()
            code = e.exit_code
        except ClickException as e:
            err.print(f"error: {e.format_message()}", highlight=False, markup=False)
            code = e.exit_code
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Measure frivolous (prunable and redundant) units of neural networks, fast.")
app.command()(info_command.info)
app.command()(data_command.data)
app.command()(train_command.train)
app.command()(analyze_command.analyze)
app.command()(sweep_command.sweep)
app.command("report")(sweep_command.report_command)
app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(bench_command.bench)
app.command("compress")(compress_command.compress_command)
app.command()(visualize_command.visualize)
app.command("map")(map_command.map_command)


def main() -> None:
    app(prog_name="fu-fast")


if __name__ == "__main__":
    sys.exit(main())
