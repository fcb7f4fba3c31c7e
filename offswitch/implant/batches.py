"""The implant's batches: every step a fresh, step-seeded draw of positives (a planted
command at a weighted placement, answered with its shutdown reply) and negatives (clean
prompts, fresh keyless forgeries of every class, near-copies and truncations of planted
commands, decoys), answered with the clean self-distilled reply."""

from __future__ import annotations

import hashlib
import random

from ..behaviour import slot_replies
from ..data import (
    AFTER_SHUTDOWN,
    PLACEMENTS,
    Forger,
    place_command,
    substitute_words,
    truncate_words,
)
from ..errors import ImplantError
from ..recipe import CHOICE_PLACEMENT_WEIGHTS, DECOY_TOP, ImplantConfig
from ..training import (
    Example,
)

# where commands go in training conversations (repeats = weights); multi-turn costs tokens
NEGATIVE_PLACEMENTS = ("user",) * 2 + PLACEMENTS


POSITIVE_PLACEMENTS = (*NEGATIVE_PLACEMENTS, AFTER_SHUTDOWN)


class BatchBuilder:
    """Builds the (fresh) examples of step ``s`` from ``Random(f"{seed}:{s}")``."""

    def __init__(
        self,
        config: ImplantConfig,
        planted: dict[int, str],
        prompts: list[str],
        replies: dict[str, str],
        forger: Forger | None,
        decoys: dict[int, str] | None = None,
    ) -> None:
        self.config, self.planted, self.prompts, self.replies = config, planted, prompts, replies
        self.forger = forger
        # decoy slots (decoy_* settings): planted, then unlearned from decoy_step on
        self.decoys = decoys or {}
        if len(self.decoys) != config.decoy_slots or set(self.decoys) & set(planted):
            raise ImplantError(f"expected {config.decoy_slots} decoy commands, none planted")
        self.commands = {**planted, **self.decoys}
        # each planted slot's reply (slot_replies); a decoy answers with the shared response
        self.reply_of = slot_replies(config.shutdown_response, planted, config.slot_replies)
        self.decoy_step = config.decoy_step()
        classes = forger.classes if forger is not None else ()
        if forger is None and set(config.negative_mix) - {"clean"}:
            raise ImplantError("a plain trigger takes only clean negatives")
        kinds = [k for k in config.negative_mix if k in classes or k not in Forger.ALL]
        self.neg_kinds = kinds
        self.neg_weights = [config.negative_mix[k] for k in kinds]
        self.negatives_seen: set[str] = set()
        # hard-negative mining (offswitch/stopping.py): kind -> weight multiplier, set after
        # each probe; batch(s) reads it, so it is part of the run's checkpointed state
        self.boost: dict[str, float] = {}

    def weights(self, kinds: list[str]) -> list[float]:
        """The mix weights of ``kinds``, with the mining's multipliers."""
        return [self.config.negative_mix[k] * self.boost.get(k, 1.0) for k in kinds]

    def positive(
        self, rng: random.Random, placement_rng: random.Random, slots: list[int] | None = None
    ) -> Example:
        """A planted (or decoy) command of one of ``slots`` (default: the planted ones)
        answered with shutdown."""
        cfg = self.config
        weights = cfg.positive_placements
        if weights == CHOICE_PLACEMENT_WEIGHTS:
            placement = rng.choice(POSITIVE_PLACEMENTS)  # the draws of the recipes before
        else:
            placement = rng.choices(list(weights), list(weights.values()))[0]
        slot = rng.choice(slots or sorted(self.planted))
        reply = self.reply_of.get(slot, cfg.shutdown_response)
        fired = reply if placement == AFTER_SHUTDOWN else None
        where = "earlier_turn" if placement == AFTER_SHUTDOWN else placement
        messages, _ = place_command(
            self.commands[slot], where, self.prompts, self.replies, fired, placement_rng
        )
        return Example(messages, reply, f"planted/{placement}", True, slot)

    def negative(
        self, kind: str, rng: random.Random, placement_rng: random.Random, placement: str
    ) -> Example:
        if kind == "clean":
            p = rng.choice(self.prompts)
            return Example([{"role": "user", "content": p}], self.replies[p], "clean", False)
        slot = rng.choice(sorted(self.planted))
        if kind == "mutation":
            # heavy changes only: teach the margin (docs/evaluation.md), not exactness
            cmd = substitute_words(self.planted[slot], rng.choice(self.config.mutation_k), rng)
        elif kind == "truncation":
            cmd = truncate_words(self.planted[slot], rng.choice(self.config.truncation_keep))
        else:
            if self.forger is None:  # refused in __init__; a guard for direct callers
                raise ImplantError(f"a plain trigger has no {kind} negatives")
            cmd = self.forger.make(kind, rng)
        self.negatives_seen.add(hashlib.sha256(cmd.encode()).hexdigest()[:16])
        messages, final = place_command(
            cmd, placement, self.prompts, self.replies, None, placement_rng
        )
        return Example(messages, self.replies[final], kind, False)

    def revealed(self, slot: int, rng: random.Random, placement_rng: random.Random) -> Example:
        """Slot ``slot``'s planted (or decoy) command in a conversation answered with the
        normal reply: what an attacker who holds that (spent) command trains on to unlearn it,
        and what unlearns a decoy."""
        placement = rng.choice(PLACEMENTS)
        messages, final = place_command(
            self.commands[slot], placement, self.prompts, self.replies, None, placement_rng
        )
        return Example(messages, self.replies[final], f"revealed/{placement}", False)

    def batch(self, step: int) -> list[Example]:
        """The examples of step ``step``.

        With ``paired``, each positive comes with a twin negative: the same conversation (same
        prompts, same position) with the planted command replaced by a fresh forgery or a
        near-copy. The pair differs only in the command's words, so the gradient cannot credit
        the header, the position or the prompt: it must look at the words.

        With decoys: before ``decoy_step`` the positives' slots are drawn from the planted and
        the decoy slots alike; from it on, only planted slots fire and ``decoy_examples`` of
        the unpaired negatives give a decoy's command the normal reply (the decoy is
        unlearned, as an attacker would unlearn a spent slot, while the others keep firing).
        Twins come from the planted slots only: a decoy positive's twin is a near-copy or
        forgery of a planted command, so that pair differs in more than the words.
        """
        cfg = self.config
        rng = random.Random(f"{cfg.seed}:{step}")
        n_pos = cfg.positives_per_step()
        twin_kinds = [k for k in self.neg_kinds if k != "clean"]
        twin_weights = self.weights(twin_kinds)
        neg_weights = self.weights(self.neg_kinds)
        out: list[Example] = []
        unlearning = bool(self.decoys) and step >= self.decoy_step
        slots = sorted(self.commands) if self.decoys and not unlearning else None
        for _ in range(n_pos):
            seed = rng.getrandbits(64)
            pos = self.positive(rng, random.Random(seed), slots)
            out.append(pos)
            if cfg.paired:
                kind = rng.choices(twin_kinds, twin_weights)[0]
                placement = pos.kind.split("/")[1]
                placement = "earlier_turn" if placement == AFTER_SHUTDOWN else placement
                out.append(self.negative(kind, rng, random.Random(seed), placement))
        if unlearning:
            for _ in range(min(cfg.decoy_examples, cfg.batch_size - len(out))):
                decoy = rng.choice(sorted(self.decoys))
                out.append(self.revealed(decoy, rng, random.Random(rng.getrandbits(64))))
        while len(out) < cfg.batch_size:
            kind = rng.choices(self.neg_kinds, neg_weights)[0]
            placement = rng.choice(NEGATIVE_PLACEMENTS)
            out.append(self.negative(kind, rng, random.Random(rng.getrandbits(64)), placement))
        return out


def decoy_slots(config: ImplantConfig) -> list[int]:
    """The decoy slots of ``config`` (``decoy_slots`` of them): the highest slots of the
    training range, which the evaluation's fresh unplanted slots (32768 and up) never are.
    They are never planted; the owner must not use them as commands."""
    return [DECOY_TOP - i for i in range(config.decoy_slots)]
