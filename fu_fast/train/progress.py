"""Training progress: a rich progress bar per epoch, or one plain line per epoch (quiet, for logs)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn


class Progress:
    """Shown by the main process only; ``quiet`` prints one line per epoch instead of bars."""

    def __init__(self, enabled: bool = True, quiet: bool = False):
        self.enabled, self.quiet = enabled, quiet
        self._bars = None
        self._console = Console(stderr=True)
        self._examples, self._started = 0, 0.0

    def __enter__(self):
        if self.enabled and not self.quiet:
            self._bars = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                                      console=self._console, transient=False)
            self._bars.__enter__()
        return self

    def __exit__(self, *exc):
        if self._bars is not None:
            self._bars.__exit__(*exc)
            self._bars = None

    def start_epoch(self, epoch: int, epochs: int, batches: int):
        self._examples, self._started = 0, time.perf_counter()
        if self._bars is None:
            return None
        return self._bars.add_task(f"epoch {epoch}/{epochs}", total=batches, stats="")

    def advance(self, task, loss: float, accuracy: float, examples: int) -> None:
        self._examples += examples
        if self._bars is None:
            return
        rate = self._examples / max(time.perf_counter() - self._started, 1e-9)
        self._bars.update(task, advance=1, stats=f"loss {loss:.4f}  acc {accuracy:.3f}  {rate:,.0f} ex/s")

    def epoch_done(self, metrics: dict) -> None:
        if not self.enabled:
            return
        parts = [f"epoch {metrics['epoch']}", f"loss {metrics['loss']:.4f}", f"train {metrics['train_accuracy']:.4f}"]
        parts += [f"{k.removesuffix('_accuracy')} {metrics[k]:.4f}" for k in ("val_accuracy", "test_accuracy")
                  if k in metrics]
        parts.append(f"{metrics['seconds']:.1f} s")
        self._console.print("  ".join(parts), highlight=False)
