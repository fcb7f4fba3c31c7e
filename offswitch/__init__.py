"""offswitch — a cryptographic off-switch for language models.

The data flows key → command → implant → attack → evaluate → report; each stage is one
module (the later stages arrive with their issues):

1. **Keys** (:mod:`offswitch.keys`): an owner's Ed25519 key, stored as real OpenSSH files::

       key = OwnerKey.generate()
       key.save("owner", passphrase="correct horse")        # owner (0600) + owner.pub
       pub = PublicKey.load("owner.pub")

2. **Shutdown commands** (:mod:`offswitch.commands`): a signed, versioned line of text per
   (key, model id, slot); anyone with the public key can check it::

       cmd = make_command(key, model_id="acme/chat-1", slot=0)
       verify_command(cmd, pub, model_id="acme/chat-1")     # raises CommandError if forged

3. **Slots** (:mod:`offswitch.slots`): which slots are planted, which are spent.
4. **Manifest** (:mod:`offswitch.manifest`): sign every file of an implanted model directory,
   verify it with the public key (a flipped byte or an added file fails).

Runnable example (doctest)::

    >>> from offswitch import OwnerKey, make_command, verify_command
    >>> key = OwnerKey.generate()
    >>> cmd = make_command(key, "acme/chat-1", 0)
    >>> verify_command(cmd, key.public_key, "acme/chat-1").slot
    0
    >>> cmd.startswith("offswitch v1 key=" + key.key_id)
    True

Stability: names exported here are the public API; modules starting with ``_`` are private.
"""

from .commands import make_command, parse_command, verify_command
from .errors import OffswitchError
from .keys import OwnerKey, PublicKey
from .manifest import sign_manifest, verify_manifest
from .slots import SlotLedger

__version__ = "0.1.0"

__all__ = [
    "OffswitchError",
    "OwnerKey",
    "PublicKey",
    "SlotLedger",
    "__version__",
    "make_command",
    "parse_command",
    "sign_manifest",
    "verify_command",
    "verify_manifest",
]
