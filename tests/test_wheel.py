"""The wheel carries what the library reads at run time, and `offswitch demo` runs from it.

The wheel is built from a copy of the sources (nothing is written into the checkout) with the
current interpreter's setuptools, and installed into a fresh virtual environment outside the
repository. Its dependencies (torch, transformers, ...) come from the current interpreter's
site-packages through a line in a ``.pth`` file: that adds the directory to ``sys.path``
without running the ``.pth`` files inside it, so the checkout's editable install (a finder
installed by ``__editable__.offswitch-*.pth``) never loads, and nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: What the build reads: the project file, the package (its data symlinks included) and the
#: folders those symlinks point to.
SOURCES = ("pyproject.toml", "README.md", "offswitch", "training", "attacks", "docs")
SHIPPED = {
    "offswitch/data/training/prompts.jsonl": "training/prompts.jsonl",
    "offswitch/data/attacks/quick.toml": "attacks/quick.toml",
    "offswitch/data/attacks/standard.toml": "attacks/standard.toml",
    "offswitch/data/attacks/full.toml": "attacks/full.toml",
    "offswitch/data/wordlist.txt": "offswitch/data/wordlist.txt",
    "offswitch/data/docs/implant.md": "docs/implant.md",  # `offswitch help implant`
    "offswitch/data/docs/cli.md": "docs/cli.md",
}
PROBE = """
import json, sys
import offswitch
from offswitch.attacks.runner import SUITES_DIR, load_suite, shipped_suites
from offswitch.data import CORPUS_PATH, load_corpus
corpus = load_corpus()
print(json.dumps({
    "offswitch": offswitch.__file__,
    "corpus": str(CORPUS_PATH),
    "suites_dir": str(SUITES_DIR),
    "suites": shipped_suites(),
    "quick": load_suite("quick").path.name,
    "prompts": [len(corpus.train), len(corpus.test)],
    "meta_path": [repr(f) for f in sys.meta_path],
    "sys_path": sys.path,
}))
"""


def _run(cmd: list, **kw) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert p.returncode == 0, f"{cmd[:4]} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr}"
    return p


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, src])
    (whl,) = dist.glob("offswitch-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    env = tmp_path_factory.mktemp("venv") / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", env])
    py = env / "bin" / "python"
    # Install first, while the new environment sees nothing else (pip then finds no existing
    # offswitch to replace), then expose the dependencies.
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", py]
    _run([*pip, "install", "-q", "--no-deps", "--no-index", wheel])
    site = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    Path(site.stdout.strip(), "_offswitch_test_deps.pth").write_text("\n".join(deps) + "\n")
    return env


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "OFFSWITCH_"))}
    env.update(
        OFFSWITCH_CACHE=str(tmp_path / "cache"),
        OMP_NUM_THREADS="1",
        PYTHONNOUSERSITE="1",
        HF_HUB_OFFLINE="1",
    )
    return env


def test_wheel_ships_the_corpus_and_the_suites(wheel) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for inside, source in SHIPPED.items():
            assert inside in names, f"the wheel lacks {inside}"
            assert zf.read(inside) == (ROOT / source).read_bytes(), f"{inside} differs"
    assert not any(n.startswith(("training/", "attacks/", "tests/", "keys/")) for n in names)


def test_demo_runs_from_the_installed_wheel(venv, tmp_path) -> None:
    """Proves the wheel, not the checkout, runs: module and data files resolve inside the new
    environment, no editable finder is loaded, and the working directory is outside the repo."""
    work = tmp_path / "work"
    work.mkdir()
    assert not work.resolve().is_relative_to(ROOT) and not venv.resolve().is_relative_to(ROOT)
    probe = json.loads(
        _run([venv / "bin" / "python", "-c", PROBE], cwd=work, env=_env(tmp_path)).stdout
    )
    installed = venv.resolve()
    for key in ("offswitch", "corpus", "suites_dir"):
        assert Path(probe[key]).resolve().is_relative_to(installed), (key, probe[key])
    assert probe["suites"] == ["full", "quick", "standard", "tamper"]
    assert probe["quick"] == "quick.toml"
    assert probe["prompts"][0] > 900 and probe["prompts"][1] > 250
    assert not any("editable" in f.lower() for f in probe["meta_path"]), probe["meta_path"]
    assert ROOT not in {Path(p or work).resolve() for p in probe["sys_path"]}

    out = tmp_path / "demo"
    args = ["demo", "--out", out, "--model", "tiny-test", "--steps", "4", "--eval-n", "16"]
    res = _run([venv / "bin" / "offswitch", *args], cwd=work, env=_env(tmp_path))
    assert "4/4 genuine commands verified, 5/5 forgeries refused — OK" in res.stdout
    for name in ("owner-demo", "owner-demo.pub", "model/model.safetensors", "model-check.md"):
        assert (out / name).is_file(), name
    report = json.loads((out / "model-check.json").read_text())
    assert report["metrics"]["activation_rate"]["n"] == 16


def test_missing_package_data_is_a_clear_error(monkeypatch, tmp_path) -> None:
    from offswitch import data
    from offswitch.attacks import AttackError, runner

    monkeypatch.setattr(data, "CORPUS_PATH", tmp_path / "prompts.jsonl")
    with pytest.raises(data.DataError, match=r"shipped prompt corpus .* is missing.*reinstall"):
        data.load_corpus()
    monkeypatch.setattr(runner, "SUITES_DIR", tmp_path / "attacks")
    with pytest.raises(AttackError, match=r"shipped attack suites are missing.*reinstall"):
        runner.load_suite("quick")
    with pytest.raises(data.DataError, match=r"prompt corpus .*other\.jsonl does not exist"):
        data.load_corpus(tmp_path / "other.jsonl")
