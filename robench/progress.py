"""Progress shown while a benchmark runs (on stderr, so stdout stays clean for data)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


class Reporter:
    """A line per finished cell, and a live bar while a defense trains; silent when ``quiet``.

    On a terminal the training bar updates in place; elsewhere (logs, CI) an epoch line is
    printed at most every ``log_every`` seconds.
    """

    log_every = 10.0

    def __init__(self, quiet: bool = False) -> None:
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.quiet = quiet
        self.total = 0
        self.done = 0
        self._trains = True
        #: how a reused cell's line says where it came from
        self.reused_as = "stored by an earlier run"
        self._bar: Progress | None = None
        self._task: Any = None

    def _print(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text)

    def start(self, name: str, n_cells: int, device: str, n_eval: int) -> None:
        self.total = n_cells
        self._print(
            f"[bold]robench[/] {name}: {n_cells} cells, {n_eval} evaluation examples, on {device}"
        )

    def note(self, text: str) -> None:
        self._print(text)

    def interrupted(self, partial: str, final: str, n_rows: int) -> None:
        self._stop_bar()
        self._print(
            f"[yellow]interrupted[/]: {n_rows} finished rows kept in {partial}; "
            f"{final} (the last finished run) left as it was"
        )

    def training(self, label: str, trains: bool = True) -> None:
        """A defense starts: training, or (``trains`` False) loading a model trained elsewhere."""
        self._print(f"[bold]{label}[/]: {'training' if trains else 'loading'}")
        self._trains = trains
        self.last_loss = float("nan")
        self._last_log = time.monotonic()
        if self.quiet or not self.console.is_terminal:
            return
        self._bar = Progress(
            TextColumn("  epoch {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task("train", total=None, loss="-")

    def reused(self, label: str, key: str, created: str, seconds: float) -> None:
        """A defense's model comes from the store (:mod:`robench.store`): nothing trains."""
        when = created.replace("T", " ").replace("+00:00", " UTC")
        self._print(f"[bold]{label}[/]: reused {key} (trained {when}, {seconds:.1f} s)")

    def epoch(self, label: str, epoch: int, epochs: int, loss: float) -> None:
        self.last_loss = loss
        if self._bar is not None:
            self._bar.update(self._task, completed=epoch, total=epochs, loss=f"{loss:.4f}")
        elif time.monotonic() - self._last_log >= self.log_every and epoch < epochs:
            self._last_log = time.monotonic()
            self._print(f"  epoch {epoch}/{epochs}  loss {loss:.4f}")

    def trained(self, label: str, seconds: float) -> None:
        self._stop_bar()
        if not self._trains:  # loaded, not trained
            self._print(f"  ready in {seconds:.1f} s")
            return
        self._print(f"  trained in {seconds:.1f} s (last epoch's loss {self.last_loss:.4f})")

    def _stop_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def cell(self, row: dict[str, Any], reused: bool = False) -> None:
        """A finished cell (``reused``: read back from the cell store, not computed)."""
        self._stop_bar()
        self.done += 1
        what = row["attack"]
        if row.get("source"):
            what += f" (transfer from {row['source']})"
        if row["kind"] != "clean":
            what += f" {row['norm']} ε={row['eps']:g}"
        if row["status"] == "ok":
            result = f"{100 * row['accuracy']:.1f}% of {row['n_examples']}"
            if row.get("n_violations"):
                result += f"  [yellow]({row['n_violations']} out-of-budget results projected)[/]"
        else:
            result = f"[red]failed: {row['error']}[/]"
        took = self.reused_as if reused else f"{row['seconds']:.1f} s"
        self._print(f"  [{self.done}/{self.total}] {what}: {result}  ({took})")

    def flags(self, defense: str, flags: list[str]) -> None:
        for flag in flags:
            self._print(f"  [yellow]flag: {flag}[/]")

    def worst(self, row: dict[str, Any]) -> None:
        self._print(
            f"  worst case {row['norm']} ε={row['eps']:g}: {100 * row['accuracy']:.1f}%"
            f"  ({row['attacks']})"
        )

    def finished(self, csv: str, seconds: float, n_failed: int) -> None:
        self._stop_bar()
        tail = f", [red]{n_failed} failed cells[/]" if n_failed else ""
        self._print(f"done in {seconds:.1f} s{tail}: {csv}")
