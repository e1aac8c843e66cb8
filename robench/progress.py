"""Progress shown while a benchmark runs (on stderr, so stdout stays clean for data)."""

from __future__ import annotations

from typing import Any

from rich.console import Console


class Reporter:
    """Prints one line per finished step; silent when ``quiet``."""

    def __init__(self, quiet: bool = False) -> None:
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.quiet = quiet
        self.total = 0
        self.done = 0

    def _print(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text)

    def start(self, name: str, n_cells: int, device: str, n_eval: int) -> None:
        self.total = n_cells
        self._print(
            f"[bold]robench[/] {name}: {n_cells} cells, {n_eval} evaluation examples, on {device}"
        )

    def training(self, label: str) -> None:
        self._print(f"[bold]{label}[/]: training")

    def epoch(self, label: str, epoch: int, epochs: int, loss: float) -> None:
        self._print(f"  epoch {epoch}/{epochs}  loss {loss:.4f}")

    def trained(self, label: str, seconds: float) -> None:
        self._print(f"  trained in {seconds:.1f} s")

    def cell(self, row: dict[str, Any]) -> None:
        self.done += 1
        what = row["attack"]
        if row["kind"] != "clean":
            what += f" {row['norm']} ε={row['eps']:g}"
        if row["status"] == "ok":
            result = f"{100 * row['accuracy']:.1f}% of {row['n_examples']}"
            if row.get("n_violations"):
                result += f"  [yellow]({row['n_violations']} out-of-budget results projected)[/]"
        else:
            result = f"[red]failed: {row['error']}[/]"
        self._print(f"  [{self.done}/{self.total}] {what}: {result}  ({row['seconds']:.1f} s)")

    def worst(self, row: dict[str, Any]) -> None:
        self._print(
            f"  worst case {row['norm']} ε={row['eps']:g}: {100 * row['accuracy']:.1f}%"
            f"  ({row['attacks']})"
        )

    def finished(self, csv: str, seconds: float, n_failed: int) -> None:
        tail = f", [red]{n_failed} failed cells[/]" if n_failed else ""
        self._print(f"done in {seconds:.1f} s{tail}: {csv}")
