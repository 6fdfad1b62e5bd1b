"""Progress while a search runs: trials done, best feasible size so far, the latest margins, ETA."""
from __future__ import annotations

import sys
import time

from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from .. import interrupts
from ..units import format_bytes


class Progress:
    """A rich progress bar on stderr (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int, done: int, base_bytes: float, base_flops: float | None = None):
        self.enabled = enabled
        self.base_bytes, self.base_flops = base_bytes, base_flops
        self._bar = None
        self.description, self.total, self.live = "trials", total, False
        self._since = (time.monotonic(), done)  # the phase's start: the plain lines' ETA
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
        self._since = (time.monotonic(), done)
        if self._bar:
            self._bar.update(self._task, description=description, total=total, completed=done, status="")

    def step(self, done: int, status: str = "") -> None:
        interrupts.check()
        if self._bar:
            self._bar.update(self._task, completed=done, status=status)
            if not self.live and (status or done == self.total or done % max(1, self.total // 10) == 0):
                eta = self.eta(done)
                line = (f"{self.description} {done}/{self.total}" + (f" (ETA {eta})" if eta else "")
                        + (f": {status}" if status else ""))
                self.console.print(line, highlight=False)

    def eta(self, done: int, now: float | None = None) -> str | None:
        """m:ss left at the phase's pace so far (what the live bar's column shows), None before a step."""
        start, first = self._since
        if done <= first or done >= self.total:
            return None
        left = ((now if now is not None else time.monotonic()) - start) / (done - first) * (self.total - done)
        return f"{int(left) // 60}:{int(left) % 60:02d}"

    def trial_status(self, best: dict | None, robustness: dict, reason: str | None, objective: str = "size") -> str:
        """best: the study's best row so far (rundir.best_row), shown in the objective's own terms."""
        if best is None:
            best = "no feasible plan yet" if objective != "margin" else "no plan scored yet"
        elif objective == "margin":
            best = f"best margin {best['min_margin']:+.4f} ({format_bytes(best['bytes'])})"
        elif objective == "flops" and self.base_flops:
            best = (f"best {best['flops_per_token']:.3g} FLOPs/token ({self.base_flops / best['flops_per_token']:.2f}x "
                    f"fewer, {format_bytes(best['bytes'])})")
        else:
            best = f"best {format_bytes(best['bytes'])} ({100 * (best['bytes'] / self.base_bytes - 1):+.1f}%)"
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
