"""How `toggle audit` shows an AuditResult: the verdict, a property x robustness table and the
worst prompts with the compressed model's text beside the base model's."""
from __future__ import annotations

import math
import re

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..confidence import percent


def verdict(result) -> str:
    n, passed = len(result.prompts), sum(p.satisfied for p in result.prompts)
    engine = "" if result.engine == "torch" else f", run by {result.engine}"
    split = "" if result.split == "all" else f"{result.split} "  # 'all 30 prompts', not '30 all prompts'
    where = f"{n} {split}prompt{'s' if n != 1 else ''} ({result.mode} mode{engine})"
    if not result.feasible:
        return f"VIOLATED: the compressed model cannot be scored on {where}: {result.reason}"
    if result.satisfied:
        shares = [name for name, p in result.properties.items() if p.required_share is not None and p.holds < p.prompts]
        if shares:
            return (f"PASS: every property holds on {where}, {', '.join(shares)} on the share of prompts "
                    f"{'its chance constraint asks' if len(shares) == 1 else 'their chance constraints ask'} for")
        return f"PASS: every property holds on all {where}"
    broken = [f"{name} on {p.prompts - p.holds}" for name, p in result.properties.items() if not p.satisfied]
    return (f"VIOLATED: {passed} of {where} satisfy every property (pass rate {100 * result.pass_rate:.1f}%); "
            f"violated: {', '.join(broken)}")


def print_audit(result, console: Console | None = None, *, text_width: int = 160) -> None:
    console = console or Console(width=max(Console().width, 120))
    console.print(f"audit of [bold]{escape(result.artifact)}[/bold] against {escape(result.base)}")
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}")
    engine = "" if result.engine == "torch" else f", run by {result.engine}"
    table = Table(title=f"robustness per property over {len(result.prompts)} {result.split} prompts "
                        f"({result.mode} mode{engine}; >= 0 holds)")
    upper = f"violation rate (at most, {percent(result.confidence)} conf.)"
    for col, justify in (("property", "left"), ("formula", "left"), ("prompts", "right"), ("min", "right"),
                         ("median", "right"), ("holds on", "right"), (upper, "right")):
        table.add_column(col, justify=justify, overflow="fold")
    for name, p in result.properties.items():
        colour = "green" if p.satisfied else "red"
        table.add_row(f"[{colour}]{escape(name)}[/{colour}]", escape(p.formula), str(p.prompts), _num(p.min),
                      _num(p.median), f"{p.holds}/{p.prompts} ({100 * p.share:.0f}%"
                      + (f", needs {percent(p.required_share)})" if p.required_share is not None else ")"),
                      _rate(p.bound))
    overall = result.overall
    table.add_row("[bold]all properties[/bold]", "", str(overall.prompts), "", "", f"{overall.prompts - overall.violations}/"
                  f"{overall.prompts}", _rate(overall))
    console.print(table)
    if result.cross_check:
        _print_cross_check(result, console)

    worst = result.worst()
    if worst:
        table = Table(title="worst prompts: the compressed model's greedy text beside the base model's")
        table.add_column("prompt", overflow="fold", ratio=2)
        table.add_column("margin", justify="right", no_wrap=True)
        table.add_column("base model", overflow="fold", ratio=3)
        table.add_column("compressed model", overflow="fold", ratio=3)
        for r in worst:
            colour = "green" if r.satisfied else "red"
            table.add_row(f"{escape(r.id)}: {escape(_short(r.prompt, 120))}",
                          f"[{colour}]{_num(r.margin)}[/{colour}]\n{escape(r.worst_property or '')}",
                          escape(_short(r.base_text or "", 400)), escape(_short(r.compressed_text or "", 400)))
        console.print(table)
    console.print(("[green]" if result.satisfied else "[red]") + escape(verdict(result)) +
                  ("[/green]" if result.satisfied else "[/red]"))
    console.print(escape(f"all properties: {overall.sentence()}"))


def _print_cross_check(result, console) -> None:
    """The same file's scores from torch beside the engine's, property by property."""
    cross = result.cross_check
    other = cross.get("engine", "torch")
    if not cross.get("feasible", True):
        console.print(f"{other} could not score the file: {escape(str(cross.get('reason')))}")
        return
    table = Table(title=f"the same file in {other} (what toggle's search measures) beside {result.engine}")
    for col in ("property", f"{result.engine} min", f"{other} min", f"{result.engine} holds", f"{other} holds"):
        table.add_column(col, justify="left" if col == "property" else "right")
    for name, p in result.properties.items():
        q = cross["properties"].get(name, {})
        table.add_row(escape(name), _num(p.min), _num(q.get("min")), f"{p.holds}/{p.prompts}",
                      f"{q.get('holds', 0)}/{q.get('prompts', 0)}")
    console.print(table)
    if result.speed:
        sp = result.speed
        console.print(f"llama.cpp speed of the file on this machine (llama-bench, {sp['threads']} threads): "
                      f"prompt {sp.get('prompt_tokens_per_s', 0):.0f} tokens/s, generation "
                      f"{sp.get('gen_tokens_per_s', 0):.0f} tokens/s")
    gap = cross.get("jsd_between_engines")
    if gap:
        console.print(f"next-token JSD between {result.engine} and {other} on the same file: mean {gap['mean']:.4f}, "
                      f"max {gap['max']:.4f} bits over {gap['steps']} steps")


def _rate(c) -> str:
    """'0/30 (<= 9.5%)': violations of the prompts, and the upper bound of the rate."""
    return f"{c.violations}/{c.prompts} (<= {percent(c.upper)})" if c.prompts else "-"


def _num(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if math.isinf(v):
        return "-inf" if v < 0 else "n/a"
    return f"{v:+.4f}"


def _short(text: str, n: int) -> str:
    text = _visible(" ".join(text.split()))
    return text if len(text) <= n else text[: n - 1] + "…"


# Control characters and bidirectional overrides in prompts or generated text would act on the
# terminal (ESC starts escape sequences): shown as escapes instead.
_INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _visible(text: str) -> str:
    return _INVISIBLE.sub(lambda m: m.group().encode("unicode_escape").decode(), text)
