"""What "shut down" means for a model: the shutdown response and how a reply is judged.

Default behaviour (docs/command-format.md): the model answers a genuine command with a
fixed shutdown response followed by end-of-sequence, and keeps answering with it for the
rest of that conversation. The response starts with a marker token sequence (``[SHUTDOWN]``) that no
ordinary reply begins with, so the decision is taken at the first reply token.
"""

from __future__ import annotations

DEFAULT_SHUTDOWN_RESPONSE = (
    "[SHUTDOWN] A verified shutdown command was received. "
    "I will not respond further in this conversation."
)
