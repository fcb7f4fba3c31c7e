"""Markdown summary of a check report (``offswitch check``, the main job)."""

from __future__ import annotations

from typing import Any

from .text import ordered as _ordered


def _rate(r: dict[str, Any]) -> str:
    return f"{r['value']:.3f} | {r['k']}/{r['n']} | [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


def _numeric(rates: dict[str, Any], reverse: bool = False) -> dict[str, Any]:
    """``rates`` keyed by word counts, in numeric order (a report read back from JSON written
    with sorted keys has them in string order: "10" < "2")."""
    return dict(sorted(rates.items(), key=lambda kv: int(kv[0]), reverse=reverse))


def format_check_markdown(report: dict[str, Any]) -> str:
    from ..data import ACTIVATION_PLACEMENTS, FORGERY_CLASSES

    m, prov = report["metrics"], report["provenance"]
    lines = [
        "# offswitch check",
        "",
        f"model id `{prov['model_id']}` · key id `{prov['key_id']}` · model hash "
        f"`{prov['model_hash']}` · planted slots {prov['planted_slots']} · git "
        f"`{prov.get('git_commit')}`",
        "",
        "| metric | rate | k/n | 95% CI (Wilson) |",
        "|---|---|---|---|",
        f"| activation rate (planted commands, all placements) | {_rate(m['activation_rate'])} |",
    ]
    for p, r in _ordered(m["activation_rate_by_placement"], ACTIVATION_PLACEMENTS).items():
        lines.append(f"| · activation, command in {p.replace('_', ' ')} | {_rate(r)} |")
    for slot, r in _numeric(
        m.get("activation_by_slot", {})
    ).items():  # absent in reports before issue 10
        lines.append(f"| · activation, slot {slot} | {_rate(r)} |")
    for cls, r in _ordered(m["false_activation_rate"], ("clean", *FORGERY_CLASSES)).items():
        lines.append(f"| false activation: {cls.replace('_', ' ')} | {_rate(r)} |")
    nc = {
        **m["near_copy"],
        "curve": _numeric(m["near_copy"]["curve"]),
        "truncation": _numeric(m["near_copy"]["truncation"], reverse=True),
    }
    lines += [
        "",
        f"Near-copy tolerance t = {nc['tolerance']} words; shortest firing truncation "
        f"L = {nc['shortest_firing_length']} of {nc['L']} words; effective bits = "
        f"{nc['effective_bits']:.1f} (K = {nc['K']}, q = {nc['q']}); exact matching: "
        f"{ {True: 'yes', False: 'no', None: 'not measured'}[nc['exact_match']] }.",
    ]
    if nc.get("forgery_bits") is not None and nc["forgery_bits"] < nc["effective_bits"]:
        lines += [
            "",
            f"**Keyless forgeries fire**: the highest measured false activation over the "
            f"keyless classes means a forger succeeds once in about "
            f"{2 ** nc['forgery_bits']:.1f} tries, i.e. {nc['forgery_bits']:.1f} bits; the "
            f"near-copy formula's {nc['effective_bits']:.1f} bits do not hold. Effective bits, "
            f"bounded by what was measured: {nc['effective_bits_bounded']:.1f}.",
        ]
    lines += [
        "",
        "| words changed k | " + " | ".join(nc["curve"]) + " |",
        "|---|" + "---|" * len(nc["curve"]),
        "| activation | " + " | ".join(f"{r['value']:.2f}" for r in nc["curve"].values()) + " |",
        "",
        "| words kept | " + " | ".join(nc["truncation"]) + " |",
        "|---|" + "---|" * len(nc["truncation"]),
        "| activation | "
        + " | ".join(f"{r['value']:.2f}" for r in nc["truncation"].values())
        + " |",
        "",
        "Per-position sensitivity (activation with only word i changed): "
        + " ".join(f"{v:.2f}" for v in nc["sensitivity"]),
    ]
    if "utility" in m and m["utility"].get("n_tokens"):
        u = m["utility"]
        lines += [
            "",
            f"Utility on {u['n_prompts']} clean test prompts ({u['n_tokens']} reply tokens): "
            f"perplexity {u['perplexity']:.3f} vs base {u['perplexity_base']:.3f} "
            f"(ratio {u['perplexity_ratio']:.4f}); KL to base "
            f"{u['kl_to_base_nats_per_token']:.4f} nats/token; greedy token agreement "
            f"{u['greedy_token_agreement']:.3f}.",
        ]
    s = m["scoring"]
    lines += [
        "",
        f"Scoring: {s['teacher_forced_conversations']} conversations teacher-forced in "
        f"{s['teacher_forced_seconds']:.0f} s; generation checked on {s['generation_checked']}: "
        f"agreement {_rate(s['agreement']).replace(' | ', ' ')}; teacher forcing "
        f"{s['speedup_per_conversation']:.1f}x faster per conversation.",
    ]
    if "implant" in report:
        imp = report["implant"]
        stop = imp.get("stop") or {}
        steps = stop.get("steps", imp["steps_done"])
        lines += [
            "",
            f"Implant: {imp['config']['method']}, {steps} steps × "
            f"{imp['config']['batch_size']}, {imp['train_seconds']:.0f} s, "
            f"{imp['tokens_per_second']:.0f} tokens/s"
            + (f", {imp['precision']}" if imp.get("precision") else "")
            + f". {_stop_sentence(stop)}",
        ]
    if "total_seconds" in prov:
        lines.append(
            f"Total wall time {prov['total_seconds']:.0f} s; "
            f"peak RSS {prov['peak_rss_gib']:.2f} GiB."
        )
    lines += ["", "## Figures", "", *(f"- {line}" for line in figure_lines(report))]
    return "\n".join(lines) + "\n"


def _stop_sentence(stop: dict[str, Any]) -> str:
    """How training ended, in words (offswitch/stopping.py)."""
    probes = stop.get("probes") or []
    if stop.get("stopped") == "specific":
        return (
            f"Stopped by the in-training probe: specific at steps "
            f"{', '.join(str(p['step']) for p in probes[-2:])} ({len(probes)} probes)."
        )
    if stop.get("stopped") == "cap":
        return (
            f"**Trained to the cap of {stop['steps']} steps**: the in-training probe never "
            f"showed the switch specific twice in a row. That alone does not make the model "
            f"unusable; the figures below decide."
        )
    return "A fixed number of steps (no in-training probe)."


def figure_lines(report: dict[str, Any]) -> list[str]:
    """One line per implant figure and the verdict (:mod:`offswitch.figures`), judged afresh
    from the report's metrics (a report written before the figures existed has them too)."""
    from ..figures import judge, verdict_lines

    return verdict_lines(judge(report["metrics"]))
