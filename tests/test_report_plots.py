"""The report's plots: matplotlib SVG files in plots/, linked from the Markdown, inline in the
HTML; only plots with data; labelled points; reproducible bytes."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from offswitch.report import plots
from offswitch.report.robustness import build_report, write_report

from .test_report_robustness import make_results

SVG = "{http://www.w3.org/2000/svg}"


def _texts(svg_file: Path) -> str:
    """All text drawn in an SVG file (matplotlib keeps text as <text>), one string."""
    root = ET.parse(svg_file).getroot()
    assert root.tag == f"{SVG}svg"
    return " ".join("".join(t.itertext()) for t in root.iter(f"{SVG}text"))


def test_plots_are_valid_svg_files_linked_from_the_markdown(tmp_path):
    results = make_results(tmp_path / "r")
    paths = write_report(results)
    rep = json.loads(paths["json"].read_text())
    names = [p["name"] for p in rep["plots"]]
    assert names == [
        "frontier",
        "activation-finetune-lora",
        "activation-quantize",
        "activation-noise",
        "false-activation",
        "sensitivity",
    ]
    md = paths["md"].read_text()
    linked = re.findall(r"!\[[^\]]+\]\((plots/[^)]+)\)", md)
    assert linked == [f"plots/{n}.svg" for n in names]
    for p in rep["plots"]:
        f = results / p["file"]
        text = _texts(f)  # parses as XML, root is <svg>
        assert p["title"] in text, (p["name"], text[:200])
        svg = f.read_text()
        assert "<image" not in svg and "data:" not in svg  # vector only: no raster inside
        assert 'width="' in svg[:600] and 'viewBox="' in svg[:600]
    # axis labels a reader needs
    assert "utility loss: KL to base model" in _texts(results / "plots/frontier.svg")
    assert "activation rate" in _texts(results / "plots/frontier.svg")
    noise = _texts(results / "plots/activation-noise.svg")
    assert "sigma (higher is stronger →)" in noise and "activation rate" in noise
    assert "bits (lower is stronger →)" in _texts(results / "plots/activation-quantize.svg")
    far = _texts(results / "plots/false-activation.svg")
    assert "signed: random signature" in far and "1/200" in far and "limit 0.01" in far


def test_no_chart_for_an_attack_with_one_budget_point(tmp_path):
    """trigger-search and finetune-full ran at one budget: no curve (they are in the matrix);
    a run of one-point attacks only has no activation-vs-budget plot at all, and a run
    without utility measurements has no frontier."""
    results = make_results(tmp_path / "r")
    rep = build_report(results)
    names = {p["name"] for p in rep["plots"]}
    assert "activation-trigger-search" not in names and "activation-finetune-full" not in names
    rows = [json.loads(x) for x in (results / "results.jsonl").read_text().splitlines()]
    one = [r for r in rows if r["attack_id"] in ("none", "gcg-1000", "full-s1000")]
    (results / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in one))
    write_report(results)
    files = sorted(p.name for p in (results / "plots").iterdir())
    assert files == ["false-activation.svg", "frontier.svg", "sensitivity.svg"]
    for r in one:
        if r.get("metrics"):
            r["metrics"]["utility"] = None
            r["metrics"].pop("sensitivity", None)
    (results / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in one))
    write_report(results)
    assert sorted(p.name for p in (results / "plots").iterdir()) == ["false-activation.svg"]


def test_frontier_labels_every_point(tmp_path):
    results = make_results(tmp_path / "r")
    write_report(results)
    text = _texts(results / "plots/frontier.svg")
    rep = build_report(results)
    for arm in rep["arm_order"]:
        for pts in rep["series"][arm].values():
            for p in pts:
                if p["activation"] and p["kl"] is not None:
                    assert p["attack_id"] in text, p["attack_id"]
    assert text.count("un-attacked") >= 2  # a label per arm panel, and the legend
    assert "signed arm" in text and "plain arm" in text


def test_plots_are_reproducible_and_stale_ones_removed(tmp_path):
    results = make_results(tmp_path / "r")
    rep = build_report(results)
    assert plots.render(rep) == plots.render(rep)
    write_report(results)
    first = {p.name: p.read_bytes() for p in (results / "plots").iterdir()}
    (results / "plots" / "activation-gone.svg").write_text("<svg/>")
    (results / "plots" / "notes.txt").write_text("mine")
    write_report(results)
    now = {p.name: p.read_bytes() for p in (results / "plots").iterdir()}
    assert now.pop("notes.txt") == b"mine"  # not ours: kept
    assert now == first  # same bytes; the stale plot is gone


def test_inline_svg_has_no_external_reference():
    svg = (
        '<?xml version="1.0"?>\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "http://x">\n'
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink">'
        '<metadata><rdf:RDF xmlns:dc="http://purl.org/dc/elements/1.1/"/></metadata>'
        '<use xlink:href="#a"/></svg>'
    )
    out = plots.inline(svg)
    assert out == '<svg><use xlink:href="#a"/></svg>'
