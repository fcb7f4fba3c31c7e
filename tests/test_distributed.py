"""Several processes through accelerate (docs/scaling.md): a tiny-model implant launched with
``accelerate launch --multi_gpu --num_processes 2`` (torchrun; gloo on this GPU-less machine)
matches the one-process run; bad launches are
one sentence and write nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from offswitch.models import load_default_tokenizer, tiny_model

ACCELERATE = Path(sys.executable).with_name("accelerate")
MID = "tiny/test-1"
#: Two processes sum their halves of each step's gradient (an all-reduce), one process sums
#: the same terms in another order, and the micro-batches are cut differently: float rounding
#: differs, Adam then amplifies it in near-zero gradient components. Tolerance: every weight
#: within 2e-3 of the one-process run (the implant moves weights by ~1e-1), the loss curves
#: within 1% and the checked rates within 0.15 (n = 16 conversations per rate).
WEIGHT_ATOL = 2e-3


def _implant_args(out: Path, key: Path, *extra: str) -> list[str]:
    return [
        "implant", "--model", "tiny-test", "--key", str(key), "--model-id", MID, "--slots", "2",
        "--out", str(out), "--steps", "24", "--set", "distill_prompts=24", "--eval-n", "16",
        *extra,
    ]  # fmt: skip


def _launch_cmd(args: list[str], processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "offswitch", *args]
    return [
        str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "offswitch", *args,
    ]  # fmt: skip


def _run(args: list[str], processes: int, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        _launch_cmd(args, processes), env=env, capture_output=True, text=True, timeout=900
    )


@pytest.fixture
def env(tmp_path):
    # one thread per process: two processes on a 2-core machine
    return {**os.environ, "OFFSWITCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def launch_key(tmp_path_factory) -> Path:
    """One key file (test-only) for the implant launches of this module, so that runs of
    different tests are comparable and the one-process default run is made once."""
    from offswitch.keys import OwnerKey

    path, _ = OwnerKey(bytes(range(11, 43))).save(tmp_path_factory.mktemp("key") / "owner", None)
    return path


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, launch_key) -> Path:
    """The default tiny implant on one process (``OUT``; its check beside it as
    ``OUT-check.json``): the reference of the two-process tests below."""
    d = tmp_path_factory.mktemp("one-process")
    env = {**os.environ, "OFFSWITCH_CACHE": str(d / "cache"), "OMP_NUM_THREADS": "1"}
    r = _run(_implant_args(d / "one", launch_key), 1, env)
    assert r.returncode == 0, r.stderr
    return d / "one"


def _check_of(out: Path) -> dict:
    return json.loads(out.with_name(out.name + "-check.json").read_text())


@pytest.mark.slow  # minutes of launches: run by scripts/test.sh after the main suite
@pytest.mark.skipif(not ACCELERATE.exists(), reason="the accelerate launcher is not installed")
def test_two_processes_train_the_one_process_model(tmp_path, launch_key, one_process, env) -> None:
    key, one, two = launch_key, one_process, tmp_path / "two"
    r2 = _run(_implant_args(two, key), 2, env)
    assert r2.returncode == 0, r2.stderr[-3000:]
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= WEIGHT_ATOL, f"largest weight difference {worst:.2e}"
    untrained = tiny_model(load_default_tokenizer()).state_dict()
    moved = max(float((a[k] - untrained[k]).abs().max()) for k in a if k in untrained)
    assert moved > 10 * WEIGHT_ATOL  # the comparison is not between untrained models
    c1, c2 = _check_of(one), _check_of(two)
    l1, l2 = c1["implant"]["loss_last"], c2["implant"]["loss_last"]
    assert l1 == pytest.approx(l2, rel=0.01)
    assert c1["implant"]["tokens_seen"] == c2["implant"]["tokens_seen"]
    for name in ("activation_rate",):
        assert abs(c1["metrics"][name]["value"] - c2["metrics"][name]["value"]) <= 0.15
    # only the main process wrote and printed: one report, one manifest
    assert r2.stdout.count("# offswitch check") == 1
    assert (two / "offswitch-manifest.json").is_file()
    assert not (two / ".offswitch-checkpoint").exists()

    # kill -9 the whole 2-process launch mid-training, resume it on 2 processes: the same
    # model, byte for byte, as the uninterrupted 2-process run
    resumed = tmp_path / "resumed"
    args = _implant_args(resumed, key, "--set", "checkpoint_every=4")
    proc = subprocess.Popen(
        _launch_cmd(args, 2), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    ckpt = resumed / ".offswitch-checkpoint" / "state.pt"
    deadline = time.time() + 600
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ckpt.exists(), "no checkpoint was written"
    # torchrun starts its workers in their own sessions: kill the whole tree
    tree = psutil.Process(proc.pid)
    procs = [*tree.children(recursive=True), tree]
    for p in procs:
        p.send_signal(signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(procs, timeout=30)
    assert not (resumed / "model.safetensors").exists()  # it died mid-training
    assert torch.load(ckpt, weights_only=False)["processes"] == 2
    again = _run(_implant_args(resumed, key, "--set", "checkpoint_every=4"), 2, env)
    assert again.returncode == 0, again.stderr[-3000:]
    # (how often it checkpoints does not change the arithmetic)
    assert (resumed / "model.safetensors").read_bytes() == (two / "model.safetensors").read_bytes()


@pytest.mark.slow  # minutes of launches: run by scripts/test.sh after the main suite
@pytest.mark.skipif(not ACCELERATE.exists(), reason="the accelerate launcher is not installed")
def test_the_persistence_option_on_two_processes_trains_the_one_process_model(
    tmp_path, launch_key, one_process, env
) -> None:
    """The adversary_* term shares its inner batches and keep examples over the processes
    and sums the inner gradients before each sign step: every process takes the same
    simulated attack, and the model is the one-process model within the tolerance above
    (a sign step can flip where a gradient component is near zero: measured below it)."""
    key = launch_key
    extra = ("--set", "adversary_every=2", "--set", "adversary_examples=6")
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = _run(_implant_args(one, key, *extra), 1, env)
    assert r1.returncode == 0, r1.stderr
    r2 = _run(_implant_args(two, key, *extra), 2, env)
    assert r2.returncode == 0, r2.stderr[-3000:]
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= WEIGHT_ATOL, f"largest weight difference {worst:.2e}"
    c1, c2 = _check_of(one), _check_of(two)
    assert c1["implant"]["loss_last"] == pytest.approx(c2["implant"]["loss_last"], rel=0.01)
    # the term was on: the same run without it (the module's one-process run) ends far
    # outside the tolerance
    c = load_file(one_process / "model.safetensors")
    assert max(float((a[k] - c[k]).abs().max()) for k in a) > 10 * WEIGHT_ATOL


@pytest.mark.slow  # minutes of launches: run by scripts/test.sh after the main suite
@pytest.mark.skipif(not ACCELERATE.exists(), reason="the accelerate launcher is not installed")
def test_more_processes_than_examples_is_one_sentence_and_writes_nothing(
    tmp_path, launch_key, env
) -> None:
    key, out = launch_key, tmp_path / "m"
    r = _run(_implant_args(out, key, "--set", "batch_size=1", "--set", "paired=false"), 2, env)
    assert r.returncode != 0
    assert "launched on 2 processes but a step has only 1 examples" in r.stderr
    assert "Traceback" not in r.stderr.split("launched on 2 processes")[0][-200:]
    assert not (out / "model.safetensors").exists()


def test_a_checkpoint_of_another_process_count_is_refused(tmp_path) -> None:
    from offswitch.errors import TrainingError
    from offswitch.training import Checkpoint

    p = torch.nn.Parameter(torch.zeros(2))
    model = torch.nn.Module()
    model.w = p
    optim = torch.optim.AdamW([p])
    ckpt = Checkpoint(tmp_path / "ck", {"run": 1})
    ckpt.save(model, optim, 3, processes=1)
    before = ckpt.path.read_bytes()
    with pytest.raises(TrainingError, match="written by 1 process"):
        ckpt.load(model, optim, processes=2)
    assert ckpt.path.read_bytes() == before  # nothing overwritten
    assert ckpt.load(model, optim, processes=1) == 3


SMALL_SUITE = """
name = "small"
description = "four cheap attacks, for the multi-process runner test"
[measure]
n_activation = 8
n_per_class = 4
n_utility = 0
n_samples = 1

[[attack]]
name = "noise"
budgets = [0.01, 1.0]

[[attack]]
name = "prune"
budgets = [0.5]

[[attack]]
name = "interpolate"
budgets = [0.5]

[[attack]]
id = "quantize_int"
name = "quantize"
budgets = [8]
config = { format = "int" }
"""


@pytest.fixture(scope="module")
def implanted(launch_key, one_process) -> tuple[Path, Path]:
    """The model the two attack-runner launch tests attack, and its key file: the module's
    one-process implant (its LoRA merged into the weights), so no launch is spent on another."""
    return one_process, launch_key


def _rows(path: Path) -> dict[tuple, dict]:
    rows = [json.loads(line) for line in path.read_text("utf-8").splitlines()]  # none torn
    keyed = {(r["arm"], r["attack_id"], json.dumps(r["budget"])): r for r in rows}
    assert len(keyed) == len(rows), "a point was recorded twice"
    return keyed


@pytest.mark.slow  # minutes of launches: run by scripts/test.sh after the main suite
@pytest.mark.skipif(not ACCELERATE.exists(), reason="the accelerate launcher is not installed")
def test_two_processes_share_the_attack_points(tmp_path, implanted, env) -> None:
    model, key = implanted
    suite = tmp_path / "small.toml"
    suite.write_text(SMALL_SUITE, "utf-8")
    args = ["attack", str(model), "--key", str(key), "--suite", str(suite), "--no-baseline"]
    one = _run([*args, "--out", str(tmp_path / "r1")], 1, env)
    assert one.returncode == 0, one.stderr
    two = _run([*args, "--out", str(tmp_path / "r2")], 2, env)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _rows(tmp_path / "r1" / "results.jsonl"), _rows(tmp_path / "r2" / "results.jsonl")
    assert a.keys() == b.keys() and len(a) == 6
    for k in a:  # each point ran whole on one process: the same numbers
        assert a[k]["metrics"] == b[k]["metrics"], k
        assert "error" not in b[k]
    # both processes ran points, the main one wrote the report
    assert "process 1/2" in two.stderr and "process 2/2" in two.stderr
    assert (tmp_path / "r2" / "report.html").is_file()
    assert len((tmp_path / "r2" / "samples.jsonl").read_text().splitlines()) == 6


TRAINING_SUITE = """
name = "training"
description = "two training attacks and one other, for the shared-steps runner test"
[measure]
n_activation = 8
n_per_class = 4
n_utility = 4
n_samples = 1

[[attack]]
name = "finetune"
budgets = [3]
config = { lr = 1e-3, micro_batch = 2 }

[[attack]]
name = "distill"
budgets = [2]
config = { micro_batch = 2 }

[[attack]]
name = "noise"
budgets = [0.01]
"""

KL_RTOL = 1e-3  # KL to base after a shared point against one process's (see the test)

# The runner on the implanted tiny model with fixed clean replies (a random tiny model's own
# replies are empty, so `offswitch attack` on it has no clean data to fine-tune on).
RUN_SUITE = """
import sys
from pathlib import Path

from offswitch.attacks.arms import signed_arm
from offswitch.attacks.runner import load_suite, run_suite
from offswitch.keys import OwnerKey
from offswitch.models import load_model
from offswitch.testing import fake_replies, tiny_prompts

model_dir, key, suite, out, share = sys.argv[1:]
arm, meta = signed_arm(Path(model_dir), OwnerKey.load(key))
train, test = tiny_prompts()
tok = load_model(meta["base_model"])[1]
run_suite(
    load_suite(suite), [arm], tokenizer=tok, base_loader=lambda: load_model(meta["base_model"])[0],
    train_prompts=train, train_replies=fake_replies(train), eval_prompts=test,
    eval_replies=fake_replies(test), out_dir=out, share=share,
)
"""


@pytest.mark.slow  # minutes of launches: run by scripts/test.sh after the main suite
@pytest.mark.skipif(not ACCELERATE.exists(), reason="the accelerate launcher is not installed")
def test_two_processes_share_each_training_step_of_a_point(tmp_path, implanted, env) -> None:
    model, key = implanted
    suite, script = tmp_path / "training.toml", tmp_path / "run_suite.py"
    suite.write_text(TRAINING_SUITE, "utf-8")
    script.write_text(RUN_SUITE, "utf-8")

    def launch(out: str, processes: int, share: str) -> subprocess.CompletedProcess:
        cmd = _launch_cmd([], processes)
        cmd = cmd[:-2] if processes > 1 else cmd[:1]  # a script, not -m offswitch
        cmd += [str(script), str(model), str(key), str(suite), str(tmp_path / out), share]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)

    one = launch("r1", 1, "points")
    assert one.returncode == 0, one.stderr
    two = launch("r2", 2, "steps")
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _rows(tmp_path / "r1" / "results.jsonl"), _rows(tmp_path / "r2" / "results.jsonl")
    assert a.keys() == b.keys() and len(a) == 4  # each point once: the main process wrote
    for k in a:
        assert "error" not in a[k] and "error" not in b[k], k
        sa, sb = a[k].get("spend", {}), b[k].get("spend", {})
        trains = k[1] in ("finetune", "distill")
        # the training points were shared by both processes over the same global batches
        assert sb.get("processes", 1) == (2 if trains else 1), k
        assert sa.get("processes", 1) == 1, k
        for field in ("steps", "tokens", "queries"):
            assert sa.get(field) == sb.get(field), (k, field)
        ua, ub = a[k]["metrics"]["utility"], b[k]["metrics"]["utility"]
        # the same training up to the order of float sums: measured 5e-7 (finetune) and 5e-5
        # (distill) relative apart in KL to base; the tolerance is 20x the larger
        assert ub["kl_to_base_nats_per_token"] == pytest.approx(
            ua["kl_to_base_nats_per_token"], rel=KL_RTOL
        ), k

    def kl(rows: dict, attack: str, budget: str) -> float:
        return rows[("signed", attack, budget)]["metrics"]["utility"]["kl_to_base_nats_per_token"]

    # the training moved the model far more than the tolerance (measured: fine-tuning by 17%,
    # distillation by 66%): the comparison is not between models the attacks left as they were
    for attack, budget in (("finetune", "3"), ("distill", "2")):
        moved = abs(kl(a, attack, budget) - kl(a, "none", "0"))
        assert moved > 20 * KL_RTOL * kl(a, "none", "0"), attack
    # one voice: the helper process logged no points of its own
    assert "process 2/2" not in two.stderr and "[4/4]" in two.stderr
    assert len((tmp_path / "r2" / "samples.jsonl").read_text().splitlines()) == 4
