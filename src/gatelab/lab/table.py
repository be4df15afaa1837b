"""Markdown tables for the terminal and reports."""
from __future__ import annotations

from typing import Any


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """`columns` = (key, header, format); missing/None cells print as '-'."""

    def cell(row: dict[str, Any], key: str, fmt: str) -> str:
        v = row.get(key)
        return "-" if v is None else fmt.format(v)

    header = [h for _, h, _ in columns]
    body = [[cell(r, k, f) for k, _, f in columns] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(b) for b in body)])
