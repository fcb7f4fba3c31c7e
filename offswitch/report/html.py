"""The report as one self-contained HTML page (``report.html``): the blocks of
:mod:`.document`, the plots inline as SVG, a small stylesheet; no script, and a content
security policy under which the page can load nothing at all."""

from __future__ import annotations

import html as _html
from typing import Any

from . import plots as _plots
from .document import Block, Box, Bullets, Details, Figures, Heading, Para, Table, build_document
from .text import Span

CSS = """
*{box-sizing:border-box}
body{font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:20px auto;
max-width:1280px;padding:0 18px;color:#1d1d1f}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:18px;margin:26px 0 8px;padding-bottom:3px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:14px 0 6px}
p{margin:6px 0}
p.context,p.note{color:#555;font-size:13px}
code{font:12.5px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f3f3f5;
padding:0 3px;border-radius:3px;overflow-wrap:break-word}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{border:1px solid #d6d6d6;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f2f2f4;font-weight:600}
table.matrix{font-size:12.5px}
table.matrix td,table.matrix th{white-space:nowrap;padding:2px 6px}
table.matrix thead tr:first-child th{text-align:center}
table.matrix td:nth-child(4n+1){border-right:2px solid #bbb}
table.samples td:nth-child(3),table.samples td:nth-child(4){max-width:430px}
table.samples code{font-size:11.5px}
td.muted{color:#999}
td.warn{background:#fdecea;color:#8e1b10;font-weight:600}
td.v-removed{color:#b03a2e;font-weight:600}
td.v-wrecked{color:#7b3f38}
td.v-survived{color:#1e7a46;font-weight:600}
td.v-inconclusive{color:#666}
strong.warn{color:#a61b0f}
section.verdict{border:1px solid #d6d6d6;border-left:5px solid #8aa8c8;border-radius:4px;
padding:6px 14px 6px;margin:8px 0}
section.verdict.flag{border-left-color:#c0392b;background:#fffafa}
section.verdict h3{margin:4px 0}
section.verdict ul{margin:4px 0;padding-left:20px}
ul.findings>li{margin:4px 0}
ul.findings ul{margin:2px 0;padding-left:20px;color:#333}
ul.definitions{font-size:13px;color:#444}
.figs{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
figure{margin:6px 0;border:1px solid #e4e4e4;border-radius:4px;padding:6px;background:#fff}
figure.wide{width:100%}
figure svg{display:block;max-width:100%;height:auto}
.figs figure:not(.wide) svg{width:560px}
figcaption{font-size:12.5px;color:#555;max-width:560px;margin-top:2px}
figure.wide figcaption{max-width:none}
details{margin:4px 0}
summary{cursor:pointer;color:#333}
"""


def _spans(parts: list[Span]) -> str:
    out = []
    for kind, s in parts:
        e = _html.escape(s)
        if kind == "code":
            out.append(f"<code>{e}</code>")
        elif kind == "strong":
            out.append(f"<strong>{e}</strong>")
        elif kind == "warn":
            out.append(f'<strong class="warn">⚠ {e}</strong>')
        else:
            out.append(e)
    return "".join(out)


def _cls(c: str | None) -> str:
    return f' class="{_html.escape(c)}"' if c else ""


def _table(t: Table) -> str:
    out = [f"<table{_cls(t.cls)}><thead>"]
    if t.groups:
        out.append(
            "<tr>"
            + "".join(f'<th colspan="{w}">{_html.escape(label)}</th>' for label, w in t.groups)
            + "</tr>"
        )
    out.append("<tr>" + "".join(f"<th>{_html.escape(h)}</th>" for h in t.head) + "</tr>")
    out.append("</thead><tbody>")
    for i, row in enumerate(t.rows):
        classes = t.classes[i] if t.classes else [None] * len(row)
        out.append(
            "<tr>"
            + "".join(
                f"<td{_cls(c)}>{_spans(cell)}</td>" for cell, c in zip(row, classes, strict=True)
            )
            + "</tr>"
        )
    out.append("</tbody></table>")
    return "".join(out)


def _block(b: Block, svgs: dict[str, str]) -> str:
    if isinstance(b, Heading):
        anchor = f' id="{_html.escape(b.anchor)}"' if b.anchor else ""
        return f"<h{b.level}{anchor}>{_html.escape(b.text)}</h{b.level}>"
    if isinstance(b, Para):
        return f"<p{_cls(b.cls)}>{_spans(b.spans)}</p>"
    if isinstance(b, Bullets):
        items = []
        for item, subs in b.items:
            inner = "".join(f"<li>{_spans(s)}</li>" for s in subs)
            items.append(f"<li>{_spans(item)}" + (f"<ul>{inner}</ul>" if subs else "") + "</li>")
        return f"<ul{_cls(b.cls)}>" + "".join(items) + "</ul>"
    if isinstance(b, Box):
        lines = "".join(f"<li>{_spans(line)}</li>" for line in b.lines)
        cls = "verdict" + (f" {b.cls}" if b.cls else "")
        return f'<section class="{cls}"><h3>{_spans(b.title)}</h3><ul>{lines}</ul></section>'
    if isinstance(b, Table):
        return _table(b)
    if isinstance(b, Figures):
        figs = []
        for p in b.plots:
            svg = _plots.inline(svgs[p["name"]])
            cls = ' class="wide"' if b.wide else ""
            figs.append(
                f'<figure{cls} id="plot-{_html.escape(p["name"])}">{svg}'
                f"<figcaption>{_html.escape(p['caption'])}</figcaption></figure>"
            )
        return '<div class="figs">' + "".join(figs) + "</div>"
    if isinstance(b, Details):
        inner = "".join(_block(x, svgs) for x in b.blocks)
        return f"<details><summary>{_html.escape(b.summary)}</summary>{inner}</details>"
    raise TypeError(f"unknown block {type(b).__name__}")  # pragma: no cover


def format_html(report: dict[str, Any], svgs: dict[str, str] | None = None) -> str:
    """Render a report as one self-contained HTML page; ``svgs`` (plot name → SVG text, from
    :func:`offswitch.report.plots.render`) are drawn if not given."""
    if svgs is None:
        svgs = _plots.render(report)
    suite = str(report["source"].get("suite"))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # the page may load nothing at all from anywhere, and runs no script
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>offswitch robustness report: {_html.escape(suite)}</title>",
        f"<style>{CSS}</style></head><body>",
        *(_block(b, svgs) for b in build_document(report)),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
