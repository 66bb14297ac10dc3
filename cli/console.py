"""What every command shares: the consoles, the error convention and the progress bar.

Every command turns a user's mistake (fu_fast.FuFastError) into one line on stderr and exit
code 2; results are written atomically, so a failed command leaves no partial file.
"""

from __future__ import annotations

import functools
import warnings

import typer
from rich.console import Console

from fu_fast.errors import FuFastError

# No emoji codes: user text such as "package.module:factory:" must print as given.
out = Console(emoji=False)
err = Console(stderr=True, soft_wrap=True, emoji=False)   # messages are never broken mid-line
RESUMABLE_COMMANDS = ("train", "sweep")      # a rerun of the same command continues where it stopped


def comma_list(text: str | None, convert, refusal: str) -> list | None:
    """An option's "10,20,30" as [convert(part), ...], None when not given; FuFastError(refusal + the
    text) when a part does not convert."""
    if text is None:
        return None
    try:
        return [convert(part) for part in text.split(",")]
    except ValueError:
        raise FuFastError(f"{refusal}{text!r}") from None


def _warning_line(message, *_location) -> None:
    """A warning is one `warning: ...` line on stderr, without Python's file and source lines."""
    err.print(f"warning: {message}", highlight=False, markup=False)


def user_errors(command):
    """Run a command; a FuFastError becomes `error: ...` on stderr and exit code 2, Ctrl-C exit
    code 130 with a line saying whether a rerun resumes, and each warning one `warning:` line."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            with warnings.catch_warnings():   # restores Python's own display afterwards
                warnings.showwarning = _warning_line
                return command(*args, **kwargs)
        except FuFastError as e:
            err.print(f"error: {e}", highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            resume = "; run the same command again to resume" if command.__name__ in RESUMABLE_COMMANDS else ""
            err.print(f"interrupted{resume}", highlight=False, markup=False)
            raise typer.Exit(130) from None
    return run


class ProgressBar:
    """A rich progress bar (nothing when quiet); the ``with`` value is an update function
    (done, total, note) or None."""

    def __init__(self, quiet: bool, total: int, label: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = None if quiet else Progress(label, BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                               TextColumn("{task.fields[note]}"), console=err)
        self.total = total

    def __enter__(self):
        if self.bar is None:
            return None
        self.bar.__enter__()
        self.task = self.bar.add_task("", total=self.total, note="")
        return lambda done, total, note="": self.bar.update(self.task, completed=done, total=total, note=note)

    def __exit__(self, error_type, *exc):
        if self.bar is not None:
            if error_type is None:
                self.bar.__exit__(error_type, *exc)
            else:
                # The error line alone: no half-filled bar above it, and not the empty line that
                # Progress.stop prints on a non-terminal; the live display stops without a trace.
                self.bar.remove_task(self.task)
                self.bar.live.transient = True
                self.bar.live.stop()
