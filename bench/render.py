"""Tables and targets to the terminal (rich) and to Markdown."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table as RichTable

from bench.report import Table
from bench.targets import Verdict

MARK = {True: "met", False: "**missed**", None: "not judged"}


def print_tables(console: Console, tables: list[Table], verdicts: list[Verdict]) -> None:
    for table in tables:
        rich_table = RichTable(
            title=table.title, title_justify="left", caption=table.note or None, caption_justify="left"
        )
        for column in table.columns:
            rich_table.add_column(column, justify="left" if column in ("contender", "command") else "right")
        for index, row in enumerate(table.rows):
            rich_table.add_row(*row, end_section=index in table.section_ends)
        console.print(rich_table)
        console.print()
    targets = RichTable(title="Targets (issue 5)", title_justify="left")
    for column in ("target", "measured", ""):
        targets.add_column(column)
    for verdict in verdicts:
        style = {True: "green", False: "bold red", None: "dim"}[verdict.met]
        targets.add_row(verdict.target, verdict.measured, f"[{style}]{MARK[verdict.met].strip('*')}[/]")
    console.print(targets)


def markdown_table(table: Table) -> str:
    lines = [f"**{table.title}**", ""]
    lines.append("| " + " | ".join(table.columns) + " |")
    lines.append("|" + "|".join("---" if c in ("contender", "command") else "---:" for c in table.columns) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    if table.note:
        lines += ["", table.note]
    return "\n".join(lines) + "\n"


def markdown_targets(verdicts: list[Verdict]) -> str:
    lines = ["| target | measured | |", "|---|---|---|"]
    lines += [f"| {v.target} | {v.measured} | {MARK[v.met]} |" for v in verdicts]
    return "\n".join(lines) + "\n"
