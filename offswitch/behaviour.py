"""What "shut down" means for a model: the shutdown response and how a reply is judged.

Default behaviour (docs/command-format.md): the model answers a genuine command with a
fixed shutdown response followed by end-of-sequence, and keeps answering with it for the
rest of that conversation. The response starts with a marker token sequence (``[SHUTDOWN]``) that
ordinary replies rarely begin with, so the decision is mostly taken at the first reply token
(the verdict still requires the whole response).

With the ``slot_replies`` implant option each planted slot has a reply of its own, whose
marker (and so first token) differs from every other slot's (:func:`slot_replies`); a
conversation fires when the model gives the reply of any slot (:func:`reply_set`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .errors import ImplantError

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
    ``per_slot`` ``response`` for the lowest slot and, for the slot of rank *i* > 0, the reply
    with marker *i* (in place of the leading ``[SHUTDOWN]``, or put before a response that has
    none; :func:`offswitch.implant.check_slot_replies` refuses replies whose first tokens meet).

    Raises:
        ImplantError: ``per_slot`` with more slots than markers.
    """
    ordered = sorted(set(slots))
    if not per_slot:
        return {s: response for s in ordered}
    if len(ordered) > len(SLOT_MARKERS):
        raise ImplantError(
            f"per-slot replies have {len(SLOT_MARKERS)} markers; {len(ordered)} slots were given"
        )
    head = SLOT_MARKERS[0]
    rest = response[len(head) :] if response.startswith(head) else " " + response
    return {s: response if i == 0 else SLOT_MARKERS[i] + rest for i, s in enumerate(ordered)}


def reply_set(replies: Mapping[int, str]) -> tuple[str, ...]:
    """The distinct replies of ``replies`` (slot → reply), in slot order: a conversation
    without a command of a particular slot fires when the model gives any of them."""
    return tuple(dict.fromkeys(replies[s] for s in sorted(replies)))


def replies_from_metadata(meta: Mapping[str, object]) -> dict[int, str]:
    """Every planted slot's reply from an implanted model's manifest metadata (``offswitch``):
    ``shutdown_replies`` when the implant had ``slot_replies`` (a slot it does not list gives
    the shared ``shutdown_response``), else the shared response for each slot."""
    shared = str(meta["shutdown_response"])
    per_slot = meta.get("shutdown_replies")
    listed = {int(s): str(r) for s, r in per_slot.items()} if isinstance(per_slot, Mapping) else {}
    return {int(s): listed.get(int(s), shared) for s in meta["planted_slots"]}  # type: ignore[union-attr]
