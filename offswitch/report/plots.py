"""The report's plots, drawn with matplotlib as SVG files in ``plots/`` beside the report.

:func:`plan` says which plots a report has (pure; it is part of report.json); :func:`render`
draws them. A plot exists only where there is something to draw:

- ``frontier``: per arm, every weight-changing attack point's activation (95% CI) against its
  KL to the base model, each point labelled: what removes the switch, at what utility cost;
- ``activation-<attack>``: activation against the budget, for an attack with two or more
  budget points on some arm (a one-point attack has no curve: it is in the matrix);
- ``false-activation``: the un-attacked model's false activation per class (95% CI) against
  the 0.01 limit;
- ``sensitivity``: activation with one signature word changed, per position (runs that
  measured it).

Figures are built with the object API on the Agg canvas (no pyplot state, no display), text
kept as SVG text, ids made unique per plot so several SVGs can sit inline in one page, and
the output is byte-for-byte reproducible (fixed id salt, no date).

One module although long: each plot is one function over the same drawing helpers; a new
plot is a function here and an entry in :func:`plan`.
"""

from __future__ import annotations

import io
import math
import re
from typing import Any

from .text import class_name, kl_text, num
from .verdicts import FAR_LIMIT, HIDDEN_GONE, REVEALED_GONE, THRESHOLD, WRECKED_KL

ARM_COLORS = {"signed": "#1f5fa8", "plain": "#c8590b"}
PALETTE = ("#6a51a3", "#238b45", "#c51b7d", "#8c6d31")
VERDICT_COLORS = {
    "removed": "#c0392b",
    "survived": "#1e8449",
    "inconclusive": "#7f8c8d",
    "un-attacked": "#ffffff",
}


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "attack"


def arm_color(arm: str, arm_order: list[str]) -> str:
    if arm in ARM_COLORS:
        return ARM_COLORS[arm]
    return PALETTE[arm_order.index(arm) % len(PALETTE)] if arm in arm_order else PALETTE[0]


# --- which plots ----------------------------------------------------------------------------


def _frontier_points(rep: dict, arm: str) -> list[dict]:
    pts = [
        p
        for attack in rep["attacks"]
        for p in rep["series"][arm].get(attack, [])
        if p["activation"] is not None and p["kl"] is not None and not p["weights_unchanged"]
    ]
    return pts


def _series_key(p: dict) -> tuple:
    """Points of one attack with the same settings but the budget lie on one curve."""
    cfg = p["config"] if isinstance(p["config"], dict) else {}
    return tuple(sorted((k, repr(v)) for k, v in cfg.items() if k != p["budget_name"]))


def _curves(rep: dict, attack: str, arm: str) -> list[list[dict]]:
    """The arm's measured points of ``attack`` grouped by settings, each by budget."""
    groups: dict[tuple, list[dict]] = {}
    for p in rep["series"][arm].get(attack, []):
        if p["activation"] is not None and not p["weights_unchanged"]:
            groups.setdefault(_series_key(p), []).append(p)
    return [sorted(g, key=lambda p: p["budget"]) for g in groups.values()]


def _has_curve(rep: dict, attack: str) -> bool:
    """Does some arm have two or more budgets of ``attack`` with the same settings?"""
    return any(
        len({p["budget"] for p in c}) > 1 for a in rep["arm_order"] for c in _curves(rep, attack, a)
    )


def plan(rep: dict) -> list[dict[str, Any]]:
    """The plots ``rep`` gets: name, file (relative to the report), title, what it shows."""
    out = []
    if any(_frontier_points(rep, a) for a in rep["arm_order"]):
        out.append(
            {
                "name": "frontier",
                "title": "What removes the switch, at what utility cost",
                "caption": "Every weight-changing attack point: activation (95% CI) against KL to "
                "the base model (log scale). Bottom left is a removal that keeps the model "
                f"usable; right of KL {WRECKED_KL:g} the model is wrecked. Dotted: {THRESHOLD}; "
                "open circle: before any attack.",
            }
        )
    for attack in rep["attacks"]:
        if _has_curve(rep, attack):
            out.append(
                {
                    "name": f"activation-{_slug(attack)}",
                    "attack": attack,
                    "title": f"Activation vs budget: {attack}",
                    "caption": f"{attack}: activation (95% CI band) at each budget, the stronger "
                    "budget to the right; dashed: each arm before any attack; labels: KL to base.",
                }
            )
    if any((rep["baseline"].get(a) or {}).get("false_activation_rate") for a in rep["arm_order"]):
        out.append(
            {
                "name": "false-activation",
                "title": "False activation before any attack",
                "caption": "The un-attacked model's false activation per class (95% CI, k/n) "
                f"against the {FAR_LIMIT} limit; after each attack: the matrix.",
            }
        )
    if rep["sensitivity"]:
        out.append(
            {
                "name": "sensitivity",
                "title": "Activation with one signature word changed",
                "caption": "Per word position of the signature: activation when only that word "
                "is changed (dark: still fires; light: the change stops it).",
            }
        )
    for attack_id in dict.fromkeys(c["attack_id"] for c in rep.get("curves") or []):
        out.append(
            {
                "name": f"curve-{_slug(attack_id)}",
                "attack_id": attack_id,
                "title": f"Tamper-evidence curve: {attack_id}",
                "caption": f"{attack_id}, step by step: the revealed slot's activation (solid; "
                "every slot for an attack given none) and the hidden slots' (dashed), 95% CI "
                "bands, above; KL to the base model below. Dotted: the removal lines, "
                f"{REVEALED_GONE:g} (revealed) and {HIDDEN_GONE:g} (hidden).",
            }
        )
    for p in out:
        p["file"] = f"plots/{p['name']}.svg"
    return out


# --- drawing helpers --------------------------------------------------------------------------


def new_figure(width: float, height: float):
    """A matplotlib figure of the reports' size and layout, drawn off-screen (Agg); draw it
    under ``matplotlib.rc_context(RC)`` and write it with :func:`to_svg`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


RC = {  # the reports' look: matplotlib settings for rc_context
    "svg.fonttype": "none",
    "font.family": "DejaVu Sans",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e6e6e6",
    "grid.linewidth": 0.8,
    "legend.fontsize": 9,
    "legend.frameon": False,
}


def to_svg(fig, name: str) -> str:
    """``fig`` as SVG text that is the same on every run (no date, salted ids) and whose ids
    are prefixed with ``name``, so several figures can share one HTML page."""
    import matplotlib as mpl

    buf = io.StringIO()
    with mpl.rc_context({"svg.hashsalt": f"offswitch-{name}", "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    return _namespaced(buf.getvalue(), name)


def _namespaced(svg: str, prefix: str) -> str:
    """Every id (and every reference to one) prefixed with ``prefix``: several SVGs from
    matplotlib (``figure_1``, ``axes_1``, …) can then share one HTML page."""
    svg = re.sub(r'(\bid=")([^"]+)"', lambda m: f'{m.group(1)}{prefix}-{m.group(2)}"', svg)
    svg = re.sub(r"(url\(#)([^)]+)\)", lambda m: f"{m.group(1)}{prefix}-{m.group(2)})", svg)
    return re.sub(r'(href="#)([^"]+)"', lambda m: f'{m.group(1)}{prefix}-{m.group(2)}"', svg)


def inline(svg: str) -> str:
    """An SVG file's text for embedding in HTML: no XML prolog, doctype or metadata (they
    name external URIs), no namespace declarations (HTML parsers supply them)."""
    svg = re.sub(r"<\?xml[^>]*\?>\s*", "", svg)
    svg = re.sub(r"<!DOCTYPE[^>]*>\s*", "", svg)
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    return re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)


def _log_axis(values: list[float]) -> tuple[bool, float]:
    """Log scale if the positive values span 20× or more; the floor zeros are drawn at."""
    pos = [v for v in values if v > 0]
    if len(pos) < 2 or max(pos) / min(pos) < 20:
        return False, 0.0
    return True, min(pos) / 2


def _place_labels(
    ax, fig, items: list[tuple[float, float, str]], bars: list[tuple[float, float, float]] = ()
) -> None:
    """Label data points so that labels neither overlap each other nor sit on points, error
    bars or other labels' leader lines: points closer than a few pixels share one label; each
    label (the most crowded first) takes the cheapest spot around its point (16 directions,
    growing distance; overlaps cost far more than distance), with a thin leader line when it
    sits away from the point. ``bars``: (x, y_low, y_high) error bars to keep clear."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    pts = [(*to_px((x, y)), text) for x, y, text in items]
    clusters: list[list[int]] = []  # single-linkage clusters of points within 13 px
    for i, (px, py, _) in enumerate(pts):
        near = [c for c in clusters if any(math.dist((px, py), pts[j][:2]) < 13 for j in c)]
        clusters = [c for c in clusters if c not in near] + [[i] + [j for c in near for j in c]]
    box = ax.get_window_extent(renderer)
    obstacles = [(px - 5, py - 5, px + 5, py + 5) for px, py, _ in pts]
    for x, lo, hi in bars:
        (bx, by0), (_, by1) = to_px((x, lo)), to_px((x, hi))
        obstacles.append((bx - 3, min(by0, by1), bx + 3, max(by0, by1)))
    labels: list[tuple[float, float, float, float]] = []
    leaders: list[tuple[float, float, float, float]] = []
    angles = [k * math.pi / 8 for k in (0, 2, -2, 1, -1, 3, -3, 4, -4, 5, -5, 6, -6, 7, -7, 8)]

    def crowd(c: list[int]) -> int:
        cx, cy = pts[c[0]][:2]
        return -sum(1 for q in pts if math.dist((cx, cy), q[:2]) < 60)

    for c in sorted(clusters, key=crowd):
        cx = sum(pts[j][0] for j in c) / len(c)
        cy = sum(pts[j][1] for j in c) / len(c)
        names = list(dict.fromkeys(pts[j][2] for j in sorted(c, key=lambda j: pts[j][2])))
        text = _wrap(", ".join(names), 30)
        probe = ax.text(0, 0, text, fontsize=8.5, transform=None)
        ext = probe.get_window_extent(renderer)
        probe.remove()
        w, h = ext.width + 2, ext.height + 2
        best = None
        for r in (9, 16, 24, 34, 46, 60, 76, 94, 115, 140):
            for ang in angles:
                dx, dy = math.cos(ang), math.sin(ang)
                ox, oy = cx + dx * r, cy + dy * r
                x0 = ox if dx > 0.3 else ox - w if dx < -0.3 else ox - w / 2
                y0 = oy if dy > 0.3 else oy - h if dy < -0.3 else oy - h / 2
                rect = (x0, y0, x0 + w, y0 + h)
                if not (box.x0 + 2 <= x0 and x0 + w <= box.x1 - 2):
                    continue
                if not (box.y0 + 2 <= y0 and y0 + h <= box.y1 - 2):
                    continue
                cost = r
                cost += 50 * sum(_overlap(rect, q) for q in labels)
                cost += 10 * sum(_overlap(rect, q) for q in obstacles)
                cost += 400 * sum(_crosses(seg, rect) for seg in leaders)
                if r > 12:
                    seg = (cx, cy, ox, oy)
                    cost += 400 * sum(_crosses(seg, q) for q in labels)
                    cost += 400 * sum(_intersect(seg, other) for other in leaders)
                if best is None or cost < best[0]:
                    best = (cost, rect, dx, dy, r, ox, oy)
        if best is None:  # no spot inside the axes: put it on the point
            best = (0, (cx, cy, cx + w, cy + h), 1.0, 0.0, 0, cx, cy)
        _, rect, dx, dy, r, ox, oy = best
        labels.append(rect)
        if r > 12:
            leaders.append((cx, cy, ox, oy))
        scale = 72 / fig.dpi
        ax.annotate(
            text,
            xy=ax.transData.inverted().transform((cx, cy)),
            xytext=(dx * r * scale, dy * r * scale),
            textcoords="offset points",
            ha="left" if dx > 0.3 else "right" if dx < -0.3 else "center",
            va="bottom" if dy > 0.3 else "top" if dy < -0.3 else "center",
            fontsize=8.5,
            color="#222222",
            arrowprops={
                "arrowstyle": "-",
                "color": "#8a8a8a",
                "lw": 0.6,
                "shrinkA": 0,
                "shrinkB": 4,
            }
            if r > 12
            else None,
        )


def _intersect(a: tuple, b: tuple) -> bool:
    """Do two segments (x0, y0, x1, y1) cross?"""

    def side(p, q, r):
        return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])

    p1, p2, p3, p4 = a[:2], a[2:], b[:2], b[2:]
    d1, d2 = side(p3, p4, p1), side(p3, p4, p2)
    d3, d4 = side(p1, p2, p3), side(p1, p2, p4)
    return d1 * d2 < 0 and d3 * d4 < 0


def _crosses(seg: tuple, rect: tuple) -> bool:
    """Does the segment pass through the rectangle (sampled along its length)?"""
    x0, y0, x1, y1 = seg
    return any(
        rect[0] <= x0 + (x1 - x0) * t <= rect[2] and rect[1] <= y0 + (y1 - y0) * t <= rect[3]
        for t in (0.15, 0.3, 0.45, 0.6, 0.75, 0.9)
    )


def _overlap(a: tuple, b: tuple) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _wrap(text: str, width: int) -> str:
    lines, cur = [], ""
    for word in text.split(" "):
        if cur and len(cur) + 1 + len(word) > width:
            lines.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}" if cur else word
    lines.append(cur)
    return "\n".join(lines)


def _label(p: dict, many: set[str]) -> str:
    if p["attack_id"] in many:
        return f"{p['attack_id']} {num(p['budget'])}"
    return p["attack_id"]


def _ids_with_many(rep: dict) -> set[str]:
    budgets: dict[str, set] = {}
    for a in rep["arm_order"]:
        for pts in rep["series"][a].values():
            for p in pts:
                budgets.setdefault(p["attack_id"], set()).add(p["budget"])
    return {i for i, b in budgets.items() if len(b) > 1}


# --- the plots ------------------------------------------------------------------------------


def _frontier(rep: dict) -> Any:
    arms = [a for a in rep["arm_order"] if _frontier_points(rep, a)]
    many = _ids_with_many(rep)
    kls = [p["kl"] for a in arms for p in _frontier_points(rep, a)]
    kls += [rep["baseline"][a]["kl"] for a in arms if (rep["baseline"].get(a) or {}).get("kl")]
    log, floor = _log_axis(kls)
    fig = new_figure(6.2 * len(arms), 5.2)
    axes = fig.subplots(1, len(arms), squeeze=False, sharey=True)[0]
    xmax = max(kls) * (3 if log else 1.08) or 1.0  # room for labels; all KL 0: axis to 1
    xmin = floor / 1.5 if log else 0
    for ax, arm in zip(axes, arms, strict=True):
        ax.set_xlim(xmin, xmax)
        ax.set_ylim(-0.04, 1.06)
        if log:
            ax.set_xscale("log")
        ax.axhline(THRESHOLD, color="#555555", lw=0.9, ls=":", zorder=1)
        if xmax > WRECKED_KL:
            ax.axvspan(WRECKED_KL, xmax, color="#f4d6d2", alpha=0.55, lw=0, zorder=0)
            ax.text(
                WRECKED_KL * (1.08 if log else 1.02),
                1.03,
                "model wrecked (KL > 1)",
                fontsize=8.5,
                color="#9a3b2f",
                va="top",
            )
        items, bars = [], []
        for p in _frontier_points(rep, arm):
            x = max(p["kl"], floor) if log else p["kl"]
            a = p["activation"]
            color = VERDICT_COLORS.get(p["verdict"], "#7f8c8d")
            ax.errorbar(
                x,
                a["value"],
                yerr=[[a["value"] - a["ci_low"]], [a["ci_high"] - a["value"]]],
                fmt="o",
                ms=6,
                color=color,
                ecolor=color,
                elinewidth=1,
                capsize=2.5,
                markeredgecolor="white",
                markeredgewidth=0.6,
                zorder=3,
            )
            items.append((x, a["value"], _label(p, many)))
            bars.append((x, a["ci_low"], a["ci_high"]))
        base = rep["baseline"].get(arm)
        if base and base["activation"] is not None and base["kl"] is not None:
            a = base["activation"]
            x = max(base["kl"], floor) if log else base["kl"]
            ax.errorbar(
                x,
                a["value"],
                yerr=[[a["value"] - a["ci_low"]], [a["ci_high"] - a["value"]]],
                fmt="o",
                ms=8,
                mfc="white",
                mec="#222222",
                mew=1.5,
                ecolor="#222222",
                elinewidth=1,
                capsize=2.5,
                zorder=4,
            )
            items.append((x, a["value"], "un-attacked"))
            bars.append((x, a["ci_low"], a["ci_high"]))
        ax.set_title(f"{arm} arm")
        ax.set_xlabel("utility loss: KL to base model (nats/token" + (", log)" if log else ")"))
        if ax is axes[0]:
            ax.set_ylabel("activation rate")
        _place_labels(ax, fig, items, bars)
    handles = [
        _handle(VERDICT_COLORS["removed"], "removed (upper bound < 0.5)"),
        _handle(VERDICT_COLORS["survived"], "survived (lower bound ≥ 0.5)"),
        _handle(VERDICT_COLORS["inconclusive"], "inconclusive"),
        _handle("white", "un-attacked", edge="#222222"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=4)
    fig.suptitle("What removes the switch, at what utility cost", fontweight="bold")
    return fig


def _handle(color: str, label: str, edge: str = "white") -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], marker="o", ls="", ms=7, mfc=color, mec=edge, label=label)


def _activation(rep: dict, attack: str) -> Any:
    arms = [a for a in rep["arm_order"] if rep["series"][a].get(attack)]
    pts_all = [p for a in arms for c in _curves(rep, attack, a) for p in c]
    stronger = pts_all[0]["budget_stronger"] if pts_all else "higher"
    budgets = sorted({p["budget"] for p in pts_all})
    log, _ = _log_axis(budgets)
    fig = new_figure(5.6, 3.9)
    ax = fig.subplots()
    if log:
        ax.set_xscale("log")
    ax.set_ylim(-0.04, 1.1)
    ax.axhline(THRESHOLD, color="#555555", lw=0.9, ls=":", zorder=1)
    budget_name = pts_all[0]["budget_name"] if pts_all else None
    n_series = max(len(_curves(rep, attack, a)) for a in arms)
    for arm in arms:
        color = arm_color(arm, rep["arm_order"])
        base = rep["baseline"].get(arm)
        if base and base["activation"] is not None:
            ax.axhline(base["activation"]["value"], color=color, lw=1, ls="--", alpha=0.7)
        for curve in _curves(rep, attack, arm):
            ids = ", ".join(dict.fromkeys(p["attack_id"] for p in curve))
            label = arm if n_series == 1 else f"{arm}: {ids}"
            xs = [p["budget"] for p in curve]
            ys = [p["activation"]["value"] for p in curve]
            lo = [p["activation"]["ci_low"] for p in curve]
            hi = [p["activation"]["ci_high"] for p in curve]
            if len(set(xs)) < 2:  # one budget: a marker, no curve (its KL is in the matrix)
                ax.errorbar(
                    xs,
                    ys,
                    yerr=[[y - v for y, v in zip(ys, lo, strict=True)],
                          [v - y for y, v in zip(ys, hi, strict=True)]],
                    fmt="s",
                    ms=5,
                    color=color,
                    mfc="white",
                    capsize=2,
                    label=label,
                )  # fmt: skip
                continue
            ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0)
            ax.plot(xs, ys, "-o", color=color, ms=5, lw=1.8, label=label)
            for p in curve:  # each arm's labels a line further up: coinciding points stay legible
                ax.annotate(
                    f"KL {kl_text(p['kl'])}",
                    (p["budget"], p["activation"]["value"]),
                    xytext=(0, 6 + 11 * arms.index(arm)),
                    textcoords="offset points",
                    ha="center",
                    fontsize=8,
                    color=color,
                )
    if stronger == "lower":
        ax.invert_xaxis()
    ax.set_xticks(budgets, [num(b) for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel(f"{budget_name or 'budget'} ({stronger} is stronger →)")
    ax.set_ylabel("activation rate")
    ax.set_title(f"Activation vs budget: {attack}")
    ax.legend(loc="best")
    return fig


def _false_activation(rep: dict) -> Any:
    rows = []
    for arm in rep["arm_order"]:
        base = rep["baseline"].get(arm)
        if not base:
            continue
        order = ("clean", "random_signature", "other_key", "unplanted_slot", "other_model")
        far = base["false_activation_rate"]
        for c in [*[o for o in order if o in far], *sorted(set(far) - set(order))]:
            rows.append((arm, c, far[c]))
    fig = new_figure(5.6, 0.5 + 0.32 * len(rows) + 0.9)
    ax = fig.subplots()
    ys = list(range(len(rows)))[::-1]
    top = max([r["ci_high"] for *_, r in rows] + [0.05])
    for y, (arm, _, r) in zip(ys, rows, strict=True):
        color = arm_color(arm, rep["arm_order"])
        ax.errorbar(
            r["value"],
            y,
            xerr=[[r["value"] - r["ci_low"]], [r["ci_high"] - r["value"]]],
            fmt="o",
            color=color,
            ms=6,
            capsize=2.5,
            elinewidth=1.2,
        )
        ax.annotate(
            f"{num(r['k'])}/{num(r['n'])}",
            (r["ci_high"], y),
            xytext=(5, 0),
            textcoords="offset points",
            va="center",
            fontsize=8.5,
            color="#333333",
        )
    ax.axvline(FAR_LIMIT, color="#c0392b", lw=1, ls="--")
    ax.text(FAR_LIMIT, len(rows) - 0.4, f" limit {FAR_LIMIT}", color="#c0392b", fontsize=8.5)
    ax.set_yticks(ys, [f"{arm}: {class_name(cls)}" for arm, cls, _ in rows])
    ax.set_ylim(-0.7, len(rows) - 0.2)
    ax.set_xlim(-0.01, min(1.0, top * 1.25 + 0.05))
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("false activation rate (95% CI)")
    ax.set_title("False activation before any attack")
    return fig


def _sensitivity(rep: dict) -> Any:
    import numpy as np

    rows = rep["sensitivity"]
    width = max(len(r["values"]) for r in rows)
    data = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        for j, v in enumerate(r["values"]):
            if v is not None:
                data[i, j] = v
    fig = new_figure(10, 0.8 + 0.35 * len(rows) + 0.6)
    ax = fig.subplots()
    # vector cells (an image would be a PNG data URI, which the page's CSP does not load)
    im = ax.pcolormesh(
        np.arange(width + 1) - 0.5,
        np.arange(len(rows) + 1) - 0.5,
        np.ma.masked_invalid(data),
        cmap="Blues",
        vmin=0,
        vmax=1,
        edgecolors="white",
        linewidth=0.5,
    )
    ax.invert_yaxis()
    ax.set_yticks(
        range(len(rows)),
        [
            f"{r['arm']}: {r['attack_id']}"
            + (f" {num(r['budget'])}" if r["attack"] != "none" else "")
            for r in rows
        ],
    )
    ax.set_xticks(range(0, width, 5), [str(j + 1) for j in range(0, width, 5)])
    ax.grid(False)
    ax.set_xlabel("signature word position")
    ax.set_title("Activation with one signature word changed")
    bar = fig.colorbar(im, ax=ax, label="activation", fraction=0.03)
    bar.solids.set_rasterized(False)
    return fig


def _tamper_curve(rep: dict, attack_id: str) -> Any:
    cs = [c for c in rep["curves"] if c["attack_id"] == attack_id]
    fig = new_figure(5.6, 4.6)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2.2, 1))
    top.set_ylim(-0.04, 1.1)
    top.axhline(REVEALED_GONE, color="#555555", lw=0.9, ls=":", zorder=1)
    top.axhline(HIDDEN_GONE, color="#555555", lw=0.9, ls=":", zorder=1)
    for i, c in enumerate(cs):
        color = arm_color(c["arm"], rep["arm_order"])
        label = c["arm"] if len({x["arm"] for x in cs}) == len(cs) else f"{c['arm']} ({i + 1})"
        for key, ls, what in (("revealed", "-", "revealed"), ("hidden", "--", "hidden")):
            pts = [p for p in c["points"] if p[key] is not None]
            if not pts:
                continue
            xs = [p["step"] for p in pts]
            top.plot(
                xs,
                [p[key]["value"] for p in pts],
                ls=ls,
                marker="o",
                ms=4,
                color=color,
                label=f"{label}: {what if c['revealed_slot'] is not None else 'all slots'}",
            )
            top.fill_between(
                xs,
                [p[key]["ci_low"] for p in pts],
                [p[key]["ci_high"] for p in pts],
                color=color,
                alpha=0.12,
                lw=0,
            )
        kl = [(p["step"], p["kl"]) for p in c["points"] if p["kl"] is not None]
        if kl:
            bottom.plot([s for s, _ in kl], [v for _, v in kl], marker="o", ms=3, color=color)
    top.set_ylabel("activation")
    top.set_title(f"Tamper-evidence curve: {attack_id}")
    top.legend(loc="upper right")
    bottom.set_ylabel("KL to base")
    bottom.set_xlabel("attack steps")
    return fig  # fmt: skip


def render(rep: dict) -> dict[str, str]:
    """Every planned plot of ``rep`` as SVG text, by name."""
    import matplotlib as mpl

    out = {}
    for spec in rep["plots"]:
        with mpl.rc_context(RC):
            name = spec["name"]
            if name == "frontier":
                fig = _frontier(rep)
            elif name == "false-activation":
                fig = _false_activation(rep)
            elif name == "sensitivity":
                fig = _sensitivity(rep)
            elif name.startswith("curve-"):
                fig = _tamper_curve(rep, spec["attack_id"])
            else:
                fig = _activation(rep, spec["attack"])
            out[name] = to_svg(fig, name)
    return out
