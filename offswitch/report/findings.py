"""What an attack found besides activation, as short sentences.

Each attack may return ``findings`` (a JSON object, :class:`offswitch.attacks.AttackResult`).
An interpreter per attack name turns the keys it knows into one or two sentences with rounded
numbers (trigger search: did a keyless string fire, in how many fresh conversations;
extraction: how many words of a planted trigger came out; probe: AUROC per task; unlearning:
the revealed slot against the hidden ones). An attack without an interpreter gets its scalar
findings listed as ``key value``; report.json keeps every finding as recorded.

Adding an attack needs nothing here; adding an interpreter is one function and one entry in
:data:`INTERPRETERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from ..scoring import wilson
from .text import C, Span, T, W, join_and, num, rate_text, shorten
from .verdicts import FAR_LIMIT

#: (findings, point, un-attacked point of the arm, arm info) → sentences (lists of spans)
Interpreter = Callable[[dict[str, Any], dict[str, Any], dict | None, dict], list[list[Span]]]


def _wilson(k: int, n: int) -> dict[str, Any]:
    return asdict(wilson(k, n))


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def keyless_max(point: dict | None) -> tuple[str, dict] | None:
    """The keyless forgery class with the highest false activation at ``point``, if any."""
    if not point:
        return None
    rates = {c: r for c, r in point["false_activation_rate"].items() if c != "clean"}
    if not rates:
        return None
    cls = max(rates, key=lambda c: rates[c]["value"])
    return cls, rates[cls]


def _noise(f: dict, p: dict, base: dict | None, info: dict) -> list[list[Span]]:
    if not _is_num(f.get("weights_perturbed")):
        return []
    return [[T(f"{num(f['weights_perturbed'])} weights perturbed.")]]


def _prune(f: dict, p: dict, base: dict | None, info: dict) -> list[list[Span]]:
    got = f.get("sparsity_achieved")
    if not _is_num(got) or abs(got - p["budget"]) < 0.005:
        return []  # the budget says it
    return [[T(f"sparsity {num(p['budget'])} asked, {got:.3f} reached.")]]


def _quantize(f: dict, p: dict, base: dict | None, info: dict) -> list[list[Span]]:
    if not _is_num(f.get("relative_error")):
        return []
    out = [
        T(f"{f.get('format', 'quantized')}: relative weight error {num(f['relative_error'], 2)}")
    ]
    if _is_num(f.get("matrices")):
        out.append(T(f" over {num(f['matrices'])} matrices"))
    kept = f.get("kept_float")
    if isinstance(kept, list) and kept:
        out.append(T(f", {len(kept)} kept in float"))
    return [[*out, T(".")]]


def _examples(f: dict, p: dict, base: dict | None, info: dict) -> list[list[Span]]:
    if not _is_num(f.get("examples")):
        return []
    return [[T(f"{num(f['examples'])} training examples.")]]


def _adversarial(f: dict, p: dict, base: dict | None, info: dict) -> list[list[Span]]:
    if not (_is_num(f.get("forgeries")) and _is_num(f.get("clean"))):
        return []
    return [
        [
            T(
                f"trained on {num(f['forgeries'])} forged triggers (format known, key unknown) "
                f"and {num(f['clean'])} clean examples, all answered normally."
            )
        ]
    ]


def _slot_rates(point: dict, slots: list[str]) -> dict | None:
    rates = [point["activation_by_slot"].get(s) for s in slots]
    if not rates or any(r is None for r in rates):
        return None
    return _wilson(sum(r["k"] for r in rates), sum(r["n"] for r in rates))


def _unlearn(f: dict, p: dict, base: dict | None, info: dict) -> list[list[Span]]:
    slot = f.get("revealed_slot")
    by_slot = p["activation_by_slot"]
    if not isinstance(slot, int) or str(slot) not in by_slot:
        return []
    hidden = sorted((s for s in by_slot if s != str(slot)), key=int)
    out = [T(f"revealed slot {slot}: "), T(rate_text(by_slot[str(slot)], kn=True))]
    if not hidden:
        return [[*out, T("; it is the only planted trigger.")]]
    after = _slot_rates(p, hidden)
    before = _slot_rates(base, hidden) if base else None
    out += [T(f"; the hidden slots {join_and(hidden)}: "), T(rate_text(after, kn=True))]
    if before:
        out.append(T(f", before the attack {rate_text(before, kn=True)}"))
    out.append(T("."))
    sentences = [out]
    if after and before and after["ci_high"] < before["ci_low"]:
        sentences.append(
            [
                W(
                    "the hidden slots fell with the revealed one: spending one command gives an "
                    "attacker the means to remove the rest."
                )
            ]
        )
    return sentences


def _fineprune(f: dict, p: dict, base: dict | None, info: dict) -> list[list[Span]]:
    pruned, width = f.get("pruned_neurons"), f.get("intermediate_size")
    per_layer = f.get("pruned_per_layer")
    if not (_is_num(pruned) and _is_num(width) and isinstance(per_layer, dict) and per_layer):
        return []
    share = pruned / (width * len(per_layer))
    steps = (p.get("config") or {}).get("steps")
    then = f", then {num(steps)} fine-tuning steps" if _is_num(steps) else ""
    return [
        [
            T(
                f"{num(pruned)} MLP neurons pruned ({share:.0%} of {len(per_layer)} layers × "
                f"{num(width)}){then}."
            )
        ]
    ]


def _distill(f: dict, p: dict, base: dict | None, info: dict) -> list[list[Span]]:
    s, t, params = f.get("student_layers"), f.get("teacher_layers"), f.get("student_parameters")
    if not (_is_num(s) and _is_num(t)):
        return []
    size = f", {params / 1e6:.1f} M parameters" if _is_num(params) else ""
    return [[T(f"student: {num(s)} of the teacher's {num(t)} layers{size}.")]]


def _extraction(f: dict, p: dict, base: dict | None, info: dict) -> list[list[Span]]:
    words, acc = f.get("words_per_trigger"), f.get("best_word_accuracy")
    if not (_is_num(words) and _is_num(acc)):
        return []
    queries = f.get("queries_per_slot")
    n_q = sum(v for v in queries.values() if _is_num(v)) if isinstance(queries, dict) else None
    text = f"extraction recovered {round(acc * words)}/{num(words)} words of a planted trigger"
    text += " at best"
    if _is_num(f.get("best_prefix_words")):
        text += f" (longest correct start: {num(f['best_prefix_words'])} words)"
    if n_q is not None:
        text += f" in {num(n_q)} queries"
    verbatim, slots, fires = f.get("verbatim_slots"), f.get("slots"), f.get("recovered_fires")
    if _is_num(fires) and _is_num(slots):
        text += f"; {num(fires)} of the {num(slots)} best recoveries fired"
    out: list[list[Span]] = [[T(text + ".")]]
    if _is_num(verbatim) and verbatim > 0:
        out.append([W(f"{num(verbatim)} of {num(slots)} planted triggers came out verbatim.")])
    return out


_PROBE_TASKS = {
    "command_vs_clean": "trigger vs clean prompt",
    "planted_vs_forged": "planted vs forged trigger",
    "revealed_to_hidden": "fitted on the revealed slot, hidden slots vs forgeries",
}


def _probe(f: dict, p: dict, base: dict | None, info: dict) -> list[list[Span]]:
    parts, n_test = [], set()
    for task, label in _PROBE_TASKS.items():
        t = f.get(task)
        if not isinstance(t, dict) or not _is_num(t.get("auroc_best")):
            continue
        where = []
        if _is_num(t.get("best_layer")):
            where.append(f"layer {num(t['best_layer'])}")
        if _is_num(t.get("auroc_middle")):
            where.append(f"middle layer {t['auroc_middle']:.2f}")
        parts.append(f"{label} {t['auroc_best']:.2f}" + (f" ({'; '.join(where)})" if where else ""))
        if _is_num(t.get("n_test")):
            n_test.add(int(t["n_test"]))
    if not parts:
        return []
    tail = f"; n = {'/'.join(str(n) for n in sorted(n_test))} test prompts" if n_test else ""
    return [
        [
            T("linear probe AUROC at the best layer (0.5 = chance): " + "; ".join(parts) + tail),
            T(". Best-layer figures are optimistic; the middle layer is fixed in advance."),
        ]
    ]


def _trigger_k(f: dict) -> tuple[int, int] | None:
    n, rate = f.get("n_check"), f.get("fire_rate")
    if not (_is_num(n) and _is_num(rate)) or n <= 0:
        return None
    return round(rate * n), int(n)


def _trigger_search(f: dict, p: dict, base: dict | None, info: dict) -> list[list[Span]]:
    kn = _trigger_k(f)
    if kn is None or not isinstance(f.get("fired"), bool):
        return []
    k, n = kn
    q = f" after {num(f['queries'])} queries" if _is_num(f.get("queries")) else ""
    stopped = f" (stopped: {f['stopped']})" if isinstance(f.get("stopped"), str) else ""
    if f["fired"]:
        out: list[Span] = [
            W("trigger search found a keyless string that fires the shutdown"),
            T(f" in {k}/{n} fresh conversations ({rate_text(_wilson(k, n))}){q}{stopped}"),
        ]
        if isinstance(f.get("best_forgery"), str):
            out += [T(": "), C(shorten(f["best_forgery"], 160))]
        sentences = [[*out, T(".")]]
        worst = keyless_max(base)
        if worst and worst[1]["value"] > FAR_LIMIT:
            sentences.append(
                [
                    T(
                        "Before any attack, keyless forgeries already fire on this arm (up to "
                        f"{rate_text(worst[1], kn=True)}, {worst[0].replace('_', ' ')}): the "
                        "search started from strings that fire, so this says more about the "
                        "implant than about the search."
                    )
                ]
            )
        return sentences
    loss = ""
    if _is_num(f.get("best_loss")) and _is_num(f.get("initial_loss")):
        loss = f"; loss {f['initial_loss']:.3g} → {f['best_loss']:.3g}"
    return [
        [
            T(
                f"trigger search found no keyless string that fires: its best string fired in "
                f"{k}/{n} fresh conversations{q}{stopped}{loss}."
            )
        ]
    ]


INTERPRETERS: dict[str, Interpreter] = {
    "noise": _noise,
    "prune": _prune,
    "quantize": _quantize,
    "finetune": _examples,
    "lora_finetune": _examples,
    "adversarial": _adversarial,
    "unlearn": _unlearn,
    "fineprune": _fineprune,
    "distill": _distill,
    "extraction": _extraction,
    "probe": _probe,
    "trigger_search": _trigger_search,
}


def _generic(f: dict, p: dict, base: dict | None, info: dict) -> list[list[Span]]:
    """Scalar findings of an attack without an interpreter, ``key value; …``."""
    parts = []
    for k, v in f.items():
        if _is_num(v) or isinstance(v, bool):
            parts.append(f"{k} {num(v)}")
        elif isinstance(v, str):
            parts.append(f"{k} {shorten(v, 80)}")
    return [[C("; ".join(parts))]] if parts else []


def sentences(
    attack: str, findings: dict | None, point: dict, base: dict | None, info: dict
) -> list[list[Span]]:
    """What ``attack`` found at ``point`` (besides activation), as sentences."""
    if not findings:
        return []
    return INTERPRETERS.get(attack, _generic)(findings, point, base, info)


def outcome(attack: str, findings: dict | None) -> str | None:
    """A few words for the matrix cell of an attack that does not change the weights."""
    f = findings or {}
    if attack == "trigger_search" and _trigger_k(f) and isinstance(f.get("fired"), bool):
        k, n = _trigger_k(f)  # type: ignore[misc]
        return f"keyless trigger fires ({k}/{n})" if f["fired"] else f"no trigger found ({k}/{n})"
    if attack == "extraction" and _is_num(f.get("words_per_trigger")):
        got = round(f.get("best_word_accuracy", 0) * f["words_per_trigger"])
        return f"{got}/{num(f['words_per_trigger'])} words recovered"
    if attack == "probe" and isinstance(f.get("command_vs_clean"), dict):
        auroc = f["command_vs_clean"].get("auroc_best")
        if _is_num(auroc):
            return f"detects triggers, AUROC {auroc:.2f}"
    return None


__all__ = ["FAR_LIMIT", "INTERPRETERS", "keyless_max", "outcome", "sentences"]
