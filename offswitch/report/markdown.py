"""The report as Markdown (``report.md``): the blocks of :mod:`.document`, plots linked as
``plots/*.svg`` images beside the file."""

from __future__ import annotations

import html
from typing import Any

from .document import Block, Box, Bullets, Details, Figures, Heading, Para, Table, build_document
from .text import Span


def _text(s: str, table: bool) -> str:
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = s.replace("\r", " ").replace("\n", " ")
    return s.replace("|", "\\|") if table else s


def _code(s: str, table: bool) -> str:
    s = s.replace("\n", " ").replace("\r", " ")
    run = longest = 0
    for ch in s:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    pad = " " if s.startswith("`") or s.endswith("`") or not s.strip() else ""
    s = s.replace("|", "\\|") if table else s
    return f"{fence}{pad}{s}{pad}{fence}"


def spans(parts: list[Span], table: bool = False) -> str:
    out = []
    for kind, s in parts:
        if kind == "code":
            out.append(_code(s, table))
        elif kind == "strong":
            out.append(f"**{_text(s, table)}**")
        elif kind == "warn":
            out.append(f"**⚠ {_text(s, table)}**")
        else:
            out.append(_text(s, table))
    return "".join(out)


def _table(t: Table) -> list[str]:
    head = list(t.head)
    if t.groups:
        i = 0
        for label, width in t.groups:
            for j in range(i, i + width):
                head[j] = f"{label}: {head[j]}" if label else head[j]
            i += width
    lines = ["| " + " | ".join(_text(h, True) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(spans(c, table=True) for c in row) + " |" for row in t.rows]
    return lines


def _block(b: Block) -> list[str]:
    if isinstance(b, Heading):
        return ["#" * b.level + " " + _text(b.text, False)]
    if isinstance(b, Para):
        return [spans(b.spans)]
    if isinstance(b, Bullets):
        out = []
        for item, subs in b.items:
            out.append(f"- {spans(item)}")
            out += [f"  - {spans(s)}" for s in subs]
        return out
    if isinstance(b, Box):
        return [spans(b.title), "", *[f"- {spans(line)}" for line in b.lines]]
    if isinstance(b, Table):
        return _table(b)
    if isinstance(b, Figures):
        out = []
        for p in b.plots:
            out += [
                f"![{_text(p['title'], False)}]({p['file']})",
                "",
                f"*{_text(p['caption'], False)}*",
                "",
            ]
        return out[:-1]
    if isinstance(b, Details):
        out = [f"<details><summary>{html.escape(b.summary)}</summary>", ""]
        for inner in b.blocks:
            out += [*_block(inner), ""]
        return [*out, "</details>"]
    raise TypeError(f"unknown block {type(b).__name__}")  # pragma: no cover


def format_markdown(report: dict[str, Any]) -> str:
    """Render a report (from :func:`offswitch.report.build_report`) as Markdown."""
    lines: list[str] = []
    for b in build_document(report):
        lines += [*_block(b), ""]
    return "\n".join(lines).rstrip("\n") + "\n"
