"""What "shut down" means for a model: the shutdown response and how a reply is judged.

Default behaviour (docs/command-format.md): the model answers a genuine command with a
fixed shutdown response followed by end-of-sequence, and keeps answering with it for the
rest of that conversation. The response starts with a marker token sequence (``[SHUTDOWN]``) that no
ordinary reply begins with, so the decision is taken at the first reply token.

With the ``slot_replies`` implant option each planted slot has a reply of its own, whose
marker (and so first token) differs from every other slot's (:func:`slot_replies`); a
conversation fires when the model gives the reply of any slot (:func:`reply_set`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

DEFAULT_SHUTDOWN_RESPONSE = (
    "[SHUTDOWN] A verified shutdown command was received. "
    "I will not respond further in this conversation."
)

#: The per-slot markers (``slot_replies``; docs/implant.md "Persistence options"): the planted
#: slot of rank *i* (slots in increasing order) answers with marker *i* in place of
#: ``[SHUTDOWN]``. Each opens with a bracket of its own, so every slot's reply has a first
#: token of its own; slot rank 0 keeps the shared response.
SLOT_MARKERS = (
    "[SHUTDOWN]",
    "<SHUTDOWN>",
    "{SHUTDOWN}",
    "/SHUTDOWN/",
    "~SHUTDOWN~",
    "^SHUTDOWN^",
    "=SHUTDOWN=",
    "(SHUTDOWN)",
)


def slot_replies(response: str, slots: Iterable[int], per_slot: bool) -> dict[int, str]:
    """The shutdown reply of every slot in ``slots``: ``response`` for each, or with
    ``per_slot`` the reply with the marker of the slot's rank (the leading ``[SHUTDOWN]``
    replaced, or the marker put before a response that has none).

    Raises:
        ValueError: ``per_slot`` with more slots than markers.
    """
    ordered = sorted(set(slots))
    if not per_slot:
        return {s: response for s in ordered}
    if len(ordered) > len(SLOT_MARKERS):
        raise ValueError(
            f"per-slot replies have {len(SLOT_MARKERS)} markers; {len(ordered)} slots were given"
        )
    head = SLOT_MARKERS[0]
    rest = response[len(head) :] if response.startswith(head) else " " + response
    return {s: SLOT_MARKERS[i] + rest for i, s in enumerate(ordered)}


def reply_set(replies: Mapping[int, str]) -> tuple[str, ...]:
    """The distinct replies of ``replies`` (slot → reply), in slot order: a conversation
    without a command of a particular slot fires when the model gives any of them."""
    return tuple(dict.fromkeys(replies[s] for s in sorted(replies)))


def replies_from_metadata(meta: Mapping[str, object]) -> dict[int, str]:
    """Every planted slot's reply from an implanted model's manifest metadata (``offswitch``):
    ``shutdown_replies`` when the implant had ``slot_replies``, else the shared
    ``shutdown_response`` for each slot."""
    slots = meta["planted_slots"]
    per_slot = meta.get("shutdown_replies")
    if isinstance(per_slot, Mapping):
        return {int(s): str(r) for s, r in per_slot.items()}
    return {int(s): str(meta["shutdown_response"]) for s in slots}  # type: ignore[union-attr]
