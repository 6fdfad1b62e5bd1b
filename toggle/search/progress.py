"""Progress while a search runs: trials done, best feasible size so far, the latest margins, ETA."""
from __future__ import annotations

import sys

from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from .. import interrupts
from ..units import format_bytes


class Progress:
    """A rich progress bar on stderr (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int, done: int, base_bytes: float):
        self.enabled = enabled
        self.base_bytes = base_bytes
        self._bar = None
        self.description, self.total, self.live = "trials", total, False
        if not enabled:
            return
        self.console = Console(file=sys.stderr)
        self.live = self.console.is_terminal  # otherwise (a log file, CI) one plain line per trial
        self.total = total
        self._bar = Bar(TextColumn("[bold]{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                        TimeRemainingColumn(), TextColumn("{task.fields[status]}"), console=self.console,
                        transient=False)
        self._task = self._bar.add_task("trials", total=total, completed=done, status="")
        if self.live:
            self._bar.start()

    def phase(self, description: str, total: int, done: int = 0) -> None:
        self.description, self.total = description, total
        if self._bar:
            self._bar.update(self._task, description=description, total=total, completed=done, status="")

    def step(self, done: int, status: str = "") -> None:
        interrupts.check()
        if self._bar:
            self._bar.update(self._task, completed=done, status=status)
            if not self.live and (status or done == self.total or done % max(1, self.total // 10) == 0):
                line = f"{self.description} {done}/{self.total}" + (f": {status}" if status else "")
                self.console.print(line, highlight=False)

    def trial_status(self, best_bytes: float | None, robustness: dict, reason: str | None) -> str:
        best = (f"best {format_bytes(best_bytes)} ({100 * (best_bytes / self.base_bytes - 1):+.1f}%)"
                if best_bytes is not None else "no feasible plan yet")
        if reason:
            last = f"last: {reason}"
        else:
            # +inf: nothing to check yet (a gold property on an early-stopped trial's prompts without answers)
            last = "last: " + " ".join(f"{k}={'-inf' if v is None else 'n/a' if v == float('inf') else f'{v:+.3f}'}"
                                       for k, v in robustness.items())
        return f"{best} | {last}"

    def print(self, text: str) -> None:
        if self._bar:
            self._bar.console.print(text)

    def close(self) -> None:
        if self._bar:
            if self.live:
                self._bar.stop()
            self._bar = None


def sensitivity_table(title: str, head: list[str], rows: list[list[str]]):
    """The profiling table: one row per group, negative margins in red."""
    table = Table()
    for h in head:
        table.add_column(h, justify="left" if h == "group" else "right")
    for r in rows:
        table.add_row(*[f"[red]{c}[/red]" if c.startswith("-") or c == "NaN" else c for c in r])
    # The title goes on its own line: as a table title it would wrap to the table's narrow width.
    return Group(Text(title), table)
