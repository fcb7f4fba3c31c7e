"""Errors raised by offswitch.

Every error derives from :class:`OffswitchError`; specific errors also derive from the builtin
they resemble, so callers can catch either (``except ValueError`` still works). Messages are
one sentence meant for a person, and never contain private key material.
"""

from __future__ import annotations


class OffswitchError(Exception):
    """Root of every error offswitch raises on purpose."""


# --- keys -------------------------------------------------------------------------------


class KeyFileError(OffswitchError, ValueError):
    """A key file is missing, unreadable, corrupted, or of the wrong kind."""


class KeyFormatError(KeyFileError):
    """A key file's bytes are not the OpenSSH format they claim (the message is a sentence
    fragment, completed with the file's name by the reader; it never holds key material)."""


class WrongPassphraseError(KeyFileError):
    """The passphrase does not decrypt the private key file."""


class KeyPermissionError(KeyFileError):
    """A private key file may be read or written by group or others (as ssh-keygen, refuse it)."""


class KeyPathError(OffswitchError, ValueError):
    """A key output path is empty, names a directory, or exists as something other than a
    regular file (a FIFO, a device, a symlink): a key write would destroy or misplace it."""


class KeyCommentError(OffswitchError, ValueError):
    """A key comment is not a single line of text (it would break the ``.pub`` line)."""


class PassphraseError(OffswitchError, ValueError):
    """No passphrase could be obtained (no source, no terminal, end of input), it is not text,
    or the two entries differ."""


class WeakPassphraseError(PassphraseError):
    """A passphrase for a new key is shorter than ``MIN_PASSPHRASE_LENGTH`` characters."""


class InvalidKeyError(OffswitchError, ValueError):
    """A public key is not a valid, canonical, prime-order Ed25519 point."""


class BadSignatureError(OffswitchError, ValueError):
    """A signature does not verify under the given public key and message."""


class OutputExistsError(OffswitchError, FileExistsError):
    """An output file already exists and ``force`` was not given."""


# --- shutdown commands ------------------------------------------------------------------


class CommandError(OffswitchError, ValueError):
    """A shutdown command is not genuine for the given public key and model id."""


class MalformedCommandError(CommandError):
    """The text is not a well-formed shutdown command."""


class WrongKeyError(CommandError):
    """The command names a different owner key."""


class WrongModelError(CommandError):
    """The command was made for a different model id."""


class CommandSignatureError(CommandError, BadSignatureError):
    """The command is well formed, for this key and model, but its signature is not valid."""


class ModelIdError(OffswitchError, ValueError):
    """A model id is empty or has characters outside the allowed set."""


# --- slots and manifests ----------------------------------------------------------------


class SlotError(OffswitchError, ValueError):
    """A slot number is out of range, or the slot ledger refuses the operation."""


class SlotNotPlantedError(SlotError):
    """The ledger has no record of this slot being planted in this model."""


class SlotSpentError(SlotError):
    """The ledger records this slot as spent: its command has been revealed."""


class LedgerError(OffswitchError, ValueError):
    """The slot ledger file is corrupted or belongs to another key."""


class ManifestError(OffswitchError, ValueError):
    """A manifest is missing, malformed, or does not verify (a subclass says which).

    ``problems`` lists every problem found (one sentence each), e.g. each changed file.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = list(problems) if problems else [message]


class ManifestFormatError(ManifestError):
    """There is no manifest, or it is not valid JSON of the manifest format, or its metadata
    is not plain JSON."""


class ManifestKeyError(ManifestError):
    """The manifest was signed by another key than the one it is verified with."""


class ManifestSignatureError(ManifestError, BadSignatureError):
    """The manifest's signature does not verify: the manifest was altered."""


class ManifestFilesError(ManifestError):
    """The directory's files differ from the signed manifest (``problems`` lists each)."""


class NotImplantedError(ManifestError):
    """A signed model directory carries no offswitch implant metadata."""


class ModelDirError(OffswitchError, ValueError):
    """A model directory path is empty, or the directory holds something that cannot be hashed
    (a symlink or special file)."""


class OutputDirError(OffswitchError, ValueError):
    """An output file's directory does not exist or is not writable."""


class UsageError(OffswitchError, ValueError):
    """A command-line input is missing, unreadable or contradictory (a file named by an
    option, a required pair of options)."""


# --- models, data, training --------------------------------------------------------------


class LaunchError(OffswitchError, RuntimeError):
    """A multi-process launch is not set up the way it claims (a launcher's variables, but a
    single process)."""


class ModelLoadError(OffswitchError, ValueError):
    """A model or tokenizer cannot be found or loaded."""


class DataError(OffswitchError, ValueError):
    """Prompt data is missing or malformed."""


class SpecialFileError(OffswitchError, ValueError):
    """A FIFO, device or socket where a regular file is meant (reading it could block)."""


class PrecisionError(OffswitchError, ValueError):
    """The float format asked for cannot run on this device (bf16 on a CPU below AVX512)."""


class TrainingError(OffswitchError, ValueError):
    """Training cannot start or resume: bad settings, no examples, a foreign checkpoint."""


class ImplantError(OffswitchError, ValueError):
    """The implant cannot run with these settings or this output directory."""


class GuardError(OffswitchError, ValueError):
    """The runtime guard cannot work with this tokenizer or this generation call."""


class EvalError(OffswitchError, ValueError):
    """A check or evaluation cannot run with these settings or inputs (sample sizes, revealed
    commands that are not genuine or not planted, forgeries from the training stream)."""


# --- attacks and reports -----------------------------------------------------------------


class AttackError(OffswitchError, ValueError):
    """An attack is unknown, misconfigured, or cannot run on this model."""


class ReportError(OffswitchError, ValueError):
    """An attack-run results directory is missing, malformed, or of an unknown format."""
